"""Turn a dense transformers Llama / Qwen2 / Qwen3 / Mistral model into a DSA model, in place.

(DeepseekV3 / MLA models convert through `mla.py`: the indexer reads MLA's query latent and the
attention runs over the compressed KV in MQA mode; `convert_to_dsa` dispatches there.)

Every attention module gets a `LightningIndexer` (submodule ``dsa_indexer``) and a forward
pre-hook. The hook sees the attention input x (there is no query latent in these models, so x is
the indexer's query source too, dsa.md §8.1), projects this step's indexer keys, appends them to
an indexer key cache kept on the transformers KV-cache object, and leaves everything for the
registered attention function (`attention.dsa_attention`), which scores, selects and attends.

Why the key cache: decode must select exactly what a full forward selects for the same position
(dsa.md §3.7, §8.2.1). Keys are stored post-LayerNorm and post-RoPE, like the reference demo, so
a decode step scores against the very vectors prefill computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch

from dsparity.model.attention import (
    DSA_ATTENTION,
    DSALayer,
    DSARuntime,
    PendingIndexerInputs,
    register,
)
from dsparity.model.config import DSAConfig
from dsparity.model.indexer import LightningIndexer

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
_CACHE_ATTR = "dsa_index_keys"  # {layer_idx: [B, T, d_I]} stored on the KV-cache object


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of each decoder layer, in layer order."""
    return [layer.self_attn for layer in model.model.layers]


def dsa_layers(model: torch.nn.Module) -> Iterator[DSALayer]:
    for attn in attention_modules(model):
        yield attn.dsa_layer


def model_rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _llama_family_config(config: DSAConfig, model_config) -> DSAConfig:
    """rope_dim unset = the family's default: an indexer head as wide as m of the model's heads
    (m = 1 .. KV groups) rotates every dim, each head-sized block as the model rotates a head, so
    it can start as m KV groups of them (`indexer_init.py`); V3.2's half otherwise."""
    head_dim = getattr(model_config, "head_dim", None) or (
        model_config.hidden_size // model_config.num_attention_heads)
    m, rest = divmod(config.index_head_dim, head_dim)
    groups = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    if config.rope_dim is None and config.rope_head_dim is None and not rest and 1 <= m <= groups:
        return replace(config, rope_dim=config.index_head_dim,
                       rope_head_dim=head_dim if m > 1 else None)
    return config


def convert_to_dsa(model: torch.nn.Module, config: DSAConfig | None = None, *,
                   seed: int = 0) -> torch.nn.Module:
    """Attach indexers (random init, fp32) and switch attention to ``dsparity_dsa``. In place.

    DeepseekV3 (MLA) models get DeepseekV32's indexer and attention over the latent (`mla.py`)."""
    from dsparity.model import mla

    config = config or DSAConfig()
    model_type = getattr(model.config, "model_type", "?")
    if getattr(model, "dsa_runtime", None) is not None:
        raise ValueError("model is already converted to DSA; use set_dsa() to change it")
    if model_type == "deepseek_v3":
        return mla.convert_mla(model, config, seed=seed)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"convert_to_dsa supports {', '.join((*SUPPORTED_MODEL_TYPES, 'deepseek_v3'))} "
                         f"models; got model_type={model_type!r} (DeepseekV32 has its own indexer: "
                         f"use dsparity.model.use_dsparity_attention)")
    if config.rope_freqs == "model":
        raise ValueError("rope_freqs='model' (the model's own rotary table) is for MLA models; "
                         "Llama-family indexers rotate with rope_freqs='theta'")
    register()
    config = _llama_family_config(config, model.config)
    runtime = DSARuntime(config)
    theta = config.rope_theta or model_rope_theta(model.config)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # reproducible init without touching global RNG
        torch.manual_seed(seed)
        for layer_idx, attn in enumerate(attention_modules(model)):
            indexer = LightningIndexer(model.config.hidden_size, config, theta).to(device)
            attn.dsa_indexer = indexer
            attn.dsa_layer = DSALayer(layer_idx, indexer, runtime)
            attn.dsa_layer.hook = attn.register_forward_pre_hook(_indexer_pre_hook,
                                                                 with_kwargs=True)
    model.dsa_runtime = runtime
    model.dsa_base_attn_implementation = model.config._attn_implementation
    model.set_attn_implementation(DSA_ATTENTION)
    return model


