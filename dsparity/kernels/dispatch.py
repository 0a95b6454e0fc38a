"""Pick an implementation of each DSA primitive per call: by device, dtype, length and autograd.

Modes (``DSPARITY_KERNELS`` in the environment, `configure(mode=...)`, or the ``backend=``
argument of the public functions):

- ``auto`` (default): the rules below.
- ``reference``: the torch reference everywhere.
- ``cpu``: the CPU kernels (`cpu.py`: the C kernels of `native.py`, or blocked torch where they
  cannot be built) everywhere, sparse attention always over the selected rows.
- ``dense``: CPU indexer/top-k, sparse attention as masked dense SDPA (the index set becomes
  a [S, T] mask; same result, O(S*T) memory).
- ``triton``: the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

Rules of ``auto``:

1. Autograd needed (grad mode on and an input requires grad) -> reference: the fast paths write
   into reused buffers and have no backward. (Every mode falls back to the reference there.)
2. CUDA tensors -> Triton when it imports and the dtype is fp32/bf16/fp16, else the reference.
3. CPU tensors -> `cpu` kernels; sparse attention -> masked dense SDPA instead where the work
   model below says it is cheaper for this call (prefill: more than one query row; decode: one).

Masked dense costs O(S * T * Hq), attention over the selected rows O(S * k * Hkv * lanes): the
choice follows a small work model with ratios measured by ``python bench/attention.py
--crossover`` and the full bench (see WORK_RATIO below). With the C kernels (`native.py`) the
selected rows win for DSA's MQA layout at every length (masked dense is 1.7-12x slower); for MHA
layouts, which read every KV head's rows per query, masked dense wins in prefill.
``DSPARITY_CROSSOVER_PREFILL`` / ``DSPARITY_CROSSOVER_DECODE`` (or `configure`) set absolute key
counts instead (masked below them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from dsparity.errors import DsparityError

MODES = ("auto", "reference", "cpu", "dense", "triton")

# Masked dense SDPA vs attention over the selected rows, by work per query row:
#   masked:   T keys x Hq heads, all computed (the mask does not skip work);
#   gathered: valid slots x Hkv x LANES * ceil(G / LANES) lanes (the C kernel serves up to 16
#             query heads of a KV head per read of a row; fewer heads leave lanes idle).
# Masked wins when RATIO * masked < gathered. RATIO = (cost per masked unit) / (cost per gathered
# unit), from `python bench/attention.py --crossover [--dtype bf16]` and the full run's masked
# column on the development CPU (one thread, MQA 16/1, D = 128, k = 2048). fp32, C kernels:
# 0.55-0.90 in prefill (2K-16K), 1.7-4.3 in decode. bf16/fp16 (SDPA runs on the bf16 matrix
# units, the C kernel still computes in fp32): prefill crossover at ~6K keys -> 0.28, decode
# 1.3-1.65. Torch fallback (fp32): measured crossovers of 8192 (prefill) and 3072 (decode) keys
# -> 0.22 and 0.67. Ratios sit inside the measured ranges: there either path is within 1.2x of
# the better one.
LANES = 16
WORK_RATIO = {("native", "prefill"): 0.7, ("native", "decode"): 1.7,
              ("native-half", "prefill"): 0.28, ("native-half", "decode"): 1.3,
              ("torch", "prefill"): 0.22, ("torch", "decode"): 0.67}


def valid_slots(s: int, t: int, k: int) -> float:
    """Mean over S bottom-right causal rows of min(k, keys the row sees) (seen: t-s+1 .. t)."""
    first = t - s + 1
    if t <= k:
        total = (first + t) * s / 2
    elif first >= k:
        total = k * s
    else:
        total = (first + k - 1) * (k - first) / 2 + k * (t - k + 1)
    return total / max(s, 1)


@dataclass
class DispatchConfig:
    mode: str = "auto"
    crossover_prefill: int | None = None  # absolute key counts; None: the work model above
    crossover_decode: int | None = None

    def prefer_masked(self, s: int, t: int, k: int, hq: int, hkv: int, half: bool = False) -> bool:
        """Masked dense SDPA rather than the selected rows for this call's shapes (half: bf16 or
        fp16 inputs)?"""
        fixed = self.crossover_decode if s == 1 else self.crossover_prefill
        if fixed is not None:
            return t < fixed
        from dsparity.kernels import native

        kernels = "native" if native.available() else "torch"
        ratio = WORK_RATIO[kernels + ("-half" if half and kernels == "native" else ""),
                           "decode" if s == 1 else "prefill"]
        group = hq // max(hkv, 1)
        # The torch fallback batches a group's heads in one matmul: no idle lanes there.
        lanes = LANES * -(-group // LANES) if kernels == "native" else group
        return ratio * t * hq < valid_slots(s, t, k) * hkv * lanes


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if value and not value.isdigit():
        raise DsparityError("environment", name, f"{value!r} is not a key count",
                            f"set a whole number of keys, or unset {name}")
    return int(value) if value else None


def _from_env() -> DispatchConfig:
    mode = os.environ.get("DSPARITY_KERNELS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise DsparityError("environment", "DSPARITY_KERNELS", f"{mode!r} is not a kernel mode",
                            f"use one of {', '.join(MODES)}, or unset it")
    return DispatchConfig(mode=mode, crossover_prefill=_env_int("DSPARITY_CROSSOVER_PREFILL"),
                          crossover_decode=_env_int("DSPARITY_CROSSOVER_DECODE"))


try:
    config = _from_env()
    _env_error: DsparityError | None = None
except DsparityError as exc:  # raised at first use, inside a command that prints it as one line
    config, _env_error = DispatchConfig(), exc


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


def check_env() -> None:
    """Raise the DsparityError of a bad DSPARITY_KERNELS / DSPARITY_CROSSOVER_* value, if any."""
    if _env_error is not None:
        raise _env_error


def choose(op: str, *tensors: torch.Tensor, s: int = 0, t: int = 0, k: int = 2048,
           mode: str | None = None) -> str:
    """Implementation name for `op` ("scores", "topk", "attention", "indexer_topk").

    Returns one of "reference", "cpu", "dense" (masked dense attention), "triton".
    """
    check_env()
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
        hq = first.shape[2] if first.dim() == 4 else 1
        hkv = tensors[1].shape[2] if len(tensors) > 1 and tensors[1].dim() == 4 else hq
        half = first.dtype in (torch.bfloat16, torch.float16)
        return "dense" if config.prefer_masked(s, t, k, hq, hkv, half) else "cpu"
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
