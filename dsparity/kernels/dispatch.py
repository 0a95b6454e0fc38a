"""Pick an implementation of each DSA primitive per call: by device, dtype, length and autograd.

Modes (``DSPARITY_KERNELS`` in the environment, `configure(mode=...)`, or the ``backend=``
argument of the public functions):

- ``auto`` (default): the rules below.
- ``reference``: the torch reference everywhere.
- ``cpu``: the blocked torch kernels (`cpu.py`) everywhere, sparse attention always gathered.
- ``dense``: blocked indexer/top-k, sparse attention as masked dense SDPA (the index set becomes
  a [S, T] mask; same result, O(S*T) memory).
- ``triton``: the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

Rules of ``auto``:

1. Autograd needed (grad mode on and an input requires grad) -> reference: the fast paths write
   into reused buffers and have no backward. (Every mode falls back to the reference there.)
2. CUDA tensors -> Triton when it imports and the dtype is fp32/bf16/fp16, else the reference.
3. CPU tensors -> `cpu` kernels; sparse attention with T keys below the crossover of its kind
   (prefill: more than one query row; decode: one row) -> masked dense SDPA instead.

Masked dense costs O(S * T), gathered sparse O(S * k), so the crossover is a multiple of k (the
number of index slots), measured with ``python bench/attention.py --crossover`` (fp32, one
thread, 16 query heads on one KV head, D = 128, k = 2048) on the development CPU. With the C
kernels (`native.py`) gathered sparse attention wins at every length measured (decode from 512
keys, prefill from 1024: masked dense is 1.7-12x slower), so the crossover is 0; with the torch
fallback it was T = 8192 (prefill, 4k) and T = 3072 (decode, 1.5k). ``DSPARITY_CROSSOVER_PREFILL``
/ ``DSPARITY_CROSSOVER_DECODE`` (or `configure`) set absolute key counts instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MODES = ("auto", "reference", "cpu", "dense", "triton")

# Measured (bench/attention.py --crossover, see module docstring): below these multiples of k
# keys, masked dense attention is at least as fast as gathering the selected rows.
CROSSOVER_PER_K = {  # (kernels, phase) -> multiple of k
    ("native", "prefill"): 0.0, ("native", "decode"): 0.0,
    ("torch", "prefill"): 4.0, ("torch", "decode"): 1.5,  # 8192 / 3072 keys at k = 2048
}


@dataclass
class DispatchConfig:
    mode: str = "auto"
    crossover_prefill: int | None = None  # absolute key counts; None: the multiple of k above
    crossover_decode: int | None = None

    def crossover(self, s: int, k: int) -> float:
        """Keys below which masked dense attention beats gathering (S query rows, k slots)."""
        fixed = self.crossover_decode if s == 1 else self.crossover_prefill
        if fixed is not None:
            return fixed
        from dsparity.kernels import native

        kernels = "native" if native.available() else "torch"
        return CROSSOVER_PER_K[kernels, "decode" if s == 1 else "prefill"] * k


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def _from_env() -> DispatchConfig:
    mode = os.environ.get("DSPARITY_KERNELS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"DSPARITY_KERNELS={mode!r}: expected one of {', '.join(MODES)}")
    return DispatchConfig(mode=mode, crossover_prefill=_env_int("DSPARITY_CROSSOVER_PREFILL"),
                          crossover_decode=_env_int("DSPARITY_CROSSOVER_DECODE"))


config = _from_env()


def configure(mode: str | None = None, *, crossover_prefill: int | None = None,
              crossover_decode: int | None = None) -> DispatchConfig:
    """Change the process-wide dispatch settings; returns the new settings."""
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"kernel mode {mode!r}: expected one of {', '.join(MODES)}")
        config.mode = mode
    if crossover_prefill is not None:
        config.crossover_prefill = crossover_prefill
    if crossover_decode is not None:
        config.crossover_decode = crossover_decode
    return config


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def triton_usable(device: torch.device) -> bool:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def choose(op: str, *tensors: torch.Tensor, s: int = 0, t: int = 0, k: int = 2048,
           mode: str | None = None) -> str:
    """Implementation name for `op` ("scores", "topk", "attention", "indexer_topk").

    Returns one of "reference", "cpu", "dense" (masked dense attention), "triton".
    """
    mode = mode or config.mode
    if needs_grad(*tensors):
        return "reference"
    first = tensors[0]
    if mode == "dense":
        return "dense" if op == "attention" else ("cpu" if first.device.type == "cpu" else "reference")
    if mode == "triton" and op == "topk":
        return "cpu"  # no Triton top-k kernel over a given score matrix: torch's topk path
    if mode != "auto":
        return mode
    if first.device.type == "cuda":
        ok = triton_usable(first.device) and all(x.dtype in _FAST_DTYPES for x in tensors
                                                 if x.is_floating_point())
        if ok and op != "topk":
            return "triton"
        return "cpu" if op in ("topk", "indexer_topk") else "reference"
    if first.device.type != "cpu":
        return "reference"
    if op == "attention":
        return "dense" if t < config.crossover(s, k) else "cpu"
    return "cpu"


def _impl(name: str):
    from dsparity.kernels import cpu, reference

    if name == "reference":
        return reference
    if name == "triton":
        from dsparity.kernels import triton_kernels

        return triton_kernels
    return cpu


def indexer_scores(q, k, w, *, scale=None, causal=True, mode: str | None = None):
    name = choose("scores", q, k, w, s=q.shape[1], t=k.shape[1], mode=mode)
    return _impl(name).indexer_scores(q, k, w, scale=scale, causal=causal)


def select_topk(scores, k, *, mode: str | None = None):
    name = choose("topk", scores, s=scores.shape[1], t=scores.shape[2], mode=mode)
    return _impl(name).select_topk(scores, k)


def sparse_attention(q, k, v, indices, *, scale=None, mode: str | None = None):
    name = choose("attention", q, k, v, s=q.shape[1], t=k.shape[1], k=indices.shape[-1], mode=mode)
    if name == "dense":
        from dsparity.kernels import cpu

        return cpu.masked_dense_attention(q, k, v, indices, scale=scale)
    return _impl(name).sparse_attention(q, k, v, indices, scale=scale)


def indexer_topk(q, k, w, topk: int, *, scale=None, causal=True, ordered=True,
                 mode: str | None = None):
    """select_topk(indexer_scores(...)) without the [B, S, T] matrix where the backend allows."""
    name = choose("indexer_topk", q, k, w, s=q.shape[1], t=k.shape[1], mode=mode)
    if name == "reference":
        from dsparity.kernels import reference

        return reference.select_topk(reference.indexer_scores(q, k, w, scale=scale, causal=causal),
                                     topk)
    return _impl(name).indexer_topk(q, k, w, topk, scale=scale, causal=causal, ordered=ordered)


def backend_for(mode: str):
    """A `kernels.Backend` whose functions dispatch with `mode` fixed ("auto" reads `config`)."""
    from dsparity.kernels import Backend

    fixed = None if mode == "auto" else mode
    return Backend(
        lambda q, k, w, *, scale=None, causal=True: indexer_scores(q, k, w, scale=scale,
                                                                   causal=causal, mode=fixed),
        lambda scores, k: select_topk(scores, k, mode=fixed),
        lambda q, k, v, indices, *, scale=None: sparse_attention(q, k, v, indices, scale=scale,
                                                                 mode=fixed),
    )
