"""CPU implementations of the DSA primitives (no autograd; same contract as `reference.py`).

Two layers. The C kernels of `native.py` (built on first use) do what torch ops cannot do
without extra memory traffic: the indexer's ReLU-weighted head sum, the exact top-k (radix select)
and sparse attention reading each selected K/V row in place. Where they are unavailable (no C
compiler, ``DSPARITY_NATIVE=0``, float64) the blocked torch code below runs instead.

What makes the torch code faster than `reference.py`:

- Indexer scores are computed per (query block x key block) tile that stays in cache: one
  matmul per tile, ReLU and the head-weighted sum in place, future tiles never computed.
- Top-k takes the set from `torch.topk` (unsorted) and accepts it as is when exactly k scores
  reach the row's k-th largest value; only rows with a tie at that threshold (or masked rows)
  go through the reference's explicit lower-index-first rule. In `indexer_topk(ordered=False)`
  causal rows that see at most k keys select them all without scoring.
- `indexer_topk` fuses both per query block: memory O(block_q * L), never the L x L matrix.
- Sparse attention gathers the selected rows once per query token for all heads that share them
  (`index_select` into a reused buffer, K and V fused into one contiguous row per token) and runs
  the heavy part as batched matmuls.

All results equal the reference's: indices exactly (given the same scores), outputs within fp32
rounding. bf16/fp16 inputs run their matmuls in that dtype (fp32 accumulation) and the softmax in
fp32.
"""

from __future__ import annotations

import torch

BLOCK_Q = 64  # query rows per indexer tile / top-k chunk
BLOCK_K = 4096  # keys per indexer tile: [BLOCK_Q * H_I, BLOCK_K] fp32 logits = 4 MiB
ATTN_BYTES = 8 << 20  # gathered K/V per chunk of query rows: 4 rows at k = 2048, D = 128, fp32


def _native(*tensors: torch.Tensor):
    """The C kernels when built and enabled, else None (then the torch code runs). They compute
    in fp32: float64 inputs keep the torch code, whose results stay float64-exact."""
    if any(t.dtype == torch.float64 for t in tensors):
        return None
    return _native_on(tensors[0].device) if tensors else _native_on(torch.device("cpu"))


def _native_on(device: torch.device):
    """The C kernels for fp32 work on `device`: they read host memory, so tensors on a GPU keep
    the torch code, which then runs there (the Triton backend's top-k: `triton_kernels`)."""
    from dsparity.kernels import native

    return native if device.type == "cpu" and native.available() else None


def _scale(h: int, d: int, scale: float | None) -> float:
    return (h * d) ** -0.5 if scale is None else scale


class _Workspace:
    """Buffers reused across tiles: fresh multi-MB tensors cost page faults on every call."""

    def __init__(self, device) -> None:
        self.device = device
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int) -> torch.Tensor:
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=torch.float32, device=self.device)
            self.bufs[name] = buf
        return buf[:numel]


def _scores_block(qf, kf, wf, scale, pos0: int, causal: bool, n_keys: int,
                  ws: _Workspace | None = None, block_k: int = BLOCK_K) -> torch.Tensor:
    """Scores of R consecutive queries (first at absolute position pos0) against keys [0, n_keys).

    qf [R, H, d] fp32, kf [T, d] fp32, wf [R, H] fp32 contiguous -> [R, n_keys] fp32, -inf where
    masked (a view of the workspace: copy it before the next call).
    Per key tile: one matmul [R*H, d] x [d, tile], ReLU in place, head-weighted sum as a batched
    [1, H] x [H, tile] product. Tiles wholly in the future are never computed.
    """
    ws = ws or _Workspace(qf.device)
    r, h, d = qf.shape
    out = ws.get("scores", r * n_keys).view(r, n_keys)
    q2 = qf.reshape(r * h, d)
    nat = _native_on(qf.device)
    for lo in range(0, n_keys, block_k):
        hi = min(n_keys, lo + block_k)
        logits = ws.get("logits", r * h * (hi - lo)).view(r * h, hi - lo)
        torch.matmul(q2, kf[lo:hi].t(), out=logits)
        if nat is not None:  # ReLU, head sum, scale and causal mask in one pass
            nat.index_reduce(logits, wf, scale, out, lo, pos0, causal)
            continue
        logits.relu_()
        tile = ws.get("tile", r * (hi - lo)).view(r, 1, hi - lo)
        torch.bmm(wf.unsqueeze(1), logits.view(r, h, hi - lo), out=tile)
        out[:, lo:hi] = tile.view(r, hi - lo)
    if nat is not None:
        return out
    # The reference scales after the head sum; doing the same keeps integer inputs bit-exact.
    out.mul_(scale)
    if causal and pos0 + 1 < n_keys:  # query pos0 + i sees keys <= pos0 + i
        tail = out[:, pos0 + 1:]
        kpos = torch.arange(pos0 + 1, n_keys, device=qf.device)
        qpos = torch.arange(pos0, pos0 + r, device=qf.device).unsqueeze(1)
        tail.masked_fill_(kpos > qpos, float("-inf"))
    return out


