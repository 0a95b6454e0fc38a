#!/usr/bin/env bash
# GPU smoke test, prepared for a machine with CUDA (run from the repository root):
#   DSPARITY_TORCH_CONSTRAINTS= scripts/setup && bench/gpu_smoke.sh
# The local backend on CUDA in bf16, dense and DSA, through the whole compare path, then the
# attention benchmark's GPU mode when the kernels issue has landed it.
set -euo pipefail
cd "$(dirname "$0")/.."
export DSPARITY_DB=${DSPARITY_DB:-sqlite:///results/gpu-smoke.db}
.venv/bin/python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("devices:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PY
.venv/bin/dsparity compare --limit 5 \
  --candidate 'local:smollm2-135m-instruct?attention=dsa&topk=256&device=cuda&dtype=bfloat16' \
  --baseline 'local:smollm2-135m-instruct?device=cuda&dtype=bfloat16'
# The attention kernels on the GPU (Triton vs SDPA flash), MLA's latent layout included:
# bench/attention_gpu.sh
