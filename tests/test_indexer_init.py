"""Indexers that start as the model's own heads (indexer_init.py) on tiny models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_dsa_warmup import TINY_DSA, TINY_RECIPE, peaky_tiny_model
from tiny_models import byte_tokenizer, tiny_model
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from dsparity.model import convert_to_dsa, warm_up
from dsparity.model.config import DSAConfig
from dsparity.model.convert import dsa_layers
from dsparity.model.indexer_init import _copy_groups, attention_init_blocker, default_dsa_config

START_ONLY = replace(TINY_RECIPE, steps=0, sparse_steps=0)


def test_a_llama_shaped_indexer_rotates_every_dim_unless_told():
    model = convert_to_dsa(tiny_model("llama"), TINY_DSA)
    assert model.dsa_runtime.config.rotary_dim == 16  # head_dim 16: all of it, like the model
    other = convert_to_dsa(tiny_model("llama"), replace(TINY_DSA, index_head_dim=8))
    assert other.dsa_runtime.config.rotary_dim == 4  # not the model's shape: V3.2's half
    told = convert_to_dsa(tiny_model("llama"), replace(TINY_DSA, rope_dim=8))
    assert told.dsa_runtime.config.rotary_dim == 8
    wide = convert_to_dsa(tiny_model("llama"), replace(TINY_DSA, index_head_dim=32))
    config = wide.dsa_runtime.config  # two KV groups' heads side by side, each rotated as a head
    assert (config.rotary_dim, config.rope_block) == (32, 16)


@pytest.mark.parametrize("groups", [[0], [1], [0, 1]])
def test_indexer_queries_and_keys_copied_from_groups_are_the_models_rotated_ones(groups):
    """Same projection, same RoPE pairs and frequencies: q^I_j is the model's query of head h_j in
    its group's block (zeros elsewhere), and the key's blocks are the groups' rotated keys up to
    LayerNorm; so every indexer logit is one model head's logit, up to that per-key scaling."""
    d_i = 16 * len(groups)
    model = convert_to_dsa(peaky_tiny_model(), replace(TINY_DSA, index_head_dim=d_i))
    attn = model.model.layers[1].self_attn
    indexer = next(iter(dsa_layers(model))).indexer
    x = torch.randn(1, 40, 64)
    pos = torch.arange(40)[None] + 300  # far positions: a wrong frequency table shows
    with torch.no_grad():
        _copy_groups(indexer, attn, groups, x[0], model.config)
        q_idx, _ = indexer.queries(x, pos)  # [1, S, H_I, d_I]
        k_idx = indexer.keys(x, pos)  # [1, S, d_I]
        q = attn.q_proj(x).view(1, 40, 4, 16).transpose(1, 2)
        k = attn.k_proj(x).view(1, 40, 2, 16).transpose(1, 2)
        cos, sin = model.model.rotary_emb(x, pos)
        q_model, k_model = apply_rotary_pos_emb(q, k, cos, sin)  # [1, heads, S, 16]
    heads = [g * 2 + i for g in groups for i in range(2)]  # 4 heads over 2 KV groups: 2g, 2g+1
    for j in range(indexer.n_heads):
        head = heads[j % len(heads)]
        block = groups.index(head // 2)
        q_j = q_idx[0, :, j].view(40, len(groups), 16)
        torch.testing.assert_close(q_j[:, block], q_model[0, head], atol=1e-5, rtol=1e-5)
        others = [b for b in range(len(groups)) if b != block]
        assert not q_j[:, others].any()
        logits = torch.einsum("sd,td->st", q_j[:, block], k_idx[0].view(40, len(groups), 16)[:, block])
        model_logits = q_model[0, head] @ k_model[0, head // 2].T
        # LayerNorm centres and scales each key: per-key affine, so ranks per key column agree
        # in sign structure only; the correlation over all pairs stays near 1.
        corr = torch.corrcoef(torch.stack([logits.flatten(), model_logits.flatten()]))[0, 1]
        assert corr > 0.9


def test_starting_from_the_heads_selects_what_dense_attention_reads():
    tok = byte_tokenizer()
    # One KV group: the 4 indexer heads are all 4 of the model's heads, so the start differs from
    # the model's own ranking only by ReLU and LayerNorm.
    one_group = peaky_tiny_model(num_key_value_heads=1)
    heads = warm_up(convert_to_dsa(one_group, TINY_DSA), tok, START_ONLY, progress=False)
    assert heads.init["method"] == "attention" and heads.init["groups"] == [[0], [0]]
    start = heads.init["metrics"]
    random = heads.start  # the same held-out rows before the copy
    assert start["recall"] >= random.recall + 0.1  # 0.26 against 0.13 here
    assert start["recall"] >= 0.6 * start["oracle"]  # oracle 0.39: ReLU sums are not softmax means
    assert [h["stage"] for h in heads.history] == ["start", "attention init"]
    plain = warm_up(convert_to_dsa(peaky_tiny_model(), TINY_DSA), tok,
                    replace(START_ONLY, init="random"), progress=False)
    assert plain.init == {"method": "random", "reason": "WarmupConfig.init='random'"}
    assert plain.final.recall == pytest.approx(plain.start.recall)


@pytest.mark.parametrize(("arch", "dsa", "why"), [
    ("qwen2", TINY_DSA, "bias"),
    ("llama", replace(TINY_DSA, index_head_dim=8), "not the model's"),
    ("llama", replace(TINY_DSA, rope_dim=8), "not the model's"),
])
def test_models_whose_heads_cannot_seed_the_indexer_start_random_and_say_why(arch, dsa, why):
    model = convert_to_dsa(tiny_model(arch), dsa)
    assert why in attention_init_blocker(model)
    report = warm_up(model, byte_tokenizer(), START_ONLY, progress=False)
    assert report.init["method"] == "random" and why in report.init["reason"]


def test_unknown_start_method_is_refused():
    with pytest.raises(ValueError, match="init"):
        replace(TINY_RECIPE, init="zeros")


def test_the_default_indexer_spans_every_kv_group_where_the_heads_can_seed_it():
    """Llama: all KV groups side by side, every head a query head, so the start sums every head;
    Qwen2 (q/k biases): DSAConfig's own 4 x 64, as a random start needs no more."""
    llama = tiny_model("llama")  # 4 heads over 2 KV groups of 16 dims
    wide = default_dsa_config(llama, topk=12)
    assert (wide.index_n_heads, wide.index_head_dim, wide.index_topk) == (4, 32, 12)
    model = convert_to_dsa(llama, wide)
    assert attention_init_blocker(model) is None
    assert (model.dsa_runtime.config.rotary_dim, model.dsa_runtime.config.rope_block) == (32, 16)
    report = warm_up(model, byte_tokenizer(), START_ONLY, progress=False)
    assert report.init["groups"] == [[0, 1], [0, 1]]
    assert default_dsa_config(tiny_model("qwen2"), topk=12) == DSAConfig(index_topk=12)
