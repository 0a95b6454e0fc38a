"""MLA -> DSA: DeepseekV3 converted in memory, written as a DeepseekV32 checkpoint, and run on the
latent layout (tiny random models, CPU). The reference case of DESIGN.md in miniature."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import (
    YARN,
    assert_decode_selects_like_full_forward,
    byte_tokenizer,
    cache_kwargs,
    has_deepseek_v32,
    save_tiny_deepseek_v3,
    tiny_deepseek_v3,
    tiny_model,
)

from dsparity.model import DSAConfig, convert_to_dsa, remove_dsa, set_dsa, use_dsparity_attention

pytest.importorskip("transformers.models.deepseek_v3")
# transformers 5.0 has no DeepseekV32: conversion works there, export and loading cannot
needs_v32 = pytest.mark.skipif(not has_deepseek_v32(), reason="this transformers has no DeepseekV32")

SMALL = dict(index_n_heads=4, index_head_dim=16)


def _converted(seed: int = 0, dtype=torch.float32, model_overrides: dict | None = None, **cfg):
    model = tiny_deepseek_v3(seed, dtype, **(model_overrides or {}))
    convert_to_dsa(model, DSAConfig(**{**SMALL, **cfg}), seed=seed + 1)
    return model.to(dtype)


def _ids(b: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (b, n), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- k >= L: the dense model exactly


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("dense_when_short", [True, False])
def test_topk_at_least_length_equals_deepseek_v3(dtype, tol, dense_when_short):
    """dense_when_short=False runs the sparse MQA path over the latent (every key selected)."""
    ids = _ids(2, 40, 1)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding: the selection must never pick a padded key
    with torch.no_grad():
        ref = tiny_deepseek_v3(0, dtype)(ids, attention_mask=mask).logits
        model = _converted(0, dtype, index_topk=40, dense_when_short=dense_when_short)
        model.dsa_runtime.recorded = {}
        got = model(ids, attention_mask=mask).logits
    keep = mask.bool()
    err = (got[keep] - ref[keep]).abs().max().item()
    print(f"{dtype}, dense_when_short={dense_when_short}: max |logit diff| {err:.1e}")
    assert err <= tol
    if not dense_when_short:
        idx = model.dsa_runtime.recorded[1][0]
        assert idx.shape == (2, 40, 40)
        assert not torch.isin(idx[1], torch.arange(6, dtype=idx.dtype)).any()


def test_small_topk_changes_the_output_and_switches_restore_dense():
    ids = _ids(1, 40, 2)
    with torch.no_grad():
        ref = tiny_deepseek_v3(0)(ids).logits
        model = _converted(index_topk=6)
        sparse = model(ids).logits
        assert (sparse - ref).abs().max() > 1e-2  # the checks below could fail
        torch.testing.assert_close(sparse[:, :6], ref[:, :6], atol=1e-5, rtol=0)  # rows t < k
        set_dsa(model, enabled=False)
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=0)
        set_dsa(model, enabled=True, topk=40)
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=0)
        remove_dsa(model)
        assert not any("indexer" in k for k in model.state_dict())
        torch.testing.assert_close(model(ids).logits, ref, atol=0, rtol=0)


# ---------------------------------------------------------------- what the indexer reads


def test_selection_is_the_topk_of_a_float64_brute_force_over_the_query_latent():
    """q^I = wq_b c^Q with c^Q = q_a_layernorm(q_a_proj(x)), one key per token
    k^I = LayerNorm(wk x), NeoX RoPE on the first qk_rope_head_dim dims with MLA's own (YaRN)
    frequencies, I = (H d)^-1/2 sum_j w_j ReLU(q_j . k) (dsa.md §3)."""
    model = _converted(model_overrides={"rope_parameters": YARN}, index_topk=5,
                       dense_when_short=False)
    attn = model.model.layers[1].self_attn
    captured = {}
    hook = attn.register_forward_pre_hook(
        lambda mod, args, kw: captured.__setitem__("x", kw["hidden_states"].detach()), with_kwargs=True)
    model.dsa_runtime.recorded = {}
    with torch.no_grad():
        model(_ids(1, 24, 3))
    hook.remove()
    idx = model.dsa_runtime.recorded[1][0][0]
    x = captured["x"][0].double()
    attn.requires_grad_(False)
    a = x @ attn.q_a_proj.weight.double().T
    c_q = a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + attn.q_a_layernorm.variance_epsilon) \
        * attn.q_a_layernorm.weight.double()
    ind = attn.indexer
    h, d, r = 4, 16, 8
    q = (c_q @ ind.wq_b.weight.double().T).view(24, h, d)
    k = torch.nn.functional.layer_norm(x @ ind.wk.weight.double().T, (d,), ind.k_norm.weight.double(),
                                       ind.k_norm.bias.double(), 1e-6)
    w = x @ ind.weights_proj.weight.double().T
    inv = model.model.rotary_emb.inv_freq.double()  # YaRN-scaled: not theta^(-2i/r)
    assert not torch.allclose(inv, 1.0 / 10000.0 ** (torch.arange(0, r, 2).double() / r))
    scale = model.model.rotary_emb.attention_scaling
    assert scale != 1.0

    def rope(v, t):  # NeoX halves (i, i + r/2), cos/sin scaled like transformers' YaRN table
        ang = t * inv
        cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
        v1, v2 = v[..., : r // 2], v[..., r // 2: r]
        return torch.cat([v1 * cos - v2 * sin, v2 * cos + v1 * sin, v[..., r:]], -1)

    for t in range(24):
        scores = [(sum(float(w[t, j]) * max(0.0, float(rope(q[t, j], t) @ rope(k[s], s)))
                       for j in range(h)) / math.sqrt(h * d), s) for s in range(t + 1)]
        best = [s for _, s in sorted(scores, key=lambda p: (-p[0], p[1]))[:5]]
        assert sorted(int(i) for i in idx[t] if i >= 0) == sorted(best), t


def test_one_selected_latent_row_serves_every_head():
    """The sparse path attends over the latent in MQA mode: its output equals explicit per-head
    attention (K/V decompressed per head, MHA mode) restricted to the same index set."""
    model = _converted(dtype=torch.float64, index_topk=5, dense_when_short=False)
    attn = model.model.layers[0].self_attn
    seen = {}
    attn.o_proj.register_forward_pre_hook(lambda mod, args: seen.__setitem__("o", args[0]))
    hook = attn.register_forward_pre_hook(
        lambda mod, args, kw: seen.__setitem__("x", kw["hidden_states"]), with_kwargs=True)
    model.dsa_runtime.recorded = {}
    with torch.no_grad():
        model(_ids(1, 20, 4))
        hook.remove()
        x, idx = seen["x"], model.dsa_runtime.recorded[0][0][0].long()
        s = x.shape[1]
        q = attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(x))).view(1, s, 4, 24).transpose(1, 2)
        ckv = attn.kv_a_proj_with_mqa(x)
        kv = attn.kv_b_proj(attn.kv_a_layernorm(ckv[..., :32])).view(1, s, 4, 32).transpose(1, 2)
        cos, sin = model.model.rotary_emb(x, torch.arange(s)[None])
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
            apply_rotary_pos_emb_interleave,
        )
        q_rot, k_rot = apply_rotary_pos_emb_interleave(q[..., 16:], ckv[..., 32:].view(1, 1, s, 8),
                                                       cos, sin)
        k = torch.cat([kv[..., :16], k_rot.expand(1, 4, s, 8)], -1)
        logits = torch.cat([q[..., :16], q_rot], -1) @ k.transpose(-1, -2) * attn.scaling
        slots = torch.where(idx >= 0, idx, s)  # -1 -> a spare column, cut off below
        allowed = torch.zeros(s, s + 1, dtype=torch.bool).scatter_(1, slots, True)[:, :s]
        probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        want = (probs @ kv[..., 16:]).transpose(1, 2).reshape(1, s, 64)
    torch.testing.assert_close(seen["o"], want, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- decode, cache, beams


@pytest.mark.parametrize("rope", ["default", "yarn"])
def test_greedy_decode_selects_like_full_forward(rope):
    over = {"rope_parameters": YARN} if rope == "yarn" else {}
    model = _converted(seed=4, model_overrides=over, index_topk=6)
    assert_decode_selects_like_full_forward(model, _ids(1, 20, 5), steps=12)
    assert model.dsa_runtime.recorded[0][0].shape[-1] == 6


def test_chunked_prefill_and_decode_append_the_latent_cache_in_place():
    from transformers import DynamicCache

    model = _converted(index_topk=5, dense_when_short=False)
    ids = _ids(1, 30, 6)
    model.dsa_runtime.recorded = {}
    with torch.no_grad():
        full = model(ids).logits
        one = model.dsa_runtime.recorded[0][0]
        model.dsa_runtime.recorded = {}
        cache = DynamicCache(config=model.config)
        parts = [model(ids[:, :17], **cache_kwargs(cache)).logits]
        layer = cache.layers[0]
        assert layer.keys.shape == (1, 1, 17, 32 + 8)  # latent rows: c^KV (32) + k^R (8)
        assert layer.values.shape == (1, 1, 17, 16)  # indexer keys
        ptrs = (layer.keys.data_ptr(), layer.values.data_ptr())
        for i in range(17, 30):
            parts.append(model(ids[:, i:i + 1], **cache_kwargs(cache)).logits)
            assert (layer.keys.data_ptr(), layer.values.data_ptr()) == ptrs  # written in place
    assert cache.get_seq_length() == 30
    assert torch.equal(torch.cat(model.dsa_runtime.recorded[0], 1), one)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_beam_search_reorders_the_latent_and_indexer_caches():
    """Beam search reorders the cache every step; with the latent and indexer keys in the cache
    layer, generation with the cache equals generation that recomputes everything."""
    model = _converted(dtype=torch.float64, index_topk=6)
    prompt = _ids(2, 16, 7)
    kw = dict(max_new_tokens=8, min_new_tokens=8, num_beams=3, num_return_sequences=2,
              do_sample=False, pad_token_id=258)
    cached = model.generate(prompt, use_cache=True, **kw)
    fresh = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, fresh)
    set_dsa(model, topk=64)  # dense: beams must differ from the sparse run (the test can fail)
    assert not torch.equal(model.generate(prompt, use_cache=True, **kw), cached)


def test_static_cache_generates_like_the_dynamic_cache():
    """Static caches keep their own in-place buffers (T = capacity, unused slots masked)."""
    model = _converted(index_topk=6)
    prompt = _ids(1, 20, 13)
    dynamic = model.generate(prompt, max_new_tokens=8, do_sample=False)
    static = model.generate(prompt, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_indexer_file_round_trip(tmp_path):
    """prepare_dsa's cache format (checkpoint.py) holds MLA indexers too."""
    from dsparity.model import load_indexers, save_indexers

    model = _converted(seed=3, index_topk=6)
    path = save_indexers(model, tmp_path / "ix.safetensors", base_model="tiny-v3", base_revision="r1")
    other = convert_to_dsa(tiny_deepseek_v3(3), DSAConfig(**SMALL, index_topk=6), seed=9)  # same base
    ids = _ids(1, 30, 14)
    with torch.no_grad():
        want = model(ids).logits
        assert not torch.allclose(other(ids).logits, want)
        load_indexers(other, path, expect_revision="r1")
        torch.testing.assert_close(other(ids).logits, want, atol=0, rtol=0)


