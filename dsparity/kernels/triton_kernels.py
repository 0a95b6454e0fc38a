"""Triton kernels for the DSA primitives (GPU; CPU only under ``TRITON_INTERPRET=1``).

- `indexer_scores`: one program per (query block, key block) tile: H_I dot products with
  `tl.dot`, ReLU, head-weighted sum, scale, causal mask, in fp32 accumulation. Tiles wholly in
  the future are never launched (their output is -inf).
- `indexer_topk`: the score kernel on a chunk of query rows at a time ([chunk, T] fp32 buffer,
  never [S, T]) followed by the exact top-k selection of `cpu.topk_rows` (torch.topk plus the
  lower-index tie rule) on the same device: on a GPU the top-k runs there, never on the host.
- `sparse_attention`: one program per (query token, KV head): the token's selected K/V rows are
  loaded BLOCK_K at a time straight from the cache (the gather is the load), the query group's
  logits come from one `tl.dot`, online softmax, fp32 accumulators. Rows with no valid slot
  give 0.
- `sparse_attention` on MLA's latent layout (one KV head, rows of r + d_R = 576 values, V = the
  first r = 512 of them, up to 128 query heads; dsa.md §4.2, FlashMLA's sparse shapes §7.1):
  one program per (query token, block of BLOCK_H heads); the logits are summed over BLOCK_D
  slices of the row, so neither the row nor all heads must fit one tile, and every gathered row
  serves BLOCK_H heads at once.
- `select_topk` over a given score matrix is `cpu.select_topk` (torch ops, device-agnostic).

fp32 inputs use IEEE fp32 dots (no TF32) so results match the reference within fp32 rounding;
bf16/fp16 inputs use tensor-core dots with fp32 accumulation. Under the interpreter, bf16
arithmetic is broken (stack.md): everything is loaded as fp32 there.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from dsparity.kernels import cpu

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _next_pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, triton.next_power_of_2(int(n)))


@triton.jit
def _scores_kernel(q_ptr, k_ptr, w_ptr, o_ptr, S, T, N_KEYS, POS0, scale,
                   sqb, sqs, sqh, sqd, skb, skt, skd, swb, sws, swh, sob, sos, sot,
                   H: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, F32: tl.constexpr):
    pid_s = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = tl.program_id(2)
    rs = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    rt = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rd = tl.arange(0, BLOCK_D)
    kblk = tl.load(k_ptr + b * skb + rt[:, None] * skt + rd[None, :] * skd,
                   mask=(rt[:, None] < N_KEYS) & (rd[None, :] < D), other=0.0)
    if F32:
        kblk = kblk.to(tl.float32)
    acc = tl.zeros((BLOCK_S, BLOCK_T), dtype=tl.float32)
    for h in tl.static_range(H):
        qh = tl.load(q_ptr + b * sqb + rs[:, None] * sqs + h * sqh + rd[None, :] * sqd,
                     mask=(rs[:, None] < S) & (rd[None, :] < D), other=0.0)
        if F32:
            qh = qh.to(tl.float32)
            logits = tl.dot(qh, tl.trans(kblk), input_precision="ieee")
        else:
            logits = tl.dot(qh, tl.trans(kblk))
        wh = tl.load(w_ptr + b * swb + rs * sws + h * swh, mask=rs < S, other=0.0).to(tl.float32)
        acc += wh[:, None] * tl.maximum(logits, 0.0)
    acc = acc * scale
    if CAUSAL:
        qpos = POS0 + rs
        acc = tl.where(rt[None, :] <= qpos[:, None], acc, float("-inf"))
    tl.store(o_ptr + b * sob + rs[:, None] * sos + rt[None, :] * sot, acc,
             mask=(rs[:, None] < S) & (rt[None, :] < N_KEYS))


def _launch_scores(q, k, w, out, scale, pos0: int, causal: bool, n_keys: int,
                   block_s: int | None = None, block_t: int | None = None) -> None:
    b, s, h, d = q.shape
    f32 = INTERPRET or q.dtype == torch.float32
    block_s = block_s or (64 if INTERPRET else 64)
    block_t = block_t or (128 if INTERPRET else 64)
    grid = (triton.cdiv(s, block_s), triton.cdiv(n_keys, block_t), b)
    _scores_kernel[grid](
        q, k, w, out, s, k.shape[1], n_keys, pos0, scale,
        *q.stride(), *k.stride(), *w.stride(), *out.stride(),
        H=h, D=d, BLOCK_S=block_s, BLOCK_T=block_t, BLOCK_D=_next_pow2(d), CAUSAL=causal, F32=f32)


def indexer_scores(q, k, w, *, scale: float | None = None, causal: bool = True) -> torch.Tensor:
    """Same contract as `reference.indexer_scores`."""
    b, s, h, d = q.shape
    t = k.shape[1]
    sc = (h * d) ** -0.5 if scale is None else scale
    out = torch.full((b, s, t), float("-inf"), dtype=torch.float32, device=q.device)
    n_keys = t if not causal else max(0, t)
    if s and n_keys:
        _launch_scores(q, k, w, out, sc, t - s, causal, n_keys)
    return out


def indexer_topk(q, k, w, topk: int, *, scale: float | None = None, causal: bool = True,
                 ordered: bool = True, chunk_bytes: int = 1 << 30) -> torch.Tensor:
    """select_topk(indexer_scores(...)) by chunks of query rows: memory O(chunk * T)."""
    b, s, h, d = q.shape
    t = k.shape[1]
    sc = (h * d) ** -0.5 if scale is None else scale
    out = torch.empty(b, s, topk, dtype=torch.int32, device=q.device)
    rows = max(1, min(s, chunk_bytes // (4 * max(t, 1))))
    buf = torch.empty(b, rows, t, dtype=torch.float32, device=q.device)
    for lo in range(0, s, rows):
        hi = min(s, lo + rows)
        pos0 = t - s + lo
        n_keys = min(t, pos0 + (hi - lo)) if causal else t
        view = buf[:, : hi - lo, :n_keys]
        if n_keys:
            _launch_scores(q[:, lo:hi], k, w[:, lo:hi], view, sc, pos0, causal, n_keys)
        for bi in range(b):
            if n_keys:
                sel = cpu.topk_rows(view[bi], topk, ordered=ordered)
            else:
                sel = torch.full((hi - lo, topk), -1, dtype=torch.long, device=q.device)
            out[bi, lo:hi] = sel.to(torch.int32)
    return out


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    return cpu.select_topk(scores, k)


@triton.jit
def _sparse_attn_kernel(q_ptr, k_ptr, v_ptr, i_ptr, o_ptr, T, KSEL, scale,
                        sqb, sqs, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd,
                        sib, sis, sik, sob, sos, soh, sod,
                        G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                        BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_DV: tl.constexpr, F32: tl.constexpr):
    s = tl.program_id(0)
    kh = tl.program_id(1)
    b = tl.program_id(2)
    rg = tl.arange(0, BLOCK_G)
    rd = tl.arange(0, BLOCK_D)
    rv = tl.arange(0, BLOCK_DV)
    heads = kh * G + rg
    q = tl.load(q_ptr + b * sqb + s * sqs + heads[:, None] * sqh + rd[None, :] * sqd,
                mask=(rg[:, None] < G) & (rd[None, :] < D), other=0.0)
    if F32:
        q = q.to(tl.float32)
    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_DV), dtype=tl.float32)
    for k0 in range(0, KSEL, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        idx = tl.load(i_ptr + b * sib + s * sis + rk * sik, mask=rk < KSEL, other=-1)
        ok = (idx >= 0) & (idx < T)
        safe = tl.where(ok, idx, 0).to(tl.int64)
        kblk = tl.load(k_ptr + b * skb + safe[:, None] * skt + kh * skh + rd[None, :] * skd,
                       mask=ok[:, None] & (rd[None, :] < D), other=0.0)
        vblk = tl.load(v_ptr + b * svb + safe[:, None] * svt + kh * svh + rv[None, :] * svd,
                       mask=ok[:, None] & (rv[None, :] < DV), other=0.0)
        if F32:
            kblk = kblk.to(tl.float32)
            vblk = vblk.to(tl.float32)
            logits = tl.dot(q, tl.trans(kblk), input_precision="ieee") * scale
        else:
            logits = tl.dot(q, tl.trans(kblk)) * scale
        logits = tl.where(ok[None, :], logits, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(logits - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if F32:
            acc = acc * alpha[:, None] + tl.dot(p, vblk, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vblk.dtype), vblk)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + b * sob + s * sos + heads[:, None] * soh + rv[None, :] * sod,
             out.to(o_ptr.dtype.element_ty), mask=(rg[:, None] < G) & (rv[None, :] < DV))


@triton.jit
def _sparse_mla_kernel(q_ptr, k_ptr, v_ptr, i_ptr, o_ptr, m_ptr, l_ptr, T, KSEL, SPLIT_LEN, scale,
                       sqb, sqs, sqh, sqd, skb, skt, skd, svb, svt, svd,
                       sib, sis, sik, sob, sos, soh, sod,
                       H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, NSPLIT: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_DV: tl.constexpr, F32: tl.constexpr):
    s = tl.program_id(0)
    hb = tl.program_id(1)
    b = tl.program_id(2) // NSPLIT
    part = tl.program_id(2) % NSPLIT  # split-K: this program's share of the selected keys
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    rd = tl.arange(0, BLOCK_D)
    rv = tl.arange(0, BLOCK_DV)
    m_i = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_DV), dtype=tl.float32)
    k_lo = part * SPLIT_LEN
    k_hi = tl.minimum(KSEL, k_lo + SPLIT_LEN)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        idx = tl.load(i_ptr + b * sib + s * sis + rk * sik, mask=rk < k_hi, other=-1)
        ok = (idx >= 0) & (idx < T)
        safe = tl.where(ok, idx, 0).to(tl.int64)
        logits = tl.zeros((BLOCK_H, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):  # the latent row in slices: q-bar . [c ; k^R]
            cols = d0 + rd
            qd = tl.load(q_ptr + b * sqb + s * sqs + heads[:, None] * sqh + cols[None, :] * sqd,
                         mask=(heads[:, None] < H) & (cols[None, :] < D), other=0.0)
            kd = tl.load(k_ptr + b * skb + safe[:, None] * skt + cols[None, :] * skd,
                         mask=ok[:, None] & (cols[None, :] < D), other=0.0)
            if F32:
                logits += tl.dot(qd.to(tl.float32), tl.trans(kd.to(tl.float32)),
                                 input_precision="ieee")
            else:
                logits += tl.dot(qd, tl.trans(kd))
        logits = tl.where(ok[None, :], logits * scale, float("-inf"))
        vblk = tl.load(v_ptr + b * svb + safe[:, None] * svt + rv[None, :] * svd,
                       mask=ok[:, None] & (rv[None, :] < DV), other=0.0)
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(logits - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if F32:
            acc = acc * alpha[:, None] + tl.dot(p, vblk.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vblk.dtype), vblk)
        m_i = m_new
    hmask = heads < H
    if NSPLIT == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + b * sob + s * sos + heads[:, None] * soh + rv[None, :] * sod,
                 out.to(o_ptr.dtype.element_ty), mask=hmask[:, None] & (rv[None, :] < DV))
    else:  # unnormalised partials [B, S, NSPLIT, H, (DV)], merged by `_merge_splits`
        row = ((b * tl.num_programs(0) + s) * NSPLIT + part) * H + heads
        tl.store(m_ptr + row, m_i, mask=hmask)
        tl.store(l_ptr + row, l_i, mask=hmask)
        tl.store(o_ptr + row[:, None] * DV + rv[None, :], acc, mask=hmask[:, None] & (rv[None, :] < DV))


def _merge_splits(acc: torch.Tensor, m: torch.Tensor, lsum: torch.Tensor) -> torch.Tensor:
    """Combine split-K partials: acc [B,S,P,H,Dv], m/l [B,S,P,H] -> [B,S,H,Dv] (flash-decoding)."""
    top = m.amax(2, keepdim=True)
    w = torch.exp(m - torch.where(torch.isinf(top), 0.0, top))  # splits with no key: m = -inf -> 0
    den = (w * lsum).sum(2)
    return (w.unsqueeze(-1) * acc).sum(2) / torch.where(den > 0, den, 1.0).unsqueeze(-1)


def latent_layout(hkv: int, hq: int, d: int) -> bool:
    """MLA's MQA shapes (one KV head with many heads or wide rows): the head-blocked kernel."""
    return hkv == 1 and (hq > 16 or d > 128)