def indexer_scores(q, k, w, *, scale: float | None = None, causal: bool = True) -> torch.Tensor:
    """Same contract as `reference.indexer_scores`, computed in cache-sized tiles."""
    b, s, h, d = q.shape
    t = k.shape[1]
    sc = _scale(h, d, scale)
    out = torch.empty(b, s, t, dtype=torch.float32, device=q.device)
    ws = _Workspace(q.device)
    for bi in range(b):
        qf, kf, wf = q[bi].float(), k[bi].float().contiguous(), w[bi].float().contiguous()
        for lo in range(0, s, BLOCK_Q):
            hi = min(s, lo + BLOCK_Q)
            pos0 = t - s + lo
            n_keys = min(t, pos0 + (hi - lo)) if causal else t
            n_keys = max(n_keys, 0)
            if n_keys:
                out[bi, lo:hi, :n_keys] = _scores_block(qf[lo:hi], kf, wf[lo:hi], sc, pos0, causal,
                                                        n_keys, ws)
            out[bi, lo:hi, n_keys:] = float("-inf")
    return out


def _exact_rows(vals: torch.Tensor, k: int, ordered: bool) -> torch.Tensor:
    """The reference's selection on [R, N] with N >= k -> column numbers [R, k] (int64).

    ordered: score order (ties: lower column first); else ascending column order. Columns whose
    value is -inf come back as -1.
    """
    r, n = vals.shape
    thr = vals.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)  # k-th largest
    above = vals > thr
    tied = vals == thr
    need = k - above.sum(-1, keepdim=True, dtype=torch.int32)
    chosen = above | (tied & (tied.cumsum(-1, dtype=torch.int32) <= need))  # exactly k per row
    cols = chosen.nonzero()[:, -1].view(r, k)  # ascending
    chosen_vals = vals.gather(-1, cols)
    if ordered:
        chosen_vals, order = torch.sort(chosen_vals, dim=-1, descending=True, stable=True)
        cols = cols.gather(-1, order)
    return torch.where(chosen_vals > float("-inf"), cols, -1)


