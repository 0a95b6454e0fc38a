"""Sparsity controls at DSA's budget: other ways of choosing the k keys each query attends to.

A DSA parity verdict says more beside simpler selections of the same size: is the trained indexer
what keeps quality, or would any k tokens do? Each rule here turns into a per-token score matrix
``[B, S, T]`` (``-inf`` where a key may not be chosen) and then goes through the *same*
``kernels.select_topk`` as the lightning indexer, so every mode shares DSA's conventions: int32
``[B, S, k]`` indices, causal keys only, ``-1`` padding, ties to the lower index, deterministic,
and one index set per query token shared by all heads (dsa.md §3.6, §4.2).

Modes (``attention=`` in a ``local:`` model spec):

- ``dense``: no selection (every causal key).
- ``dsa``: top-k of the lightning indexer's scores (dsa.md §3).
- ``window``: attention sink plus sliding window (StreamingLLM, Xiao et al. 2023, arXiv
  2309.17453): the first ``sink`` visible keys of the row plus the most recent ``k - sink``.
- ``block``: NSA-style block selection (Yuan et al. 2025, arXiv 2502.11089, §3.3.2): keys are cut
  into fixed blocks of ``block_size`` positions; each earlier block gets a pooled key (the mean of
  its keys); per query head, softmax(scale * q . pooled key) over the query's candidate blocks;
  the block importance is the sum over heads (NSA sums over the heads of a GQA group; here one
  selection is shared by all heads, so over all of them). The query's own (local) block is taken
  in full, then whole blocks by importance until k tokens are used; the last block that does not
  fit whole is cut to its first keys so the budget is exactly k, like DSA's.
- ``oracle``: top-k of the true head-averaged attention probabilities (the DSA warm-up target,
  dsa.md §5.1). It needs a dense pass first, so it is an analysis-only upper bound for any shared
  per-token selection, never a speed-up.

Causality is bottom-right aligned like the kernels' (query i of S sits at T - S + i) when no mask
is given; a given ``valid`` mask ``[B, S, T]`` (True = may attend, the model's own mask with
causality, padding and sliding windows) is used as is, which is also right for static caches.
When k covers every visible key of a row, every mode selects all of them: exactly dense.
"""

from __future__ import annotations

import torch

from dsparity import kernels
from dsparity.kernels.reference import causal_valid

SELECTION_MODES = ("window", "block", "oracle")  # the rule-based controls defined here
DEFAULT_SINK = 4  # StreamingLLM's 4 initial tokens (as metrics.SINK_TOKENS)
DEFAULT_BLOCK_SIZE = 64  # NSA's selection block l' = 64


def _valid(valid: torch.Tensor | None, b: int, s: int, t: int, device) -> torch.Tensor:
    if valid is None:
        return causal_valid(s, t, device).expand(b, s, t)
    return valid


def window_scores(valid: torch.Tensor, *, sink: int = DEFAULT_SINK) -> torch.Tensor:
    """Scores for sink + recent: the first `sink` visible keys +inf, the rest by position.

    valid [B, S, T] bool -> [B, S, T] float32. Later keys score higher, so top-k takes the sinks
    and then the most recent keys; invisible keys are -inf.
    """
    t = valid.shape[-1]
    pos = torch.arange(t, device=valid.device, dtype=torch.float32).expand_as(valid)
    rank = valid.to(torch.int32).cumsum(-1)  # 1-based rank of each visible key in its row
    scores = torch.where(valid & (rank <= sink), float("inf"), pos)
    return scores.masked_fill(~valid, float("-inf"))


def window_indices(s: int, t: int, topk: int, *, sink: int = DEFAULT_SINK,
                   valid: torch.Tensor | None = None, batch: int = 1,
                   device: torch.device | str = "cpu", backend: str | None = None) -> torch.Tensor:
    """Attention sink + sliding window -> [B, S, topk] int32 (sinks first, then newest first)."""
    v = _valid(valid, batch, s, t, device)
    return kernels.select_topk(window_scores(v, sink=sink), topk, backend=backend)