def remove_dsa(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `convert_to_dsa` (or `use_dsparity_attention`): drop indexers and hooks, restore the
    original attention."""
    from dsparity.model import mla

    if getattr(model.config, "model_type", "") in mla.MLA_MODEL_TYPES:
        return mla.remove_mla(model)
    for attn in attention_modules(model):
        attn.dsa_layer.hook.remove()
        del attn.dsa_indexer
        del attn.dsa_layer
    model.set_attn_implementation(model.dsa_base_attn_implementation)
    model.dsa_runtime = None
    return model


def set_dsa(model: torch.nn.Module, *, enabled: bool | None = None, topk: int | None = None,
            index_fp8: bool | None = None, index_hadamard: bool | None = None) -> DSAConfig:
    """Switch sparse selection on/off, change index_topk, or the indexer's number formats (FP8
    e4m3 q/k, Hadamard rotation: `fp8.py`) on a converted model (no reload)."""
    runtime: DSARuntime = model.dsa_runtime
    if enabled is not None:
        runtime.enabled = enabled
    if topk is not None:
        runtime.config = replace(runtime.config, index_topk=topk)
    formats = {k: v for k, v in (("index_fp8", index_fp8), ("index_hadamard", index_hadamard))
               if v is not None}
    if formats:
        runtime.config = replace(runtime.config, **formats)  # validates (Hadamard: d_I = 2^n)
        for layer in dsa_layers(model):
            layer.indexer.fp8 = runtime.config.index_fp8
            layer.indexer.hadamard = runtime.config.index_hadamard
    return runtime.config


def use_dsparity_attention(model: torch.nn.Module, *,
                           deterministic_indexer: bool = True) -> torch.nn.Module:
    """Run a model with its own indexer (transformers' DeepseekV32ForCausalLM) through dsparity.

    With `deterministic_indexer` (the default) the attention runs in MLA's latent layout
    (`mla.use_latent_attention`): the model's indexer weights score and select through
    `dsparity.kernels` (fused indexer + top-k, deterministic ties, -1 padding), the KV cache holds
    the compressed latent and the indexer keys, both appended in place, and one selected latent
    row serves every head. transformers' own selection breaks exact ties (common: ReLU zeros) with
    ``torch.topk``, whose order depends on the row length, so its decode and full forward pick
    different keys; ours does not. The model gets a DSA runtime (``model.dsa_runtime``) like a
    converted one. Without it, transformers' indexer selects and passes ``indices`` to
    ``dsparity_dsa``, which attends over K/V expanded per head.
    """
    from dsparity.model import mla

    if deterministic_indexer:
        return mla.use_latent_attention(model)
    model.set_attn_implementation(_register_indices_attention())
    return model


DSA_INDICES_ATTENTION = "dsparity_dsa_indices"


def _register_indices_attention() -> str:
    """``dsparity_dsa`` with transformers' additive (float) mask: DeepseekV32's own indexer adds
    the mask to its scores in some 5.x releases (5.11: ``index_scores + attention_mask``), which a
    boolean mask would turn into +1/+0 instead of -inf/0. `attention.dsa_attention` reads both."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from dsparity.model.attention import dsa_attention

    AttentionInterface.register(DSA_INDICES_ATTENTION, dsa_attention)
    AttentionMaskInterface.register(DSA_INDICES_ATTENTION, eager_mask)
    return DSA_INDICES_ATTENTION


def _update_index_cache(cache, layer_idx: int, new_keys: torch.Tensor, past: int) -> torch.Tensor:
    """Append this step's keys; the cache must hold exactly `past` keys (the KV cache's length)."""
    store: dict[int, torch.Tensor] = getattr(cache, _CACHE_ATTR, None)
    if store is None:
        store = {}
        setattr(cache, _CACHE_ATTR, store)
    old = store.get(layer_idx)
    held = 0 if old is None else old.shape[1]
    if held < past:
        raise RuntimeError(
            f"DSA layer {layer_idx}: the KV cache holds {past} tokens but the indexer key cache "
            f"only {held}; the cache was filled before the model was converted to DSA")
    # held > past after a cache crop (e.g. assisted decoding): drop the rejected tail.
    keys = new_keys if old is None or past == 0 else torch.cat([old[:, :past], new_keys], dim=1)
    store[layer_idx] = keys
    return keys


def _indexer_pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict):
    layer: DSALayer = module.dsa_layer
    x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # [B, S, hidden]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    b, s, _ = x.shape
    past = cache.get_seq_length(layer.layer_idx) if cache is not None else 0
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(past, past + s, device=x.device).unsqueeze(0)
    positions = positions.expand(b, s)
    with torch.no_grad():  # the indexer is trained on captured inputs (warmup.py), never here
        new_keys = layer.indexer.keys(x, positions)
        keys = new_keys if cache is None else _update_index_cache(cache, layer.layer_idx,
                                                                  new_keys, past)
    layer.pending = PendingIndexerInputs(x.detach(), positions, keys)
    return None