def topk_rows(scores: torch.Tensor, k: int, *, ordered: bool = True) -> torch.Tensor:
    """Top-k of each row of [R, N] fp32 -> [R, k] int64 (reference semantics, -1 padded).

    `torch.topk` finds the set; it makes no promise on equal values, so a row is accepted as is
    only when exactly k of its scores reach its k-th largest (no tie at the threshold) and that
    value is finite. The other rows (ties, masked rows) go through the reference's explicit
    lower-index-first rule. ordered=False leaves the set in an unspecified order (attention does
    not care) and skips the per-row sort.
    """
    nat = _native(scores)
    if nat is not None:
        return nat.topk_rows(scores, k, ordered=ordered).long()
    r, n = scores.shape
    if n <= k:
        slots = _exact_rows(scores, n, ordered) if n else scores.new_empty(r, 0, dtype=torch.long)
        if n < k:
            slots = torch.cat([slots, slots.new_full((r, k - n), -1)], dim=-1)
        return slots
    vals, idx = scores.topk(k, dim=-1, sorted=False)
    thr = vals.amin(-1, keepdim=True)
    n_ge = (scores >= thr).sum(-1, dtype=torch.int32)  # int32: the int64 bool sum is 10x slower
    bad = (n_ge != k) | ~torch.isfinite(thr[:, 0])
    if ordered:
        idx, _ = idx.sort(-1)  # ascending index, then a stable sort by score: ties to lower index
        vals, order = torch.sort(scores.gather(-1, idx), dim=-1, descending=True, stable=True)
        idx = idx.gather(-1, order)
    if bool(bad.any()):
        rows = bad.nonzero()[:, 0]
        idx[rows] = _exact_rows(scores[rows], k, ordered)
    return idx


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Same contract as `reference.select_topk` (score order, ties to the lower index)."""
    b, s, t = scores.shape
    flat = scores.reshape(b * s, t)
    out = torch.empty(b * s, k, dtype=torch.int32, device=scores.device)
    rows = max(BLOCK_Q, (1 << 22) // max(t, 1))  # ~16 MiB of scores per chunk
    nat = _native(scores)
    for lo in range(0, b * s, rows):
        hi = min(b * s, lo + rows)
        chunk = flat[lo:hi]
        if nat is not None:
            nat.topk_rows(chunk, k, out=out[lo:hi])
        else:  # bf16/fp16 upcast exactly; float64 stays float64
            out[lo:hi] = topk_rows(chunk if chunk.dtype == torch.float64 else chunk.float(), k)
    return out.view(b, s, k)


def indexer_topk(q, k, w, topk: int, *, scale: float | None = None, causal: bool = True,
                 ordered: bool = True, block_q: int = BLOCK_Q) -> torch.Tensor:
    """select_topk(indexer_scores(q, k, w)) fused per query block -> [B, S, topk] int32.

    Memory O(block_q * T): the [B, S, T] score matrix never exists; key tiles wholly in the
    future are never scored. With `ordered` False the set comes in an unspecified order (what
    sparse attention needs) and causal rows that see at most `topk` keys select all of them
    without scoring.
    """
    b, s, h, d = q.shape
    t = k.shape[1]
    sc = _scale(h, d, scale)
    out = torch.full((b, s, topk), -1, dtype=torch.int32, device=q.device)
    ws = _Workspace(q.device)
    nat = _native_on(q.device)
    for bi in range(b):
        qf, kf, wf = q[bi].float(), k[bi].float().contiguous(), w[bi].float().contiguous()
        lo = 0
        if causal and not ordered:
            # Query i sees T - S + i + 1 keys: while that is <= topk, everything is selected.
            n_short = max(0, min(s, topk - (t - s)))
            if n_short:
                seen = torch.arange(t - s + 1, t - s + n_short + 1, device=q.device).unsqueeze(1)
                ar = torch.arange(topk, device=q.device).unsqueeze(0)
                out[bi, :n_short] = torch.where(ar < seen, ar, -1).to(torch.int32)
            lo = n_short
        while lo < s:
            hi = min(s, lo + block_q)
            pos0 = t - s + lo
            n_keys = max(0, min(t, pos0 + (hi - lo))) if causal else t
            if n_keys:
                blk = _scores_block(qf[lo:hi], kf, wf[lo:hi], sc, pos0, causal, n_keys, ws)
                if nat is not None:
                    nat.topk_rows(blk, topk, ordered=ordered, out=out[bi, lo:hi])
                else:
                    out[bi, lo:hi] = topk_rows(blk, topk, ordered=ordered).to(torch.int32)
            lo = hi
    return out


def sparse_attention(q, k, v, indices, *, scale: float | None = None,
                     rows: int | None = None) -> torch.Tensor:
    """Same contract as `reference.sparse_attention`: the C kernel, else gather once per token and
    batched matmuls.

    K and V rows are gathered together (one contiguous [Hkv*(D+Dv)] row per selected token, all
    heads of the token's group served by it) into a buffer reused across chunks: fresh multi-MB
    buffers cost page faults that, on this CPU, take longer than the copy itself.
    """
    nat = _native(q, k, v)
    if nat is not None:
        return nat.sparse_attention(q, k, v, indices, scale=scale)
    b, s, hq, d = q.shape
    t, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    group = hq // hkv
    sc = d**-0.5 if scale is None else scale
    low = q.dtype in (torch.bfloat16, torch.float16)
    mm_dtype = q.dtype if low else torch.promote_types(q.dtype, torch.float32)
    out = q.new_empty(b, s, hq, dv)
    kw = indices.shape[-1]
    width_c = hkv * (d + dv)
    if rows is None:  # small k: more rows per chunk, fewer Python-level steps
        rows = max(1, min(64, ATTN_BYTES // max(1, kw * width_c * q.element_size())))
    n_rows = min(rows, s)
    # Few gathered rows (decode): gather K and V separately; many (prefill): pay one [T, *] copy
    # to fuse K and V into one row per token, so each selected token is one contiguous read.
    fuse = s * kw >= t
    gbuf = torch.empty(n_rows * kw if fuse else 0, width_c, dtype=mm_dtype, device=q.device)
    for bi in range(b):
        kb = k[bi].to(mm_dtype).reshape(t, hkv * d)
        vb = v[bi].to(mm_dtype).reshape(t, hkv * dv)
        kv = torch.cat([kb, vb], dim=1) if fuse else None  # [T, Hkv*(D+Dv)]
        qb = q[bi].to(mm_dtype)
        for lo in range(0, s, rows):
            hi = min(s, lo + rows)
            n = hi - lo
            idx = indices[bi, lo:hi].long()
            valid = idx >= 0
            used = valid.any(0).nonzero()
            if used.numel() == 0:
                out[bi, lo:hi] = 0
                continue
            w = int(used[-1]) + 1  # trailing all-(-1) columns cost nothing
            idx, valid = idx[:, :w], valid[:, :w]
            g = gbuf[: n * w]
            flat = idx.clamp(0, t - 1).reshape(-1)
            if fuse:
                torch.index_select(kv, 0, flat, out=g)
                g = g.view(n, w, width_c)
                kk, vv = g[:, :, : hkv * d], g[:, :, hkv * d:]
            else:
                kk = kb.index_select(0, flat).view(n, w, hkv * d)
                vv = vb.index_select(0, flat).view(n, w, hkv * dv)
            for kh in range(hkv):
                ks = kk[:, :, kh * d:(kh + 1) * d]  # [n, W, D] strided view, no copy
                vs = vv[:, :, kh * dv:(kh + 1) * dv]
                qg = qb[lo:hi, kh * group:(kh + 1) * group]  # [n, G, D]
                logits = torch.bmm(ks, qg.transpose(1, 2))  # [n, W, G]: keys as rows is faster
                logits = logits.float().mul_(sc)
                logits.masked_fill_(~valid[:, :, None], float("-inf"))
                probs = torch.softmax(logits, dim=1).nan_to_num_(0.0).to(mm_dtype)
                o = torch.bmm(probs.transpose(1, 2), vs)  # [n, G, Dv]
                out[bi, lo:hi, kh * group:(kh + 1) * group] = o.to(q.dtype)
    return out


def masked_dense_attention(q, k, v, indices, *, scale: float | None = None) -> torch.Tensor:
    """Sparse attention computed densely: the index set becomes a [B, S, T] mask for SDPA.

    Same result as `sparse_attention`; faster for short sequences (the V3.2-Exp service does the
    same for short prefill). Memory O(S * T).
    """
    b, s, hq, d = q.shape
    t, hkv = k.shape[1], k.shape[2]
    sc = d**-0.5 if scale is None else scale
    idx = indices.long()
    idx = torch.where(idx >= 0, idx, t)  # -1 -> a spare column that is cut off
    mask = torch.zeros(b, s, t + 1, dtype=torch.bool, device=q.device)
    mask.scatter_(2, idx, True)
    mask = mask[..., :t]
    acc = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.promote_types(
        q.dtype, torch.float32)
    o = torch.nn.functional.scaled_dot_product_attention(
        q.to(acc).transpose(1, 2), k.to(acc).transpose(1, 2), v.to(acc).transpose(1, 2),
        attn_mask=mask[:, None], scale=sc, enable_gqa=hkv != hq)
    o = o.transpose(1, 2).nan_to_num(0.0)
    empty = ~mask.any(-1)  # rows with no valid slot give 0 (the reference convention)
    if bool(empty.any()):
        o = o.masked_fill(empty[..., None, None], 0.0)
    return o.to(q.dtype)