def _kv_heads(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[Hq] long: the KV head each query head reads (GQA: h // (Hq / Hkv))."""
    hq, hkv = q.shape[2], k.shape[2]
    return torch.arange(hq, device=q.device) // (hq // hkv)


def block_scores(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None = None, *,
                 block_size: int = DEFAULT_BLOCK_SIZE, scale: float | None = None) -> torch.Tensor:
    """NSA-style block importance spread over each block's keys -> [B, S, T] float32.

    q [B,S,Hq,D], k [B,T,Hkv,D] (post-RoPE, as attention sees them). Keys of the query's local
    block (the block of its newest visible key) are +inf; keys of earlier candidate blocks get
    their block's importance; everything else -inf. A block is a candidate when it lies before
    the local block and holds a visible key of the row; its pooled key averages the keys that
    some query of the batch row may see (so padding never enters a pooled key).
    """
    b, s, hq, d = q.shape
    t = k.shape[1]
    if scale is None:
        scale = d**-0.5
    v = _valid(valid, b, s, t, q.device)
    nb = -(-t // block_size)
    pad = nb * block_size - t
    block_of = torch.arange(t, device=q.device) // block_size  # [T]

    seen = v.any(dim=1)  # [B, T] keys some query of the row may see
    kf = k.float() * seen[:, :, None, None]
    sums = torch.nn.functional.pad(kf, (0, 0, 0, 0, 0, pad)).view(b, nb, block_size, -1, d).sum(2)
    counts = torch.nn.functional.pad(seen.float(), (0, pad)).view(b, nb, block_size).sum(-1)
    pooled = sums / counts.clamp_min(1.0)[:, :, None, None]  # [B, nb, Hkv, D]

    pos = torch.arange(t, device=q.device).expand(b, s, t)
    newest = torch.where(v, pos, -1).amax(-1)  # [B, S] newest visible key, -1 = none
    local = torch.where(newest >= 0, newest // block_size, -1)  # [B, S]
    has_key = torch.zeros(b, s, nb, device=q.device).index_add_(2, block_of, v.float()) > 0
    blocks = torch.arange(nb, device=q.device)
    candidate = has_key & (blocks < local[..., None])  # [B, S, nb]

    pooled_per_head = pooled[:, :, _kv_heads(q, k)]  # [B, nb, Hq, D]
    logits = torch.einsum("bshd,bnhd->bshn", q.float(), pooled_per_head) * scale
    logits = logits.masked_fill(~candidate[:, :, None, :], float("-inf"))
    importance = torch.softmax(logits, dim=-1).nan_to_num(0.0).sum(2)  # [B, S, nb]

    per_key = importance.gather(-1, block_of.expand(b, s, t))
    in_candidate = candidate.gather(-1, block_of.expand(b, s, t)) & v
    in_local = (block_of == local[..., None]) & v
    scores = torch.where(in_candidate, per_key, float("-inf"))
    return scores.masked_fill(in_local, float("inf"))


def block_indices(q: torch.Tensor, k: torch.Tensor, topk: int, valid: torch.Tensor | None = None, *,
                  block_size: int = DEFAULT_BLOCK_SIZE, scale: float | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """NSA-style block selection -> [B, S, topk] int32 (local block, then blocks by importance)."""
    scores = block_scores(q, k, valid, block_size=block_size, scale=scale)
    return kernels.select_topk(scores, topk, backend=backend)


def head_mean_probs(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None = None, *,
                    scale: float | None = None) -> torch.Tensor:
    """Dense attention probabilities averaged over query heads -> [B, S, T] float32.

    One KV head's query group at a time, so at most G per-head [S, T] maps exist at once.
    """
    b, s, hq, d = q.shape
    t, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    if scale is None:
        scale = d**-0.5
    masked = ~_valid(valid, b, s, t, q.device)[:, None]  # [B, 1, S, T]
    qh = q.float().transpose(1, 2).reshape(b, hkv, group * s, d)
    p_sum = torch.zeros(b, s, t, dtype=torch.float32, device=q.device)
    for n in range(hkv):
        logits = torch.matmul(qh[:, n], k[:, :, n].float().transpose(1, 2)).mul_(scale)
        logits = logits.view(b, group, s, t).masked_fill_(masked, float("-inf"))
        p_sum += torch.softmax(logits, dim=-1).nan_to_num_(0.0).sum(1)
    return p_sum.div_(hq)


def oracle_scores(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None = None, *,
                  scale: float | None = None) -> torch.Tensor:
    """Head-averaged dense attention probabilities, -inf where a key is not visible."""
    b, s, _, _ = q.shape
    v = _valid(valid, b, s, k.shape[1], q.device)
    return head_mean_probs(q, k, v, scale=scale).masked_fill(~v, float("-inf"))


def oracle_indices(q: torch.Tensor, k: torch.Tensor, topk: int, valid: torch.Tensor | None = None, *,
                   scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Top-k of the true head-averaged attention -> [B, S, topk] int32 (analysis only)."""
    return kernels.select_topk(oracle_scores(q, k, valid, scale=scale), topk, backend=backend)


def mode_scores(mode: str, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None = None, *,
                scale: float | None = None, sink: int = DEFAULT_SINK,
                block_size: int = DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    """Selection scores [B, S, T] of one rule-based mode (`window`, `block`, `oracle`)."""
    if mode == "window":
        return window_scores(_valid(valid, q.shape[0], q.shape[1], k.shape[1], q.device), sink=sink)
    if mode == "block":
        return block_scores(q, k, valid, block_size=block_size, scale=scale)
    if mode == "oracle":
        return oracle_scores(q, k, valid, scale=scale)
    raise ValueError(f"unknown selection mode {mode!r}; rule-based modes: {', '.join(SELECTION_MODES)}")


def select(mode: str, q: torch.Tensor, k: torch.Tensor, topk: int,
           valid: torch.Tensor | None = None, *, scale: float | None = None,
           sink: int = DEFAULT_SINK, block_size: int = DEFAULT_BLOCK_SIZE,
           backend: str | None = None) -> torch.Tensor:
    """Indices [B, S, topk] int32 of one rule-based mode, through the shared top-k kernel."""
    scores = mode_scores(mode, q, k, valid, scale=scale, sink=sink, block_size=block_size)
    return kernels.select_topk(scores, topk, backend=backend)


def attention_recall(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[B, S] attention mass a selection keeps: sum of probs [B,S,T] over indices [B,S,k]."""
    idx = indices.long()
    kept = probs.gather(-1, idx.clamp_min(0)) * (idx >= 0)
    return kept.sum(-1)
