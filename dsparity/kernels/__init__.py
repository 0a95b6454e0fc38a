"""DSA primitives: lightning-indexer scores, token-level top-k, sparse attention.

The public functions are a thin dispatch layer: the default backend ``auto`` routes each call
through `dispatch.py` (by device, dtype, length, autograd) to the torch reference
(`reference.py`), the CPU kernels (`cpu.py`: C through `native.py`, blocked torch without a
compiler), masked dense attention or the Triton kernels (`triton_kernels.py`);
``DSPARITY_KERNELS=reference|cpu|dense|triton`` or `set_default_backend` pins one, ``backend=``
picks per call, so callers never change. All backends share one contract:

- ``indexer_scores(q [B,S,H_I,d_I], k [B,T,d_I], w [B,S,H_I], *, scale=None, causal=True)``
  -> ``[B, S, T]`` float32, ``scale=None`` means ``(H_I * d_I) ** -0.5``, masked entries ``-inf``.
- ``select_topk(scores [B,S,T], k)`` -> ``[B, S, k]`` int32: causal-valid (finite) keys only,
  ``-1`` padding, ties broken towards the lower index.
- ``sparse_attention(q [B,S,Hq,D], k [B,T,Hkv,D], v [B,T,Hkv,Dv], indices [B,S,K], *, scale=None)``
  -> ``[B, S, Hq, Dv]``; GQA allowed, one index set per query token shared by all heads,
  ``-1`` ignored, ``scale=None`` means ``D ** -0.5``.

Causality is bottom-right aligned: with S queries and T keys, query i sits at position T - S + i.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dsparity.kernels import reference


@dataclass(frozen=True)
class Backend:
    indexer_scores: Callable[..., torch.Tensor]
    select_topk: Callable[..., torch.Tensor]
    sparse_attention: Callable[..., torch.Tensor]


_BACKENDS: dict[str, Backend] = {
    "reference": Backend(reference.indexer_scores, reference.select_topk,
                         reference.sparse_attention),
}
_default = "reference"


def _register_fast_backends() -> None:
    from dsparity.kernels import dispatch

    for mode in dispatch.MODES:
        if mode != "reference":
            _BACKENDS[mode] = dispatch.backend_for(mode)


def register_backend(name: str, backend: Backend) -> None:
    """Make a faster implementation available under `name` (same contract as the reference)."""
    _BACKENDS[name] = backend


def set_default_backend(name: str) -> None:
    global _default
    if name not in _BACKENDS:
        raise KeyError(f"unknown kernel backend {name!r}; known: {', '.join(_BACKENDS)}")
    _default = name


def available_backends() -> list[str]:
    return list(_BACKENDS)


def _pick(backend: str | None) -> Backend:
    return _BACKENDS[backend or _default]


def indexer_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Lightning-indexer scores I(t,s) = scale * sum_j w[t,j] ReLU(q[t,j].k[s]) -> [B,S,T] fp32."""
    return _pick(backend).indexer_scores(q, k, w, scale=scale, causal=causal)


def select_topk(scores: torch.Tensor, k: int, *, backend: str | None = None) -> torch.Tensor:
    """Per-row top-k of finite scores -> [B, S, k] int32, -1 padded, ties to the lower index."""
    return _pick(backend).select_topk(scores, k)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of each query over its own selected keys -> [B, S, Hq, Dv]."""
    return _pick(backend).sparse_attention(q, k, v, indices, scale=scale)


def indexer_topk(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    topk: int,
    *,
    scale: float | None = None,
    causal: bool = True,
    ordered: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """select_topk(indexer_scores(q, k, w), topk) fused -> [B, S, topk] int32.

    The fast backends never hold the [B, S, T] score matrix (memory O(block * T)). ordered=False
    returns the same set in an unspecified order (cheaper; attention does not depend on order).
    """
    from dsparity.kernels import dispatch

    name = backend or _default
    mode = name if name in dispatch.MODES else "reference"
    return dispatch.indexer_topk(q, k, w, topk, scale=scale, causal=causal, ordered=ordered,
                                 mode=None if mode == "auto" else mode)


_register_fast_backends()
_env_backend = os.environ.get("DSPARITY_KERNELS", "auto").strip().lower() or "auto"
set_default_backend(_env_backend if _env_backend in _BACKENDS else "auto")  # dispatch reports a bad one

__all__ = ["Backend", "available_backends", "indexer_scores", "indexer_topk", "register_backend",
           "select_topk", "set_default_backend", "sparse_attention"]