# ---------------------------------------------------------------- the DeepseekV32 checkpoint


def _positive_head_weights(model) -> None:
    """Exact-zero scores (every head ReLU'd) tie, and transformers' torch.topk breaks ties
    arbitrarily; positive head weights keep those zeros below every positive score."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.indexer.weights_proj.weight.abs_()


def _no_tie_at_threshold(model, ids, k: int) -> None:
    """Guard: transformers' selection is well defined on this input (no tie at the k-th score)."""
    from dsparity import kernels

    scores = []

    def grab(mod, args, kw):
        x = kw["hidden_states"]
        pos = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
        q, w = mod.dsa_layer.indexer.queries(x, pos)
        scores.append(kernels.indexer_scores(q, mod.dsa_layer.indexer.keys(x, pos), w))

    hooks = [layer.self_attn.register_forward_pre_hook(grab, with_kwargs=True)
             for layer in model.model.layers]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    for sc in scores:
        top = sc.topk(k + 1, dim=-1).values[:, k:, k - 1:]  # rows that see more than k keys
        assert (top[..., 0] > top[..., 1]).all(), "tie at the top-k threshold: pick another input"


@needs_v32
@pytest.mark.parametrize("variant", ["default", "yarn", "neox-mla-rotary"])
def test_checkpoint_loads_as_deepseek_v32_and_matches_transformers_eager(tmp_path, variant):
    from transformers import AutoModelForCausalLM

    from dsparity.model.export import export_v32

    over = {"default": {}, "yarn": {"rope_parameters": YARN},
            "neox-mla-rotary": {"rope_interleave": False}}[variant]
    model = _converted(model_overrides=over, index_topk=6, index_n_heads=8)
    _positive_head_weights(model)
    ids = _ids(2, 48, 8)
    with torch.no_grad():
        converted = model(ids).logits
    export_v32(model, tmp_path / "ckpt", tokenizer=byte_tokenizer())
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v32" and cfg["architectures"] == ["DeepseekV32ForCausalLM"]
    assert (cfg["index_topk"], cfg["index_n_heads"], cfg["index_head_dim"]) == (6, 8, 16)

    def load(**kw):
        return AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", experts_implementation="eager",
                                                    **kw).eval()

    eager = load(attn_implementation="eager")
    assert type(eager).__name__ == "DeepseekV32ForCausalLM"
    ours = use_dsparity_attention(load())
    _no_tie_at_threshold(ours, ids, 6)
    with torch.no_grad():
        ref = eager(ids).logits
        got = ours(ids).logits
        dense = load(attn_implementation="eager")
        dense.config.index_topk = 64
        for layer in dense.model.layers:
            layer.self_attn.indexer.index_topk = 64
        full = dense(ids).logits
    err = (got - ref).abs().max().item()
    print(f"{variant}: dsparity vs transformers eager DeepseekV32 {err:.1e}")
    assert err < 1e-5
    assert (full - ref).abs().max() > 1e-2  # k < L really is sparse here
    torch.testing.assert_close(got, converted, atol=1e-6, rtol=0)  # the same model as converted
    assert_decode_selects_like_full_forward(ours, ids[:1, :20], steps=8)


