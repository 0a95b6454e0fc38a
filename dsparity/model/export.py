"""Write a DSA-converted DeepseekV3 model as a transformers DeepseekV32 checkpoint.

The result is what DeepSeek's V3.1-Terminus -> V3.2-Exp step produced, in miniature: the same
backbone weights, plus one lightning indexer per layer, under transformers' DeepseekV32 names
(``model.layers.{i}.self_attn.indexer.{wq_b, wk, k_norm, weights_proj}``) and a DeepseekV32Config
(``index_topk``, ``index_n_heads``, ``index_head_dim``), so that
``AutoModelForCausalLM.from_pretrained(folder)`` returns a ``DeepseekV32ForCausalLM``.

DeepseekV32 fixes three things a DeepseekV3 config may leave open, checked or mapped here:
- it always has a query latent (q_lora_rank): the indexer reads it, so models without one fail;
- MLA's rotary dims are always interleaved (``rope_interleave``): a DeepseekV3 model with NeoX
  MLA rotary has the rotated output rows of ``q_b_proj`` and ``kv_a_proj_with_mqa`` permuted so
  the interleaved rotation computes the same scores;
- its indexer rotates with MLA's frequency table on qk_rope_head_dim dims (NeoX halves), which is
  what `mla.MLAIndexer` does with ``rope_freqs="model"``.
The folder is written under a temporary name and renamed at the end: a failure leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from dsparity.errors import DsparityError

SIDECAR = "dsparity.json"  # provenance: base model, DSA config, warm-up report


def v32_classes(source: str):
    try:
        from transformers import DeepseekV32Config, DeepseekV32ForCausalLM
    except ImportError as exc:
        import transformers

        raise DsparityError(source, "transformers", f"transformers {transformers.__version__} has no "
                            "DeepseekV32 model", "upgrade transformers to a release that ships "
                            "transformers.models.deepseek_v32") from exc
    return DeepseekV32Config, DeepseekV32ForCausalLM


def check_exportable(model, source: str = "model") -> None:
    """Raise DsparityError unless `model` is a DSA-converted DeepseekV3 that DeepseekV32 can hold."""
    cfg = model.config
    if getattr(cfg, "model_type", "") != "deepseek_v3" or not getattr(model, "dsa_owns_indexers", False):
        raise DsparityError(source, "model_type", f"{getattr(cfg, 'model_type', '?')!r} is not a "
                            "DSA-converted DeepseekV3 model", "convert a DeepseekV3 model first")
    if not cfg.q_lora_rank:
        raise DsparityError(source, "q_lora_rank", "the model has no query latent, and DeepseekV32's "
                            "indexer reads one", "convert a DeepseekV3 model with q_lora_rank set")
    dsa = model.dsa_runtime.config
    if dsa.rope_freqs != "model":
        raise DsparityError(source, "rope_freqs", f"the indexer rotates with {dsa.rope_freqs!r} "
                            "frequencies; DeepseekV32 uses MLA's table", "convert with rope_freqs='model'")


def v32_config(model, config_cls):
    """DeepseekV32Config from the DeepseekV3 config plus the DSA runtime's indexer shape."""
    base = model.config.to_dict()
    known = set(getattr(config_cls, "__dataclass_fields__", {})) or set(config_cls().to_dict())
    fields = {k: v for k, v in base.items() if k in known and k not in ("model_type", "architectures",
                                                                       "head_dim", "layer_types",
                                                                       "mlp_layer_types")}
    if "num_experts" in known:  # transformers 5.11-5.x: the experts read num_experts
        fields["num_experts"] = base["n_routed_experts"]
    dsa = model.dsa_runtime.config
    fields.update(index_topk=dsa.index_topk, index_n_heads=dsa.index_n_heads,
                  index_head_dim=dsa.index_head_dim)
    cfg = config_cls(**fields)
    cfg.architectures = ["DeepseekV32ForCausalLM"]
    return cfg


def _interleave_rows(weight: torch.Tensor, heads: int, block: int, rope: int) -> torch.Tensor:
    """Permute the last `rope` rows of each `block`-row group so that the interleaved rotation of
    DeepseekV32 (de-interleave, then rotate halves) equals the NeoX rotation of these rows."""
    # interleaved position 2i holds NeoX row i, 2i + 1 holds NeoX row i + rope/2
    order = torch.stack([torch.arange(rope // 2), torch.arange(rope // 2) + rope // 2], 1).flatten()
    w = weight.view(heads, block, *weight.shape[1:]).clone()
    w[:, block - rope:] = w[:, block - rope:][:, order]
    return w.view_as(weight)


def v32_state_dict(model) -> dict[str, torch.Tensor]:
    """The converted model's weights under DeepseekV32 names and MLA rotary layout."""
    cfg = model.config
    state = {k: v for k, v in model.state_dict().items()}
    if getattr(cfg, "rope_interleave", True):
        return state
    h, dn, dr, r = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.self_attn."
        state[p + "q_b_proj.weight"] = _interleave_rows(state[p + "q_b_proj.weight"], h, dn + dr, dr)
        for name in ("kv_a_proj_with_mqa.weight", "kv_a_proj_with_mqa.bias"):
            if p + name in state:
                state[p + name] = _interleave_rows(state[p + name], 1, r + dr, dr)
    return state


def export_v32(model, out: str | Path, *, tokenizer=None, provenance: dict | None = None) -> Path:
    """Write `model` (DSA-converted DeepseekV3) to `out` as a DeepseekV32 checkpoint; returns out.

    `out` must not exist or be an empty folder. Writes config.json, the safetensors weights,
    generation_config.json, the tokenizer (when given) and ``dsparity.json`` (provenance)."""
    out = Path(out)
    source = f"output folder {out}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DsparityError(source, "path", "exists and is not an empty folder",
                            "choose a new folder or empty this one")
    check_exportable(model, source)
    config_cls, model_cls = v32_classes(source)
    cfg = v32_config(model, config_cls)
    cfg.dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        v32 = model_cls(cfg)
    v32.load_state_dict(v32_state_dict(model), strict=True, assign=True)
    v32.generation_config = model.generation_config
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        v32.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {"format": "dsparity-v32/1", "dsa_config": model.dsa_runtime.config.to_dict(),
                **(provenance or {})}
        (tmp / SIDECAR).write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
