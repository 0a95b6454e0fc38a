"""The C kernels (`kernels/native.py`, `kernels/csrc/dsa_cpu.c`): build, fallback, exactness.

They must equal the reference: top-k index sets bit for bit (ties, -inf, padding), attention
within fp32 rounding, for every layout the C code treats specially (more than 16 query heads per
KV head, head dims that are not multiples of 16, bf16/fp16 K/V, empty and invalid slots).
"""

from __future__ import annotations

import pytest
import torch

from dsparity.kernels import native, reference


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """native.py with its build state cleared and its cache in a temporary folder."""
    monkeypatch.setenv("DSPARITY_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_reason", None)
    return tmp_path


def test_builds_once_into_the_cache(fresh_native):
    assert native.available(), native.unavailable_reason()
    built = list((fresh_native / "kernels").glob("dsa_cpu-*.so"))
    assert len(built) == 1 and not list((fresh_native / "kernels").glob("tmp*"))
    stamp = built[0].stat().st_mtime_ns
    native._lib = None  # a new process: loads the cached library, does not rebuild
    assert native.available() and built[0].stat().st_mtime_ns == stamp


def test_off_switch_and_missing_compiler_fall_back_with_a_reason(fresh_native, monkeypatch):
    monkeypatch.setenv("DSPARITY_NATIVE", "0")
    assert not native.available()
    assert "DSPARITY_NATIVE" in native.unavailable_reason()
    with pytest.raises(RuntimeError, match="unavailable"):
        native.topk_rows(torch.zeros(1, 4), 2)

    monkeypatch.setattr(native, "_reason", None)
    monkeypatch.delenv("DSPARITY_NATIVE")
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(fresh_native))  # neither cc nor gcc on it
    assert not native.available()
    assert "no C compiler" in native.unavailable_reason()


def test_a_broken_compiler_is_reported_not_raised(fresh_native, monkeypatch):
    fake = fresh_native / "cc"
    fake.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert not native.available()
    assert "internal error" in native.unavailable_reason()


def _ref_topk(scores, k):
    return reference.select_topk(scores[None], k)[0]


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (100, 100), (100, 150), (5000, 64), (5000, 4999),
                                 (20000, 2048)])
