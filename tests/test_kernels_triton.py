"""Triton kernels against the reference: on CPU through TRITON_INTERPRET=1 (fp32), on CUDA as is.

The interpreter runs each program instance in Python, so shapes are small and blocks big.
bf16 is checked on a GPU only (the interpreter's bf16 arithmetic is broken, stack.md).
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first @triton.jit is built

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[triton]')")

from dsparity.kernels import dispatch, reference  # noqa: E402
from dsparity.kernels import triton_kernels as tk  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs CUDA or TRITON_INTERPRET=1")


def _ints(*shape, gen):
    return torch.randint(-3, 4, shape, generator=gen).float()


# (B, S, T, H_I, d_I, k): prefill, S < T, decode S = 1, k > visible keys for early rows.
CASES = [(2, 24, 24, 2, 16, 5), (1, 10, 50, 4, 16, 12), (1, 1, 130, 2, 16, 20)]


@pytest.mark.parametrize("case", CASES)
def test_indexer_scores_and_fused_topk(case):
    b, s, t, h, d, k = case
    g = torch.Generator().manual_seed(sum(case))
    q, keys, w = _ints(b, s, h, d, gen=g), _ints(b, t, d, gen=g), _ints(b, s, h, gen=g)
    w[0, 0] = 0.0  # an all-zero row: every visible key ties at 0
    ref = reference.indexer_scores(q, keys, w, scale=1.0)
    got = tk.indexer_scores(q.to(DEV), keys.to(DEV), w.to(DEV), scale=1.0).cpu()
    assert torch.equal(got.isinf(), ref.isinf())
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)  # integers: exact sums
    want = reference.select_topk(ref, k)
    fused = tk.indexer_topk(q.to(DEV), keys.to(DEV), w.to(DEV), k, scale=1.0).cpu()
    assert torch.equal(fused, want)
    # Random inputs with the default scale: the scores agree to fp32 rounding.
    qr, kr, wr = torch.randn(b, s, h, d, generator=g), torch.randn(b, t, d, generator=g), \
        torch.randn(b, s, h, generator=g)
    torch.testing.assert_close(tk.indexer_scores(qr.to(DEV), kr.to(DEV), wr.to(DEV)).cpu(),
                               reference.indexer_scores(qr, kr, wr), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads", [(4, 1), (4, 2)])
def test_sparse_attention_fp32(heads):
    hq, hkv = heads
    g = torch.Generator().manual_seed(hq + hkv)
    b, s, t, d, dv, k = 1, 5, 40, 16, 16, 24
    q = torch.randn(b, s, hq, d, generator=g)
    keys, v = torch.randn(b, t, hkv, d, generator=g), torch.randn(b, t, hkv, dv, generator=g)
    scores = reference.indexer_scores(torch.randn(b, s, 2, 8, generator=g),
                                      torch.randn(b, t, 8, generator=g), torch.randn(b, s, 2, generator=g))
    idx = reference.select_topk(scores, k).clone()  # S < T: early rows have fewer than k keys
    idx[0, 0] = -1  # no valid slot -> 0
    idx[0, 2, 3] = -1  # a hole in the middle
    want = reference.sparse_attention(q, keys, v, idx)
    got = tk.sparse_attention(q.to(DEV), keys.to(DEV), v.to(DEV), idx.to(DEV)).cpu()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    assert (got[0, 0] == 0).all()


@pytest.mark.parametrize("hq", [20, 4])
def test_sparse_attention_on_the_mla_latent_layout(hq):
    """One KV head of r + d_R columns whose first r are the value (a view, like MLA's latent
    cache); more heads than one head block, a row wider than one slice: the head-blocked kernel."""
    g = torch.Generator().manual_seed(hq)
    b, s, t, r, dr, k = 2, 5, 40, 128, 8, 24
    q = torch.randn(b, s, hq, r + dr, generator=g)
    latent = torch.randn(b, 1, t, r + dr, generator=g).transpose(1, 2)  # [B, T, 1, D], a view
    scores = reference.indexer_scores(torch.randn(b, s, 2, 8, generator=g),
                                      torch.randn(b, t, 8, generator=g), torch.randn(b, s, 2, generator=g))
    idx = reference.select_topk(scores, k).clone()
    idx[0, 0] = -1  # no valid slot -> 0
    idx[1, 2, 3] = -1
    assert tk.latent_layout(1, hq, r + dr)
    want = reference.sparse_attention(q, latent, latent[..., :r], idx, scale=0.1)
    got = tk.sparse_attention(q.to(DEV), latent.to(DEV), latent.to(DEV)[..., :r], idx.to(DEV),
                              scale=0.1).cpu()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    assert (got[0, 0] == 0).all()


def test_latent_decode_splits_the_selected_keys_and_merges_them():
    """Decode (one token) runs few programs: the selected keys are split over several and the
    partial softmax sums merged (flash-decoding); a split whose slots are all -1 must add nothing."""
    g = torch.Generator().manual_seed(5)
    b, t, hq, r, dr, k = 2, 200, 20, 128, 8, 64
    q = torch.randn(b, 1, hq, r + dr, generator=g)
    latent = torch.randn(b, t, 1, r + dr, generator=g)
    idx = torch.stack([torch.randperm(t, generator=g)[:k] for _ in range(b)])[:, None].int()
    idx[0, 0, 16:32] = -1  # the second of four splits has nothing to attend to
    idx[1, 0, 60:] = -1
    want = reference.sparse_attention(q, latent, latent[..., :r], idx, scale=0.1)
    for splits in (1, 4):
        got = tk.sparse_mla_attention(q.to(DEV), latent.to(DEV), latent.to(DEV)[..., :r], idx.to(DEV),
                                      scale=0.1, block_k=16, splits=splits).cpu()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


def test_gpu_tensors_never_reach_the_host_kernels():
    """The C kernels read host memory: for tensors elsewhere (the Triton path's top-k on a GPU)
    the torch code runs, on the tensors' own device."""
    from dsparity.kernels import cpu

    assert cpu._native_on(torch.device("cuda")) is None
    assert cpu._native(torch.empty(0, device="meta")) is None
    if CUDA:
        scores = torch.randn(3, 50, device=DEV)
        picked = cpu.topk_rows(scores, 5)
        assert picked.device.type == "cuda"
        assert torch.equal(picked.cpu(), reference.select_topk(scores.cpu()[None], 5)[0].long())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="bf16 Triton needs a GPU (the interpreter's bf16 is broken)")