def sparse_mla_attention(q, k, v, indices, *, scale: float | None = None, block_h: int | None = None,
                         block_k: int | None = None, block_d: int | None = None,
                         splits: int | None = None) -> torch.Tensor:
    """`sparse_attention` for one KV head: q [B,S,H,D], k [B,T,1,D], v [B,T,1,Dv] (v may be a
    view of k's first Dv columns, MLA's value), indices [B,S,K] -> [B,S,H,Dv].

    With few programs (decode: S = 1, one head block per 16 heads) the selected keys are split
    over `splits` programs per (token, head block) whose partial softmax sums are merged after
    (flash-decoding), so a 2048-key decode step uses more than a handful of the GPU's SMs."""
    b, s, hq, d = q.shape
    t, dv = k.shape[1], v.shape[3]
    sc = d**-0.5 if scale is None else scale
    f32 = INTERPRET or q.dtype == torch.float32
    out = torch.empty(b, s, hq, dv, dtype=q.dtype, device=q.device)
    ksel = indices.shape[-1]
    if s == 0:
        return out
    if ksel == 0:
        return out.zero_()
    block_h = block_h or 16
    block_k = block_k or (16 if f32 and not INTERPRET else 32)
    block_d = block_d or 64
    programs = s * triton.cdiv(hq, block_h) * b
    if splits is None:
        splits = 1 if programs >= 128 else max(1, min(32, triton.cdiv(ksel, 4 * block_k)))
    split_len = block_k * triton.cdiv(triton.cdiv(ksel, splits), block_k)
    splits = triton.cdiv(ksel, split_len)
    k3, v3 = k[:, :, 0], v[:, :, 0]
    if splits > 1:
        acc = torch.empty(b, s, splits, hq, dv, dtype=torch.float32, device=q.device)
        m = torch.empty(b, s, splits, hq, dtype=torch.float32, device=q.device)
        l_sum = torch.empty_like(m)
        target, strides = acc, (0, 0, 0, 0)  # partials are addressed by row, not by strides
    else:
        m = l_sum = out  # unused
        target, strides = out, out.stride()
    grid = (s, triton.cdiv(hq, block_h), b * splits)
    _sparse_mla_kernel[grid](
        q, k3, v3, indices, target, m, l_sum, t, ksel, split_len, sc,
        *q.stride(), *k3.stride(), *v3.stride(), *indices.stride(), *strides,
        H=hq, D=d, DV=dv, NSPLIT=splits, BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_D=block_d,
        BLOCK_DV=_next_pow2(dv), F32=f32)
    if splits > 1:
        out.copy_(_merge_splits(acc, m, l_sum))
    return out


def sparse_attention(q, k, v, indices, *, scale: float | None = None,
                     block_k: int | None = None) -> torch.Tensor:
    """Same contract as `reference.sparse_attention`."""
    b, s, hq, d = q.shape
    t, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    if latent_layout(hkv, hq, d):
        return sparse_mla_attention(q, k, v, indices, scale=scale)
    group = hq // hkv
    sc = d**-0.5 if scale is None else scale
    f32 = INTERPRET or q.dtype == torch.float32
    out = torch.empty(b, s, hq, dv, dtype=q.dtype, device=q.device)
    ksel = indices.shape[-1]
    if s == 0:
        return out
    if ksel == 0:
        return out.zero_()
    block_k = block_k or (64 if INTERPRET else (32 if f32 else 64))
    grid = (s, hkv, b)
    _sparse_attn_kernel[grid](
        q, k, v, indices, out, t, ksel, sc,
        *q.stride(), *k.stride(), *v.stride(), *indices.stride(), *out.stride(),
        G=group, D=d, DV=dv, BLOCK_G=_next_pow2(group), BLOCK_K=block_k, BLOCK_D=_next_pow2(d),
        BLOCK_DV=_next_pow2(dv), F32=f32)
    return out
