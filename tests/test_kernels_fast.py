"""The CPU fast paths (`kernels/cpu.py`, masked dense) and the dispatcher against the reference.

Every test runs twice: with the C kernels (`native.py`) and with the blocked torch fallback that
runs where they cannot be built. Integer-valued inputs make every score exact in fp32, so equal
scores are exactly equal on both sides and index sets must match bit for bit, ties included.
No timings here (bench/ has them).
"""

from __future__ import annotations

import pytest
import torch

from dsparity import kernels
from dsparity.errors import DsparityError
from dsparity.kernels import cpu, dispatch, native, reference


@pytest.fixture(autouse=True, params=["native", "torch"])
def implementation(request, monkeypatch):
    """Which CPU kernels `cpu.py` uses: the C ones, or its torch code (as without a compiler)."""
    if request.param == "torch":
        monkeypatch.setattr(native, "available", lambda: False)
    else:
        assert native.available(), native.unavailable_reason()
    return request.param


def _ints(*shape, lo=-3, hi=4, gen=None):
    return torch.randint(lo, hi, shape, generator=gen).float()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# (B, S, T, H_I, d_I, k): prefill, S < T (chunked prefill), decode S = 1, rows with < k keys,
# rows long enough for the torch.topk path (T >= k), k > T.
CASES = [(2, 33, 33, 4, 8, 5), (1, 20, 90, 4, 8, 16), (2, 1, 300, 4, 8, 32), (1, 64, 64, 2, 8, 100),
         (1, 70, 2100, 4, 16, 64), (1, 1, 9000, 4, 16, 256)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("integer", [True, False])
def test_indexer_scores_and_topk_match_reference(case, integer):
    b, s, t, h, d, k = case
    g = _gen(hash(case) % 1000)
    make = (lambda *sh: _ints(*sh, gen=g)) if integer else (lambda *sh: torch.randn(*sh, generator=g))
    q, keys, w = make(b, s, h, d), make(b, t, d), make(b, s, h)
    scale = 1.0 if integer else None
    ref = reference.indexer_scores(q, keys, w, scale=scale)
    fast = cpu.indexer_scores(q, keys, w, scale=scale)
    assert torch.equal(ref.isinf(), fast.isinf())
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    if integer:
        assert torch.equal(fast, ref)
    # Selection on the same scores: exact, ties to the lower index, -1 padding.
    assert torch.equal(cpu.select_topk(ref, k), reference.select_topk(ref, k))
    # Fused indexer + top-k: equal to selecting on its own (blocked) scores.
    fused = cpu.indexer_topk(q, keys, w, k, scale=scale)
    assert torch.equal(fused, reference.select_topk(fast, k))
    if integer:
        assert torch.equal(fused, reference.select_topk(ref, k))
    loose = cpu.indexer_topk(q, keys, w, k, scale=scale, ordered=False)
    assert torch.equal(loose.sort(-1).values, fused.sort(-1).values)


def test_topk_ties_negative_weights_and_all_zero_rows():
    g = _gen(1)
    b, s, t, h, d, k = 1, 40, 3000, 4, 8, 64
    q, keys = _ints(b, s, h, d, gen=g), _ints(b, t, d, gen=g)
    w = -torch.rand(b, s, h, generator=g) - 0.1  # negative weights: scores <= 0, many exact 0
    w[0, :10] = 0.0  # all-zero rows: every visible key ties at 0
    q[0, 10:20] = -q[0, 10:20].abs() - 1  # with positive keys only: ReLU zeroes everything
    keys = keys.abs() + 1
    scores = reference.indexer_scores(q, keys, w)
    assert (scores[0, :20] == 0).logical_or(scores[0, :20].isinf()).all()
    want = reference.select_topk(scores, k)
    assert torch.equal(cpu.select_topk(scores, k), want)
    assert torch.equal(cpu.indexer_topk(q, keys, w, k), want)
    # All tied: the lowest indices win, in index order.
    assert want[0, 0].tolist() == list(range(k))


def test_topk_long_rows_with_ties_at_threshold():
    g = _gen(2)
    scores = torch.randint(0, 50, (3, 20, 5000), generator=g).float()  # ~100 copies of each value
    scores[0, 5, 100:] = float("-inf")  # fewer than k finite in one row
    scores[1, :, ::7] = float("-inf")
    for k in (1, 64, 300, 4999, 5000, 6000):
        assert torch.equal(cpu.select_topk(scores, k), reference.select_topk(scores, k)), k
        for r in range(3):
            loose = cpu.topk_rows(scores[r], k, ordered=False)
            assert torch.equal(loose.sort(-1).values,
                               reference.select_topk(scores[r:r + 1], k)[0].long().sort(-1).values)


def _attn_inputs(b, s, t, hq, hkv, d, dv, k, dtype, seed=0):
    g = _gen(seed)
    q = torch.randn(b, s, hq, d, generator=g).to(dtype)
    keys = torch.randn(b, t, hkv, d, generator=g).to(dtype)
    v = torch.randn(b, t, hkv, dv, generator=g).to(dtype)
    scores = reference.indexer_scores(torch.randn(b, s, 2, 8, generator=g),
                                      torch.randn(b, t, 8, generator=g), torch.randn(b, s, 2, generator=g))
    idx = reference.select_topk(scores, k)
    return q, keys, v, idx


ATTN = [(2, 24, 24, 4, 1, 16, 16, 8), (1, 10, 50, 8, 2, 32, 24, 16), (1, 1, 400, 4, 4, 16, 16, 32),
        (1, 17, 17, 2, 2, 16, 8, 40), (1, 9, 3000, 16, 1, 32, 32, 600)]


@pytest.mark.parametrize("shape", ATTN)
@pytest.mark.parametrize("impl", ["cpu", "dense"])
def test_sparse_attention_matches_reference_fp32(shape, impl):
    b, s, t, hq, hkv, d, dv, k = shape
    q, keys, v, idx = _attn_inputs(b, s, t, hq, hkv, d, dv, k, torch.float32)
    idx = idx.clone()
    idx[0, 0] = -1  # a row with no valid slot gives 0
    if idx.shape[-1] > 3:
        idx[0, -1, 1] = -1  # a hole in the middle of a row
    fn = cpu.sparse_attention if impl == "cpu" else cpu.masked_dense_attention
    want = reference.sparse_attention(q, keys, v, idx)
    got = fn(q, keys, v, idx)
    assert got.dtype == q.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    assert (got[0, 0] == 0).all()


@pytest.mark.parametrize("impl", ["cpu", "dense"])
def test_sparse_attention_bf16_within_1e2(impl):
    q, keys, v, idx = _attn_inputs(1, 12, 200, 8, 2, 32, 32, 48, torch.bfloat16, seed=3)
    want = reference.sparse_attention(q.float(), keys.float(), v.float(), idx)
    fn = cpu.sparse_attention if impl == "cpu" else cpu.masked_dense_attention
    got = fn(q, keys, v, idx)
    assert got.dtype == torch.bfloat16
    err = (got.float() - want).norm() / want.norm()
    assert err < 1e-2


def test_dispatcher_rules(monkeypatch, implementation):
    monkeypatch.setattr(dispatch.config, "mode", "auto")
    monkeypatch.setattr(dispatch.config, "crossover_prefill", None)
    monkeypatch.setattr(dispatch.config, "crossover_decode", None)
    q, k = torch.zeros(1, 1, 16, 8), torch.zeros(1, 1, 1, 8)  # DSA's MQA: 16 query heads, 1 KV head
    k_mha = torch.zeros(1, 1, 16, 8)

    def pick(s, t, topk=2048, keys=k):
        return dispatch.choose("attention", q, keys, s=s, t=t, k=topk)

    if implementation == "torch":  # measured crossovers near 8192 (prefill) and 3072 (decode)
        assert (pick(4096, 4096), pick(16384, 16384)) == ("dense", "cpu")
        assert (pick(4096, 4096, topk=512), pick(1, 2048), pick(1, 4096)) == ("cpu", "dense", "cpu")
    else:  # the C kernel: selected rows win for MQA at every length; not for MHA prefill
        assert {pick(s, t) for s, t in ((4096, 4096), (1, 2048), (1, 100), (100, 100))} == {"cpu"}
        assert (pick(8192, 8192, keys=k_mha), pick(1, 65536, keys=k_mha)) == ("dense", "cpu")
        # bf16: masked SDPA runs on bf16 matrix units, the C kernel in fp32: crossover ~6K keys.
        qh, kh = q.bfloat16(), k.bfloat16()
        assert [dispatch.choose("attention", qh, kh, s=t, t=t, k=2048) for t in (4096, 16384)] == \
            ["dense", "cpu"]
    assert dispatch.choose("scores", q) == "cpu"
    assert dispatch.choose("topk", q) == "cpu"
    # Autograd needs the reference in every mode.
    qg = q.clone().requires_grad_()
    for mode in dispatch.MODES:
        assert dispatch.choose("scores", qg, mode=mode) == "reference"
    with torch.no_grad():
        assert dispatch.choose("scores", qg) == "cpu"
    # Pinned modes.
    assert dispatch.choose("attention", q, s=1, t=10, mode="cpu") == "cpu"
    assert dispatch.choose("attention", q, s=9999, t=9999, mode="dense") == "dense"
    assert dispatch.choose("scores", q, mode="dense") == "cpu"
    assert dispatch.choose("attention", q, mode="reference") == "reference"
    # Crossover overrides: absolute key counts.
    dispatch.configure(crossover_prefill=100, crossover_decode=5000)
    assert (pick(1000, 1000, keys=k_mha), pick(1, 4000), pick(1, 6000)) == ("cpu", "dense", "cpu")
    with pytest.raises(ValueError):
        dispatch.configure("fastest")


def test_dispatcher_env(monkeypatch):
    monkeypatch.setenv("DSPARITY_KERNELS", "dense")
    monkeypatch.setenv("DSPARITY_CROSSOVER_DECODE", "77")
    cfg = dispatch._from_env()
    assert (cfg.mode, cfg.crossover_decode) == ("dense", 77)
    monkeypatch.setenv("DSPARITY_KERNELS", "bogus")
    with pytest.raises(DsparityError, match="DSPARITY_KERNELS: 'bogus' is not a kernel mode"):
        dispatch._from_env()
    monkeypatch.setattr(dispatch, "_env_error", DsparityError("environment", "X", "bad"))
    with pytest.raises(DsparityError, match="X: bad"):  # an import-time error surfaces on first use
        dispatch.choose("scores", torch.zeros(1, 1, 1, 1))
    monkeypatch.setenv("DSPARITY_KERNELS", "cpu")
    monkeypatch.setenv("DSPARITY_CROSSOVER_DECODE", "3k")
    with pytest.raises(DsparityError, match="DSPARITY_CROSSOVER_DECODE: '3k' is not a key count"):
        dispatch._from_env()


@pytest.mark.parametrize("backend", ["auto", "cpu", "dense", "reference"])
def test_public_functions_agree_across_backends(backend):
    g = _gen(5)
    b, s, t = 1, 30, 30
    qi, ki, w = _ints(b, s, 4, 8, gen=g), _ints(b, t, 8, gen=g), _ints(b, s, 4, gen=g)
    scores = kernels.indexer_scores(qi, ki, w, scale=1.0, backend=backend)
    assert torch.equal(scores, reference.indexer_scores(qi, ki, w, scale=1.0))
    idx = kernels.select_topk(scores, 7, backend=backend)
    assert torch.equal(idx, reference.select_topk(scores, 7))
    assert torch.equal(kernels.indexer_topk(qi, ki, w, 7, scale=1.0, backend=backend), idx)
    q, keys, v = torch.randn(b, s, 4, 16), torch.randn(b, t, 2, 16), torch.randn(b, t, 2, 16)
    out = kernels.sparse_attention(q, keys, v, idx, backend=backend)
    torch.testing.assert_close(out, reference.sparse_attention(q, keys, v, idx), rtol=1e-5, atol=2e-6)


def test_autograd_still_flows_through_the_public_functions():
    g = _gen(6)
    q = torch.randn(1, 12, 2, 8, generator=g, requires_grad=True)
    keys = torch.randn(1, 12, 8, generator=g)
    w = torch.randn(1, 12, 2, generator=g)
    scores = kernels.indexer_scores(q, keys, w)
    scores.masked_fill(scores.isinf(), 0).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_float64_scores_are_ranked_in_float64():
    # Differences below fp32 resolution: rounding to fp32 would turn them into ties.
    scores = (1.0 + torch.arange(300, dtype=torch.float64) * 1e-12).flip(0).view(1, 1, 300)
    scores = scores.expand(1, 3, 300).contiguous()
    want = reference.select_topk(scores, 10)
    assert want[0, 0].tolist() == list(range(10))
    assert torch.equal(cpu.select_topk(scores, 10), want)
    scores[0, 1] = scores[0, 1].flip(0)
    assert torch.equal(cpu.select_topk(scores, 10), reference.select_topk(scores, 10))
