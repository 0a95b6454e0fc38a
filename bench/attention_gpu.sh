#!/usr/bin/env bash
# The attention benchmark's GPU mode, prepared for one H200 (run from the repository root):
#   bench/attention_gpu.sh            # Triton kernels vs SDPA flash, bf16, decode + prefill 8K..128K,
#                                     # then MLA's latent layout (bench/mla.py --gpu): 16K..128K
# Needs a CUDA build of torch and triton (scripts/setup with DSPARITY_TORCH_CONSTRAINTS= ).
# Budget: the dense flash prefill at 128K is ~0.1 s on an H200; the Triton indexer at 128K scores
# 8.6e9 causal pairs in 1 GiB chunks; everything with repeats is a few minutes. The hard timeouts
# (110 + 320 + 150 s) keep it inside 10 minutes even if a kernel is slower than planned; rows print
# as they come, so a cut-off run still reports what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("device:", torch.cuda.get_device_name(0))
PY
# Correctness first (seconds): the Triton kernels against the reference on the GPU, fp32 and bf16.
# (includes the latent-layout kernel, the device-side top-k and a converted DeepseekV3 end to end)
timeout 110 "$PY" -m pytest -q -m "gpu or not gpu" tests/test_kernels_triton.py
timeout 320 "$PY" bench/attention.py --gpu --dtype bf16 --reps 3 --json
# MLA's latent layout (576-wide rows, V = first 512, 16 heads; indexer 8 x 128): fused indexer +
# device top-k + head-blocked sparse kernel vs SDPA (MHA mode from the latent, or MQA mode)
timeout 150 "$PY" bench/mla.py --gpu --reps 3 --prefill 16384,65536 --decode 16384,65536,131072 --json
