"""The DSA primitives against float64 brute force written as plain loops (no shared code)."""

from __future__ import annotations

import math

import pytest
import torch

from dsparity.kernels import indexer_scores, select_topk, sparse_attention


def brute_scores(q, k, w, scale, causal=True):
    """float64 loops: I[b,i,j] = scale * sum_h w[b,i,h] * max(0, q[b,i,h] . k[b,j])."""
    b_, s_, h_, _ = q.shape
    t_ = k.shape[1]
    q, k, w = q.double(), k.double(), w.double()
    out = torch.empty(b_, s_, t_, dtype=torch.float64)
    for b in range(b_):
        for i in range(s_):
            for j in range(t_):
                if causal and j > t_ - s_ + i:
                    out[b, i, j] = -math.inf
                    continue
                acc = 0.0
                for h in range(h_):
                    acc += float(w[b, i, h]) * max(0.0, float(q[b, i, h] @ k[b, j]))
                out[b, i, j] = scale * acc
    return out


def brute_topk(scores, k):
    """Sort (score desc, index asc) with Python's sort; -1 for missing or -inf."""
    b_, s_, t_ = scores.shape
    out = torch.full((b_, s_, k), -1, dtype=torch.int32)
    for b in range(b_):
        for i in range(s_):
            row = [(-float(scores[b, i, j]), j) for j in range(t_) if scores[b, i, j] > -math.inf]
            row.sort()
            for slot, (_, j) in enumerate(row[:k]):
                out[b, i, slot] = j
    return out


def brute_attention(q, k, v, idx, scale):
    b_, s_, hq, _ = q.shape
    hkv, dv = k.shape[2], v.shape[3]
    out = torch.zeros(b_, s_, hq, dv, dtype=torch.float64)
    for b in range(b_):
        for i in range(s_):
            sel = [int(j) for j in idx[b, i] if j >= 0]
            for h in range(hq):
                g = h // (hq // hkv)
                if not sel:
                    continue
                logits = torch.tensor([scale * float(q[b, i, h].double() @ k[b, j, g].double())
                                       for j in sel], dtype=torch.float64)
                p = torch.softmax(logits, 0)
                for pj, j in zip(p, sel, strict=True):
                    out[b, i, h] += pj * v[b, j, g].double()
    return out


@pytest.mark.parametrize("s,t", [(7, 7), (3, 9), (1, 6)])
def test_indexer_scores_match_float64(s, t):
    g = torch.Generator().manual_seed(s * 100 + t)
    q = torch.randn(2, s, 3, 8, generator=g)
    k = torch.randn(2, t, 8, generator=g)
    w = torch.randn(2, s, 3, generator=g)  # negative weights included
    got = indexer_scores(q, k, w)
    assert got.dtype == torch.float32 and got.shape == (2, s, t)
    ref = brute_scores(q, k, w, (3 * 8) ** -0.5)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), finite)
    assert torch.isneginf(got[~finite]).all()
    torch.testing.assert_close(got[finite].double(), ref[finite], atol=1e-5, rtol=1e-5)
    assert (ref[finite] < 0).any(), "negative head weights must produce negative scores"


def test_indexer_scores_all_zero_relu_rows_and_explicit_scale():
    q = torch.randn(1, 4, 2, 6)
    k = torch.randn(1, 4, 6)
    q[0, 2] = 0.0  # a row whose every ReLU is 0: the score is exactly 0 for all keys
    w = torch.randn(1, 4, 2)
    got = indexer_scores(q, k, w, scale=0.5, causal=False)
    ref = brute_scores(q, k, w, 0.5, causal=False)
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-6)
    assert torch.all(got[0, 2] == 0)


def test_select_topk_ties_padding_and_order():
    scores = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0, -math.inf],  # all tied: lowest indices win
                            [1.0, 3.0, 3.0, -math.inf, -math.inf, -math.inf],  # 3 valid < k=4
                            [-math.inf] * 6,  # nothing valid
                            [-2.0, 5.0, -2.0, 5.0, -1.0, -2.0]]])
    got = select_topk(scores, 4)
    assert got.dtype == torch.int32
    assert got.tolist() == [[[0, 1, 2, 3], [1, 2, 0, -1], [-1, -1, -1, -1], [1, 3, 4, 0]]]
    assert torch.equal(got, brute_topk(scores, 4))
    # k larger than T pads the tail
    assert select_topk(scores, 8)[0, 0].tolist() == [0, 1, 2, 3, 4, -1, -1, -1]


@pytest.mark.parametrize("s,t,k", [(9, 9, 4), (4, 12, 5), (1, 10, 3), (6, 6, 10)])
def test_select_topk_random_with_ties(s, t, k):
    g = torch.Generator().manual_seed(t * k)
    q = torch.randn(2, s, 2, 4, generator=g)
    kk = torch.randn(2, t, 4, generator=g)
    w = torch.randn(2, s, 2, generator=g)
    scores = indexer_scores(q, kk, w)
    scores = torch.where(scores.abs() < 0.3, torch.zeros_like(scores), scores)  # force many ties
    assert torch.equal(select_topk(scores, k), brute_topk(scores, k))


@pytest.mark.parametrize("hq,hkv,s,t,dv", [(4, 2, 5, 5, 6), (6, 3, 2, 9, 4), (2, 2, 1, 7, 8)])
def test_sparse_attention_matches_float64(hq, hkv, s, t, dv):
    g = torch.Generator().manual_seed(hq * 10 + t)
    q = torch.randn(2, s, hq, 8, generator=g)
    k = torch.randn(2, t, hkv, 8, generator=g)
    v = torch.randn(2, t, hkv, dv, generator=g)
    scores = indexer_scores(torch.randn(2, s, 2, 4, generator=g), torch.randn(2, t, 4, generator=g),
                            torch.randn(2, s, 2, generator=g))
    idx = select_topk(scores, 3)  # causal, with -1 padding in early rows when s == t
    idx[0, 0] = -1  # a row with nothing selected -> zeros
    got = sparse_attention(q, k, v, idx, scale=0.3)
    ref = brute_attention(q, k, v, idx, 0.3)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.all(got[0, 0] == 0)


def test_sparse_attention_with_all_keys_is_dense_causal():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 6, 4, 8, generator=g), torch.randn(1, 6, 2, 8, generator=g),
               torch.randn(1, 6, 2, 8, generator=g))
    scores = torch.zeros(1, 6, 6).masked_fill(torch.ones(6, 6).triu(1).bool(), -math.inf)
    got = sparse_attention(q, k, v, select_topk(scores, 6))
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2),
        v.repeat_interleave(2, 2).transpose(1, 2), is_causal=True).transpose(1, 2)
    torch.testing.assert_close(got, dense, atol=1e-6, rtol=1e-5)


def test_public_functions_are_dispatchable():
    from dsparity import kernels

    assert "reference" in kernels.available_backends()
    with pytest.raises(KeyError):
        kernels.set_default_backend("nope")
