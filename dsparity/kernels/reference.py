"""Reference (pure torch) implementations of the three DSA primitives.

Plain math, float32 accumulation, no tricks: this is what faster kernels are tested against.
Spec: /work/shared/reference/dsa.md §3.5 (score), §3.6 (causal top-k, ties, -1 padding),
§4.2-4.3 (one index set per query token, shared by all heads).

Causality is bottom-right aligned everywhere: with S queries and T keys, query i sits at absolute
position T - S + i, so prefill (S = T), decode (S = 1) and chunked prefill share one rule.
"""

from __future__ import annotations

import torch

# Queries are processed in chunks of this many rows in `sparse_attention`, so the gathered
# [rows, k, Hkv, D] key/value copies stay at tens of MB even for 2K x 256 prefill.
_ATTN_CHUNK_ROWS = 256


def causal_valid(s: int, t: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[S, T] bool: True where key j is visible to query i (j <= T - S + i)."""
    qpos = torch.arange(t - s, t, device=device).unsqueeze(1)  # [S, 1] absolute query positions
    kpos = torch.arange(t, device=device).unsqueeze(0)  # [1, T]
    return kpos <= qpos


def indexer_scores(
    q: torch.Tensor,  # [B, S, H_I, d_I]
    k: torch.Tensor,  # [B, T, d_I]  one shared key per token
    w: torch.Tensor,  # [B, S, H_I]  head weights (may be negative)
    *,
    scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """I(t, s) = scale * sum_j w[t, j] * ReLU(q[t, j] . k[s])  ->  [B, S, T] float32.

    DeepSeek-V3.2-Exp eq. (1) with the (H_I d_I)^-1/2 factor of the reference code
    (dsa.md §3.5, [MOD Indexer.forward]); masked (future) entries are -inf.
    """
    b, s, h, d = q.shape
    t = k.shape[1]
    if scale is None:
        scale = (h * d) ** -0.5
    qf, kf, wf = q.float(), k.float(), w.float()
    # [B, S*H, d] @ [B, d, T] -> [B, S, H, T]: per-head dot products against the shared key.
    logits = torch.bmm(qf.reshape(b, s * h, d), kf.transpose(1, 2)).view(b, s, h, t)
    # Weighted head sum as a batched mat-vec: [B*S, 1, H] @ [B*S, H, T] -> [B, S, T].
    scores = torch.bmm(wf.reshape(b * s, 1, h), logits.relu_().view(b * s, h, t)).view(b, s, t)
    scores = scores * scale
    if causal:
        scores = scores.masked_fill(~causal_valid(s, t, q.device), float("-inf"))
    return scores


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k keys per row -> [B, S, k] int32, ordered by score (ties: lower index first).

    Entries that are -inf (masked) are never selected; rows with fewer than k finite scores
    are padded with -1. The tie-break is deterministic, which the reference demo needs across
    ranks and we need between prefill and decode (dsa.md §3.6, §8.2.3). `torch.topk` alone makes
    no promise about equal values, so it only finds the threshold; membership and order are then
    fixed explicitly for the rows where it matters (cheaper than a full stable sort of every row).
    """
    b, s, t = scores.shape
    width = min(k, t)
    values, idx = scores.topk(width, dim=-1)  # right set unless the threshold value is tied
    thr = values[..., -1:]  # [B, S, 1] k-th largest value
    tied = scores == thr  # rows with < width finite scores: thr = -inf, fillers tie at -inf
    n_tied = tied.sum(-1)
    n_tied_taken = (values == thr).sum(-1)
    ambiguous = n_tied > n_tied_taken  # topk had to choose among equal values: redo those rows
    if ambiguous.any():
        rows = ambiguous.nonzero(as_tuple=True)
        sub, sub_tied = scores[rows], tied[rows]  # [R, T]
        need = width - (sub > thr[rows]).sum(-1, keepdim=True)
        chosen = (sub > thr[rows]) | (sub_tied & (sub_tied.cumsum(-1) <= need))  # `width` each
        idx[rows] = chosen.nonzero()[:, -1].view(-1, width)  # lowest-index tied keys win
    idx = idx.sort(dim=-1).values  # ascending key index, so the stable sort below breaks ties
    values = scores.gather(-1, idx)
    values, order = torch.sort(values, dim=-1, descending=True, stable=True)  # ties keep index order
    idx = torch.where(values > float("-inf"), idx.gather(-1, order), -1).to(torch.int32)
    if width < k:
        idx = torch.cat([idx, idx.new_full((b, s, k - width), -1)], dim=-1)
    return idx


def sparse_attention(
    q: torch.Tensor,  # [B, S, Hq, D]
    k: torch.Tensor,  # [B, T, Hkv, D]
    v: torch.Tensor,  # [B, T, Hkv, Dv]
    indices: torch.Tensor,  # [B, S, K] int (-1 = unused slot); one set per token, all heads
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(scale * q . k[S_t]) @ v[S_t] per head  ->  [B, S, Hq, Dv] in q's dtype.

    GQA: query head h reads KV head h // (Hq / Hkv). A row whose slots are all -1 returns 0
    (FlashMLA's reference convention, dsa.md §7.1). Computed in float32 (float64 stays float64).
    """
    b, s, hq, d = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    hkv, dv = k.shape[2], v.shape[3]
    group = hq // hkv
    if scale is None:
        scale = d**-0.5
    out = q.new_empty(b, s, hq, dv)
    batch = torch.arange(b, device=q.device).view(b, 1, 1)
    for lo in range(0, s, _ATTN_CHUNK_ROWS):
        hi = min(s, lo + _ATTN_CHUNK_ROWS)
        idx = indices[:, lo:hi].long()  # [B, s', K]
        valid = idx >= 0
        safe = idx.clamp(min=0)
        ks = k[batch, safe].to(acc)  # [B, s', K, Hkv, D]
        vs = v[batch, safe].to(acc)  # [B, s', K, Hkv, Dv]
        qc = q[:, lo:hi].to(acc).view(b, hi - lo, hkv, group, d)  # [B, s', Hkv, G, D]
        logits = torch.einsum("bsngd,bsknd->bsngk", qc, ks) * scale  # [B, s', Hkv, G, K]
        logits = logits.masked_fill(~valid[:, :, None, None, :], float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all-invalid rows -> 0
        o = torch.einsum("bsngk,bsknd->bsngd", probs, vs)  # [B, s', Hkv, G, Dv]
        out[:, lo:hi] = o.reshape(b, hi - lo, hq, dv).to(q.dtype)
    return out
