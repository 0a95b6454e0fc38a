"""Selection rules of the sparsity controls against brute-force references, row by row."""

from __future__ import annotations

import math

import pytest
import torch

from dsparity import kernels
from dsparity.kernels.reference import causal_valid
from dsparity.model import selection as modes


def _rows(valid: torch.Tensor):
    b, s, _ = valid.shape
    for bi in range(b):
        for i in range(s):
            yield bi, i, [j for j in range(valid.shape[-1]) if valid[bi, i, j]]


def _padded(order: list[int], k: int) -> list[int]:
    return (order + [-1] * k)[:k]


def brute_window(valid: torch.Tensor, k: int, sink: int) -> torch.Tensor:
    out = torch.full((*valid.shape[:2], k), -1, dtype=torch.int32)
    for bi, i, keys in _rows(valid):
        sinks = keys[:sink]
        recent = [j for j in reversed(keys) if j not in sinks][: max(k - len(sinks), 0)]
        out[bi, i] = torch.tensor(_padded(sinks[:k] + recent, k))
    return out


def brute_block(q, k, valid, topk: int, block_size: int, scale: float) -> torch.Tensor:
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    t = k.shape[1]
    nb = math.ceil(t / block_size)
    out = torch.full((b, s, topk), -1, dtype=torch.int32)
    seen = valid.any(dim=1)
    for bi, i, keys in _rows(valid):
        if not keys:
            continue
        local = keys[-1] // block_size
        pooled = []
        for blk in range(nb):
            members = [j for j in range(blk * block_size, min(t, (blk + 1) * block_size)) if seen[bi, j]]
            pooled.append(torch.stack([k[bi, j].double() for j in members]).mean(0) if members else None)
        cands = [blk for blk in range(local) if any(j // block_size == blk for j in keys)]
        importance = {blk: 0.0 for blk in cands}
        for h in range(hq):
            kv = h // (hq // hkv)
            logits = [float(q[bi, i, h].double() @ pooled[blk][kv]) * scale for blk in cands]
            m = max(logits) if logits else 0.0
            z = sum(math.exp(x - m) for x in logits)
            for blk, x in zip(cands, logits, strict=True):
                importance[blk] += math.exp(x - m) / z
        order = [j for j in keys if j // block_size == local]
        for blk in sorted(cands, key=lambda c: (-importance[c], c)):
            order += [j for j in keys if j // block_size == blk]
        out[bi, i] = torch.tensor(_padded(order, topk))
    return out


def brute_oracle(q, k, valid, topk: int, scale: float) -> torch.Tensor:
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    out = torch.full((b, s, topk), -1, dtype=torch.int32)
    for bi, i, keys in _rows(valid):
        if not keys:
            continue
        p = torch.zeros(len(keys), dtype=torch.float64)
        for h in range(hq):
            kv = h // (hq // hkv)
            logits = torch.stack([q[bi, i, h].double() @ k[bi, j, kv].double() for j in keys]) * scale
            p += torch.softmax(logits, 0)
        order = [keys[n] for n in sorted(range(len(keys)), key=lambda n: (-float(p[n]), keys[n]))]
        out[bi, i] = torch.tensor(_padded(order, topk))
    return out


def _qk(b=2, s=24, t=24, hq=4, hkv=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, hq, d, generator=g), torch.randn(b, t, hkv, d, generator=g)


def _padded_mask(b: int, s: int, t: int, pad: list[int]) -> torch.Tensor:
    """Bottom-right causal plus left padding of pad[b] keys."""
    v = causal_valid(s, t).expand(b, s, t).clone()
    for bi, p in enumerate(pad):
        v[bi, :, :p] = False
    return v


@pytest.mark.parametrize(("s", "t", "k", "sink"), [(24, 24, 8, 4), (5, 40, 12, 4), (1, 33, 6, 2),
                                                   (16, 16, 3, 4), (10, 10, 64, 4), (7, 30, 9, 0)])
def test_window_matches_brute_force(s, t, k, sink):
    valid = causal_valid(s, t).expand(2, s, t)
    got = modes.window_indices(s, t, k, sink=sink, batch=2)
    assert got.dtype == torch.int32 and got.shape == (2, s, k)
    assert torch.equal(got, brute_window(valid, k, sink))


def test_window_sinks_skip_padding_and_respect_a_given_mask():
    valid = _padded_mask(2, 20, 20, [0, 5])
    valid[1, :, 12] = False  # a hole the mask forbids
    got = modes.window_indices(20, 20, 7, sink=3, valid=valid, batch=2)
    assert torch.equal(got, brute_window(valid, 7, 3))
    assert got[1, -1, :3].tolist() == [5, 6, 7]  # the sinks are the first real tokens


@pytest.mark.parametrize(("s", "t", "k", "bs"), [(24, 24, 8, 4), (6, 40, 12, 8), (1, 37, 10, 4),
                                                 (20, 20, 5, 3), (9, 9, 64, 4)])
def test_block_matches_brute_force(s, t, k, bs):
    q, kk = _qk(s=s, t=t, seed=s + t)
    valid = causal_valid(s, t).expand(2, s, t)
    got = modes.block_indices(q, kk, k, block_size=bs, scale=0.3)
    assert got.dtype == torch.int32 and got.shape == (2, s, k)
    assert torch.equal(got, brute_block(q, kk, valid, k, bs, 0.3))


def test_block_with_padding_matches_brute_force_and_keeps_local_block():
    q, kk = _qk(s=18, t=18, seed=3)
    valid = _padded_mask(2, 18, 18, [0, 6])
    got = modes.block_indices(q, kk, 9, valid, block_size=4, scale=0.25)
    assert torch.equal(got, brute_block(q, kk, valid, 9, 4, 0.25))
    row = got[0, -1].tolist()  # query 17: local block 16..17 comes first
    assert row[:2] == [16, 17]


def test_oracle_matches_brute_force_and_is_the_best_recall():
    q, kk = _qk(s=20, t=20, seed=5)
    valid = causal_valid(20, 20).expand(2, 20, 20)
    got = modes.oracle_indices(q, kk, 6, scale=0.35)
    ref = brute_oracle(q, kk, valid, 6, 0.35)
    assert torch.equal(got.sort(-1).values, ref.sort(-1).values)
    probs = modes.head_mean_probs(q, kk, scale=0.35)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 20), atol=1e-5)
    best = modes.attention_recall(probs, got)
    for other in (modes.window_indices(20, 20, 6, batch=2),
                  modes.block_indices(q, kk, 6, block_size=4, scale=0.35)):
        assert (best >= modes.attention_recall(probs, other) - 1e-6).all()


@pytest.mark.parametrize("mode", modes.SELECTION_MODES)
@pytest.mark.parametrize(("s", "t"), [(16, 16), (1, 21), (5, 13)])
def test_every_mode_selects_every_causal_key_when_k_covers_the_sequence(mode, s, t):
    q, kk = _qk(s=s, t=t, seed=7)
    valid = _padded_mask(2, s, t, [0, 3])
    for k in (t, t + 5):
        idx = modes.select(mode, q, kk, k, valid, sink=4, block_size=4)
        assert idx.shape == (2, s, k)
        for bi, i, keys in _rows(valid):
            row = idx[bi, i].tolist()
            assert sorted(j for j in row if j >= 0) == keys
            assert row.count(-1) == k - len(keys)
        dense = kernels.sparse_attention(q, kk, kk, _all_keys(valid, k), scale=0.3)
        assert torch.allclose(kernels.sparse_attention(q, kk, kk, idx, scale=0.3), dense, atol=1e-5)


def _all_keys(valid: torch.Tensor, k: int) -> torch.Tensor:
    pos = torch.arange(valid.shape[-1]).expand_as(valid)
    return kernels.select_topk(torch.where(valid, -pos.float(), float("-inf")), k)


def test_modes_are_deterministic_and_causal():
    q, kk = _qk(s=30, t=30, seed=11)
    for mode in modes.SELECTION_MODES:
        a = modes.select(mode, q, kk, 7, block_size=4)
        b = modes.select(mode, q, kk, 7, block_size=4)
        assert torch.equal(a, b)
        qpos = torch.arange(30).view(1, 30, 1)
        assert ((a < 0) | (a <= qpos)).all()  # nothing from the future
        assert ((a >= 0).sum(-1) == torch.clamp(torch.arange(1, 31), max=7)).all()


def test_decode_row_selects_like_the_prefill_row():
    q, kk = _qk(s=26, t=26, seed=13)
    for mode in modes.SELECTION_MODES:
        full = modes.select(mode, q, kk, 8, block_size=4)
        one = modes.select(mode, q[:, -1:], kk, 8, block_size=4)
        assert torch.equal(full[:, -1:], one)


def test_unknown_mode_is_rejected():
    q, kk = _qk()
    with pytest.raises(ValueError, match="unknown selection mode"):
        modes.select("random", q, kk, 4)