@needs_v32
def test_v32_latent_path_never_builds_the_score_matrix(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, DynamicCache

    from dsparity import kernels
    from dsparity.model.export import export_v32

    export_v32(_converted(index_topk=5), tmp_path / "ckpt")
    model = use_dsparity_attention(AutoModelForCausalLM.from_pretrained(
        tmp_path / "ckpt", experts_implementation="eager").eval())

    def no_score_matrix(*args, **kwargs):
        raise AssertionError("the fused indexer + top-k should not build [B, S, T] scores")

    monkeypatch.setattr(kernels, "indexer_scores", no_score_matrix)
    ids = _ids(1, 30, 9)
    cache = DynamicCache(config=model.config)
    model.dsa_runtime.recorded = {}
    with torch.no_grad():
        model(ids[:, :12], **cache_kwargs(cache))
        for i in range(12, 30):
            model(ids[:, i:i + 1], **cache_kwargs(cache))
    assert len(model.dsa_runtime.recorded[0]) == 1 + 18


@needs_v32
def test_local_backend_runs_a_v32_checkpoint_on_its_own_indexers(tmp_path):
    """`local:DIR?attention=dsa` on a DeepseekV32 checkpoint: no warm-up, its own indexers, the
    latent path; `topk` defaults to the checkpoint's index_topk; the controls work there too."""
    import asyncio

    from dsparity.evals.backends.base import Request
    from dsparity.evals.backends.local import LocalBackend
    from dsparity.evals.specs import parse_spec
    from dsparity.model.export import export_v32

    model = _converted(index_topk=6)
    model.generation_config.eos_token_id = 257
    export_v32(model, tmp_path / "ckpt", tokenizer=byte_tokenizer())
    backend = LocalBackend(parse_spec(f"local:{tmp_path / 'ckpt'}?attention=dsa"))
    backend.load()
    runtime = backend.model.dsa_runtime
    assert (runtime.mode, runtime.topk, runtime.enabled) == ("dsa", 6, True)
    runtime.recorded = {}
    done = asyncio.run(backend.generate(Request(messages=(("user", "hi " * 10),),
                                                max_tokens=4, temperature=0.0)))
    assert done.error is None
    assert runtime.recorded[0][0].shape[-1] == 6
    window = LocalBackend(parse_spec(f"local:{tmp_path / 'ckpt'}?attention=window&topk=4"))
    window.load()
    assert (window.model.dsa_runtime.mode, window.model.dsa_runtime.topk) == ("window", 4)


@needs_v32
def test_export_refuses_what_deepseek_v32_cannot_hold(tmp_path):
    from dsparity.errors import DsparityError
    from dsparity.model.export import export_v32

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DsparityError, match="not an empty folder"):
        export_v32(_converted(), tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    with pytest.raises(DsparityError, match="query latent"):
        export_v32(_converted(model_overrides={"q_lora_rank": None}), tmp_path / "a")
    with pytest.raises(DsparityError, match="rope_freqs"):
        export_v32(_converted(rope_freqs="theta"), tmp_path / "b")
    with pytest.raises(DsparityError, match="DeepseekV3"):
        export_v32(convert_to_dsa(tiny_model("llama"), DSAConfig(**SMALL)), tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


@pytest.mark.skipif(has_deepseek_v32(), reason="this transformers has DeepseekV32")
def test_export_without_deepseek_v32_in_transformers_says_so(tmp_path):
    from dsparity.errors import DsparityError
    from dsparity.model.export import export_v32

    with pytest.raises(DsparityError, match="has no DeepseekV32 model"):
        export_v32(_converted(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_without_query_latent_converts_with_hidden_state_queries():
    ids = _ids(1, 24, 10)
    with torch.no_grad():
        ref = tiny_deepseek_v3(0, q_lora_rank=None)(ids).logits
        model = _converted(model_overrides={"q_lora_rank": None}, index_topk=24,
                           dense_when_short=False)
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=0)
    assert model.model.layers[0].self_attn.indexer.wq_b.in_features == 64


# ---------------------------------------------------------------- warm-up


def test_warmup_lowers_the_indexer_kl():
    from dsparity.model import WarmupConfig, warm_up

    model = _converted(index_topk=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = WarmupConfig(lengths=(256,), train_sequences=2, heldout_sequences=1, steps=40, rows_per_step=32,
                       rows_per_sequence=64, eval_every=1000, lr=1e-2, sparse_sequences=0, sparse_steps=0)
    report = warm_up(model, byte_tokenizer(), cfg, progress=False)
    print(f"KL {report.start.kl:.3f} -> {report.final.kl:.3f}, recall {report.start.recall:.3f} -> "
          f"{report.final.recall:.3f}")
    assert report.final.kl < 0.8 * report.start.kl
    assert report.final.recall > report.start.recall
    for k, v in model.state_dict().items():  # the backbone is frozen; the indexers trained
        if ".indexer." in k:
            assert not torch.equal(v, before[k]), k
        else:
            assert torch.equal(v, before[k]), k
    # the query latent is read without gradient: nothing reached the backbone's projections
    assert all(layer.self_attn.q_a_proj.weight.grad is None for layer in model.model.layers)


# ---------------------------------------------------------------- FP8 + Hadamard


def test_hadamard_alone_leaves_fp32_scores_unchanged():
    """dsa.md §8.3: the rotation is orthogonal, so it changes nothing without FP8."""
    model = _converted(index_topk=6, dense_when_short=False)
    ids = _ids(1, 40, 11)
    model.dsa_runtime.recorded = {}
    with torch.no_grad():
        plain = model(ids).logits
        set_dsa(model, index_hadamard=True)
        rotated = model(ids).logits
    torch.testing.assert_close(rotated, plain, atol=1e-5, rtol=0)
    recorded = model.dsa_runtime.recorded
    assert all(torch.equal(recorded[layer][0], recorded[layer][1]) for layer in recorded)


def test_fp8_e4m3_follows_act_quant():
    from dsparity.model.fp8 import FP8_MAX, fp8_e4m3, hadamard

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 256, generator=g) * torch.tensor([0.01] * 128 + [50.0] * 128)
    y = fp8_e4m3(x)
    for blk in range(2):  # one power-of-two scale per 128 values
        xb, yb = x[:, blk * 128:(blk + 1) * 128], y[:, blk * 128:(blk + 1) * 128]
        scale = torch.exp2(torch.ceil(torch.log2(xb.abs().amax(-1, keepdim=True) / FP8_MAX)))
        codes = yb / scale
        assert torch.equal(codes.to(torch.float8_e4m3fn).float(), codes)  # representable
        assert codes.abs().max() <= FP8_MAX
        assert ((yb - xb).abs() <= scale * 16).all()  # e4m3: 3 mantissa bits
    h = hadamard(torch.eye(8, dtype=torch.float64))
    torch.testing.assert_close(h @ h.T, torch.eye(8, dtype=torch.float64))


def test_fp8_selection_overlaps_fp32_selection():
    from dsparity.model.fp8 import topk_overlap

    model = _converted(index_topk=8, dense_when_short=False)
    ids = _ids(2, 64, 12)

    def picks(**fmt):
        set_dsa(model, **fmt)
        model.dsa_runtime.recorded = {}
        with torch.no_grad():
            model(ids)
        return torch.stack([v[0] for v in model.dsa_runtime.recorded.values()])[..., 8:, :]

    exact = picks(index_fp8=False, index_hadamard=False)
    fp8 = picks(index_fp8=True, index_hadamard=False)
    fp8_h = picks(index_fp8=True, index_hadamard=True)
    a, b = topk_overlap(fp8, exact), topk_overlap(fp8_h, exact)
    print(f"top-k overlap with fp32: FP8 {a:.3f}, FP8 + Hadamard {b:.3f}")
    assert not torch.equal(fp8, exact)  # FP8 changes something: the measurement is not vacuous
    assert 0.8 < a < 1.0 and 0.8 < b <= 1.0


# ---------------------------------------------------------------- `dsparity convert`


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    import sys

    from dsparity.cli import main

    monkeypatch.setattr(sys, "argv", ["dsparity", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


@needs_v32
def test_convert_command_writes_a_deepseek_v32_checkpoint(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    src = save_tiny_deepseek_v3(tmp_path / "v3")
    out = tmp_path / "v32"
    code, stdout, stderr = _main(monkeypatch, capsys, "convert", "--model", str(src), "--out", str(out),
                                 "--topk", "8", "--warmup-steps", "3", "--seq-len", "64",
                                 "--train-sequences", "1", "--heldout-sequences", "1", "--no-progress")
    assert code == 0, stderr
    assert "wrote" in stdout and "indexer KL" in stderr
    model = AutoModelForCausalLM.from_pretrained(out, experts_implementation="eager")
    assert type(model).__name__ == "DeepseekV32ForCausalLM"
    assert (model.config.index_topk, model.config.index_n_heads, model.config.index_head_dim) == (8, 2, 16)
    meta = json.loads((out / "dsparity.json").read_text())
    assert meta["warmup_report"]["final"]["kl"] < meta["warmup_report"]["start"]["kl"]
    assert (out / "tokenizer.json").exists()


@needs_v32
def test_convert_command_rejects_bad_input_in_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                          capsys, tiny_model_dir):
    src = save_tiny_deepseek_v3(tmp_path / "v3")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = [
        (["--model", str(tiny_model_dir), "--out", str(tmp_path / "a")], "model_type"),
        (["--model", str(src), "--out", str(full)], "not an empty folder"),
        (["--model", str(src), "--out", str(tmp_path / "b"), "--topk", "0"], "--topk"),
        (["--model", str(src), "--out", str(tmp_path / "c"), "--topk", "64", "--seq-len", "64"],
         "--seq-len"),
        (["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "d")], "missing"),
    ]
    for args, needle in cases:
        code, stdout, stderr = _main(monkeypatch, capsys, "convert", *args)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], (args, stderr)
        assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "v3"]
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_fp8_warmup_trains_through_the_rounding():
    """FP8 has no gradient of its own: the straight-through estimator lets the warm-up run with
    the deployed formats on."""
    from dsparity.model import WarmupConfig, warm_up

    model = _converted(index_topk=16, index_fp8=True, index_hadamard=True)
    cfg = WarmupConfig(lengths=(256,), train_sequences=1, heldout_sequences=1, steps=15, rows_per_step=32,
                       rows_per_sequence=64, eval_every=1000, lr=1e-2, sparse_sequences=0, sparse_steps=0)
    report = warm_up(model, byte_tokenizer(), cfg, progress=False)
    assert report.final.kl < report.start.kl