def test_topk_equals_the_reference_with_ties_and_masks(n, k):
    g = torch.Generator().manual_seed(n + k)
    rows = [torch.randn(n, generator=g), torch.randint(0, 7, (n,), generator=g).float(),
            torch.rand(n, generator=g) + 1.0, torch.zeros(n), torch.zeros(n),
            torch.full((n,), float("-inf"))]
    scores = torch.stack(rows)
    scores[1, ::3] = float("-inf")
    scores[2, : n // 2] = -scores[2, : n // 2]  # both signs, one exponent range
    scores[3, n // 2:] = -0.0  # -0.0 and 0.0 are equal scores: ties, lower index first
    scores[4, : n // 2] = -0.0
    want = _ref_topk(scores, k)
    assert torch.equal(native.topk_rows(scores, k, ordered=True), want)
    loose = native.topk_rows(scores, k, ordered=False)
    assert torch.equal(loose.long().sort(-1).values, want.long().sort(-1).values)


def test_shapes_the_c_code_cannot_take_are_refused():
    with pytest.raises(ValueError, match="row-contiguous"):
        native.topk_rows(torch.zeros(4, 10), 3, out=torch.empty(3, 4, dtype=torch.int32).t())
    with pytest.raises(ValueError, match="split evenly"):
        native.sparse_attention(torch.zeros(1, 2, 6, 8), torch.zeros(1, 5, 4, 8), torch.zeros(1, 5, 4, 8),
                                torch.zeros(1, 2, 3, dtype=torch.int32))


def test_topk_threads_and_strided_rows_give_the_same_result():
    g = torch.Generator().manual_seed(3)
    big = torch.randint(0, 50, (64, 3000), generator=g).float()
    view = big[:, :2000]  # rows with a stride larger than their length
    one = native.topk_rows(view, 300)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = native.topk_rows(view, 300)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and torch.equal(one, _ref_topk(view.contiguous(), 300))


def _attn_case(s, t, hq, hkv, d, dv, k, seed=0, logit_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, s, hq, d, generator=g) * logit_scale
    keys = torch.randn(2, t, hkv, d, generator=g)
    v = torch.randn(2, t, hkv, dv, generator=g)
    idx = torch.randint(0, t, (2, s, k), generator=g, dtype=torch.int32)
    idx[0, 0] = -1  # no valid slot: zeros
    idx[1, :, ::5] = -1  # holes
    return q, keys, v, idx


@pytest.mark.parametrize("shape", [
    (5, 300, 16, 1, 128, 128, 200),  # DSA's MQA layout
    (4, 90, 36, 2, 16, 16, 40),  # 18 query heads per KV head: two lane blocks
    (3, 50, 9, 3, 64, 64, 70),  # the default model: 3 per KV head
    (3, 40, 4, 4, 17, 24, 9),  # odd head dim, Dv not a multiple of 16, fewer slots than a tile
    (2, 70, 2, 1, 8, 8, 150),  # more slots than a tile, tiny heads
])
def test_attention_equals_the_reference_fp32(shape):
    q, keys, v, idx = _attn_case(*shape)
    want = reference.sparse_attention(q, keys, v, idx)
    got = native.sparse_attention(q, keys, v, idx)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    assert (got[0, 0] == 0).all()


def test_attention_reads_a_transposed_kv_cache_in_place():
    q, keys, v, idx = _attn_case(1, 64, 6, 3, 16, 16, 20, seed=4)
    # The Hugging Face cache layout [B, Hkv, T, D], seen as [B, T, Hkv, D]: strided, not contiguous.
    k_cache, v_cache = keys.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    k_view, v_view = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    assert not k_view.is_contiguous()
    torch.testing.assert_close(native.sparse_attention(q, k_view, v_view, idx),
                               reference.sparse_attention(q, keys, v, idx), rtol=1e-5, atol=2e-6)


def test_attention_large_logits_duplicates_and_out_of_range_slots():
    q, keys, v, idx = _attn_case(4, 120, 8, 2, 32, 32, 64, seed=1, logit_scale=40.0)
    idx[0, 1, :10] = idx[0, 1, 10]  # the same key in 11 slots counts 11 times, as in the reference
    want = reference.sparse_attention(q, keys, v, idx)
    torch.testing.assert_close(native.sparse_attention(q, keys, v, idx), want, rtol=1e-5, atol=1e-5)
    # Logits in the hundreds: the online softmax must not lose the shift.
    assert want.abs().max() > 0.1
    bad = idx.clone()
    bad[1, 2, 3] = 120  # >= T: ignored like -1
    bad[1, 2, 4] = -7
    clean = bad.clone()
    clean[1, 2, 3:5] = -1
    torch.testing.assert_close(native.sparse_attention(q, keys, v, bad),
                               reference.sparse_attention(q, keys, v, clean), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_reads_half_precision_kv_in_place(dtype):
    q, keys, v, idx = _attn_case(6, 200, 16, 2, 64, 64, 50, seed=2)
    q, keys, v = q.to(dtype), keys.to(dtype), v.to(dtype)
    got = native.sparse_attention(q, keys, v, idx)
    assert got.dtype == dtype
    # Same inputs upcast: the C code computes in fp32 from the same half-precision values.
    want = reference.sparse_attention(q.float(), keys.float(), v.float(), idx)
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)
    err = (got.float() - want).norm() / want.norm()
    assert err < 4e-3  # bf16 output rounding (2^-9 relative), nothing more


def _topk_in_child(queue):
    torch.set_num_threads(2)
    queue.put(native.topk_rows(torch.arange(64 * 50.0).view(64, 50), 3).tolist())


def test_a_forked_child_gets_its_own_threads():
    import multiprocessing

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = native.topk_rows(torch.arange(64 * 50.0).view(64, 50), 3).tolist()  # pool started
    finally:
        torch.set_num_threads(threads)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_topk_in_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=60) == parent  # the parent's pool threads do not exist there
    finally:
        child.join(10)
        child.kill()