def test_bf16_on_gpu():
    g = torch.Generator().manual_seed(7)
    b, s, t, hq, hkv, d, k = 1, 64, 512, 16, 1, 128, 128
    q, keys, v = (torch.randn(*sh, generator=g) for sh in ((b, s, hq, d), (b, t, hkv, d), (b, t, hkv, d)))
    qi, ki, wi = torch.randn(b, s, 4, 64, generator=g), torch.randn(b, t, 64, generator=g), \
        torch.randn(b, s, 4, generator=g)
    idx = reference.select_topk(reference.indexer_scores(qi, ki, wi), k)
    want = reference.sparse_attention(q, keys, v, idx)
    got = tk.sparse_attention(*(x.to(DEV, torch.bfloat16) for x in (q, keys, v)), idx.to(DEV)).float().cpu()
    assert ((got - want).norm() / want.norm()) < 1e-2
    s16 = tk.indexer_scores(*(x.to(DEV, torch.bfloat16) for x in (qi, ki, wi))).cpu()
    ref = reference.indexer_scores(qi.bfloat16(), ki.bfloat16(), wi.bfloat16())
    fin = ref.isfinite()
    assert ((s16[fin] - ref[fin]).norm() / ref[fin].norm()) < 1e-2


def test_dispatcher_routes_to_triton_when_pinned():
    q = torch.zeros(1, 2, 2, 16, device=DEV)
    assert dispatch.choose("attention", q, s=2, t=2, mode="triton") == "triton"
    assert dispatch.choose("topk", q, mode="triton") == "cpu"
    if CUDA:
        assert dispatch.choose("attention", q, s=2, t=2, mode="auto") == "triton"


def test_mla_model_runs_its_latent_layout_through_triton():
    """A converted DeepseekV3 (tests/test_mla.py) through the Triton kernels gives the logits and
    selections of the CPU kernels: fused indexer + top-k, then the head-blocked latent kernel."""
    from tiny_models import tiny_deepseek_v3

    from dsparity.model import DSAConfig, convert_to_dsa

    model = convert_to_dsa(tiny_deepseek_v3(0), DSAConfig(index_topk=6, index_n_heads=4,
                                                          index_head_dim=16)).to(DEV)
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(3)).to(DEV)
    out = {}
    for mode in ("cpu" if not CUDA else "reference", "triton"):
        before = dispatch.config.mode
        dispatch.configure(mode=mode)
        try:
            model.dsa_runtime.recorded = {}
            with torch.no_grad():
                out[mode] = (model(ids).logits.cpu(), model.dsa_runtime.recorded[1][0].cpu())
        finally:
            dispatch.configure(mode=before)
    (a, ia), (b, ib) = out.values()
    assert torch.equal(ia, ib)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
