"""DSA on multi-head latent attention (MLA): DeepseekV3 -> DeepseekV32, the reference case in miniature.

DeepSeek-V3.2-Exp is V3.1-Terminus (DeepseekV3: MLA + MoE) plus a lightning indexer per layer,
with the main attention run in MLA's MQA ("absorbed") mode so that one selected row serves every
head (TR §1, dsa.md §4.2):

    q-bar_{t,i} = [ (W^UK_i)^T q^C_{t,i} ; q^R_{t,i} ]     (r + d_R per head; r = kv_lora_rank)
    K_s        = [ c^KV_s ; k^R_s ]                      (one row per token, shared by all heads)
    o_{t,i}    = W^UV_i  sum_{s in S_t} softmax_s(tau q-bar_{t,i} . K_s) c^KV_s

so the KV cache holds the compressed latent (r + d_R values per token) and attention over the
selected set reads r + d_R values per selected token for all heads at once. The indexer reads the
query latent c^Q (its queries, `wq_b`) and the attention input x (its key `wk` -> LayerNorm, and
head weights), with NeoX RoPE on its first qk_rope_head_dim dims using MLA's own frequency table
(YaRN included) [MOD Indexer; transformers' DeepseekV32Indexer].

One forward (`mla_dsa_forward`) replaces the attention module's own for both callers:
- `convert_mla`: a DeepseekV3 model gets an `MLAIndexer` per layer under DeepseekV32's names
  (``self_attn.indexer.{wq_b, wk, k_norm, weights_proj}``), so its state dict is a DeepseekV32
  state dict (`export.py` writes it as one);
- `use_latent_attention`: a DeepseekV32 model (transformers' own class, e.g. a checkpoint written
  by `dsparity convert`) keeps its indexer weights; an `MLAIndexer` view shares them.
Everything the DSA runtime does (warm-up capture, recorded selections, sparsity controls, sparse
training) goes through `attention.dsa_attention` on the absorbed tensors, so it holds here too.

The cache (`append_latent`): each layer's transformers cache layer holds the latent rows as its
``keys`` [B, 1, T, r + d_R] and the indexer keys as its ``values`` [B, 1, T, d_I], written in
place into buffers with spare capacity (no per-step concatenation). Anything transformers does to
a cache layer (beam-search reordering, crop, batch repeat/select, offload) acts on those two
tensors like on any KV pair; when it replaced them, the next append adopts the new tensors.
"""

from __future__ import annotations

import sys
from types import MethodType

import torch
from torch import nn

from dsparity.model.attention import (
    DSA_ATTENTION,
    DSALayer,
    DSARuntime,
    PendingIndexerInputs,
    dense_attention,
    dsa_attention,
    mask_to_bool,
    register,
)
from dsparity.model.config import DSAConfig
from dsparity.model.fp8 import deployed_format
from dsparity.model.indexer import apply_rope, rope_inv_freq

MLA_MODEL_TYPES = ("deepseek_v3", "deepseek_v32")
_BUFFERS = "_dsparity_latent_buffers"  # attribute on a transformers cache layer


# ---------------------------------------------------------------------------------- the indexer


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class MLAIndexer(nn.Module):
    """Lightning indexer of one MLA layer, with DeepseekV32's parameter names.

    q^I from the query latent c^Q = q_a_layernorm(q_a_proj(x)) of the layer's own attention (held
    by reference, never trained or saved here), k^I = LayerNorm(wk x), w = weights_proj x (dsa.md
    §3.1). Same public surface as `LightningIndexer` (`keys`, `queries`, `n_heads`, `head_dim`,
    `wk`), so the warm-up trains it unchanged. Computes in its weights' dtype (fp32 after
    conversion).
    """

    def __init__(self, hidden_size: int, q_input_size: int, config: DSAConfig,
                 inv_freq: torch.Tensor, rope_scaling: float = 1.0):
        super().__init__()
        h, d = config.index_n_heads, config.index_head_dim
        self.wq_b = nn.Linear(q_input_size, h * d, bias=False)
        self.wk = nn.Linear(hidden_size, d, bias=False)
        self.k_norm = nn.LayerNorm(d, eps=1e-6)  # LayerNorm with bias, eps 1e-6 [MOD]
        self.weights_proj = nn.Linear(hidden_size, h, bias=False)
        self._setup(config, inv_freq, rope_scaling)

    def _setup(self, config: DSAConfig, inv_freq: torch.Tensor, rope_scaling: float) -> None:
        self.n_heads, self.head_dim = config.index_n_heads, config.index_head_dim
        self.rotary_dim = 2 * inv_freq.numel()
        self.rope_freqs = config.rope_freqs or "model"
        self.rope_layout = config.rope_layout
        self.rope_scaling = float(rope_scaling)
        self.fp8, self.hadamard = config.index_fp8, config.index_hadamard
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        object.__setattr__(self, "_latent", None)  # (q_a_proj, q_a_layernorm): not submodules

    @classmethod
    def sharing(cls, indexer: nn.Module, config: DSAConfig, inv_freq: torch.Tensor,
                rope_scaling: float) -> MLAIndexer:
        """A view of transformers' DeepseekV32Indexer: the same parameter tensors, our scoring."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        for name in ("wq_b", "wk", "k_norm", "weights_proj"):
            setattr(self, name, getattr(indexer, name))
        self._setup(config, inv_freq, rope_scaling)
        return self

    def attach(self, attn: nn.Module) -> MLAIndexer:
        """Read the query latent from `attn` (None when the model has no q-LoRA: then x)."""
        latent = (attn.q_a_proj, attn.q_a_layernorm) if getattr(attn, "q_a_proj", None) else None
        object.__setattr__(self, "_latent", latent)
        return self

    def query_latent(self, x: torch.Tensor) -> torch.Tensor:
        """c^Q of x, detached: an input of the indexer, never trained through it (TR §2.1-2.2)."""
        if self._latent is None:
            return x.detach()
        proj, norm = self._latent
        with torch.no_grad():
            return norm(proj(x.to(proj.weight.dtype)))

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate the first `rotary_dim` dims of x [B, S, (H,) d] at absolute `positions` [B, S]."""
        if self.rope_freqs != "model":
            return apply_rope(x, positions, self.inv_freq.double(), self.rope_layout)
        # transformers' rotary embedding and DeepseekV32Indexer, operation for operation: fp32
        # angles, cos/sin times the rope type's attention scaling, cast to x's dtype, NeoX halves.
        freqs = positions.float()[..., None] * self.inv_freq.float().to(x.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos = (emb.cos() * self.rope_scaling).to(x.dtype)
        sin = (emb.sin() * self.rope_scaling).to(x.dtype)
        if x.dim() == 4:
            cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        r = self.rotary_dim
        rot = x[..., :r]
        rot = (rot * cos) + (_rotate_half(rot) * sin)
        return torch.cat([rot, x[..., r:]], dim=-1)

    def keys(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, S, hidden] -> rotated keys [B, S, d_I] (what the indexer key cache stores)."""
        k = self.k_norm(self.wk(x.to(self.wk.weight.dtype)))
        return deployed_format(self._rope(k, positions), fp8=self.fp8, rotate=self.hadamard)

    def queries(self, x: torch.Tensor, positions: torch.Tensor,
                q_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (q [B, S, H_I, d_I] rotated, w [B, S, H_I]); q_input: c^Q when already computed."""
        b, s, _ = x.shape
        src = self.query_latent(x) if q_input is None else q_input
        q = self.wq_b(src.to(self.wq_b.weight.dtype)).view(b, s, self.n_heads, self.head_dim)
        q = deployed_format(self._rope(q, positions), fp8=self.fp8, rotate=self.hadamard)
        w = self.weights_proj(x.to(self.weights_proj.weight.dtype))
        return q, w


def rotary_table(model, config: DSAConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq [d_R / 2], attention scaling) of the indexer's RoPE for an MLA model.

    "model": MLA's own table (`model.model.rotary_emb`, rope scaling such as YaRN applied), which
    is what DeepseekV32's indexer rotates with; "theta": theta^(-2i/d_R) without scaling.
    """
    cfg = model.config
    r = cfg.qk_rope_head_dim
    if config.rope_freqs == "theta":
        params = getattr(cfg, "rope_parameters", None) or {}
        theta = config.rope_theta or float(params.get("rope_theta", getattr(cfg, "rope_theta", 1e4)))
        return rope_inv_freq(r, theta).float(), 1.0
    rotary = model.model.rotary_emb
    inv_freq = rotary.inv_freq.detach().float().cpu()
    if 2 * inv_freq.numel() != r:
        raise ValueError(f"the model's rotary table covers {2 * inv_freq.numel()} dims, "
                         f"qk_rope_head_dim is {r}")
    return inv_freq, float(getattr(rotary, "attention_scaling", 1.0))


def mla_dsa_config(model, config: DSAConfig | None) -> DSAConfig:
    """The DSA config of an MLA model: the indexer rotates MLA's qk_rope_head_dim dims (as
    DeepseekV32 does), with MLA's own frequency table unless `rope_freqs="theta"` asks otherwise."""
    from dataclasses import replace

    config = config or DSAConfig()
    r = model.config.qk_rope_head_dim
    if config.rope_dim not in (None, r):
        raise ValueError(f"an MLA indexer rotates qk_rope_head_dim = {r} dims (as DeepseekV32 "
                         f"does); got rope_dim={config.rope_dim}")
    if r > config.index_head_dim:
        raise ValueError(f"index_head_dim {config.index_head_dim} is smaller than the {r} rotated "
                         f"dims (qk_rope_head_dim)")
    freqs = config.rope_freqs or "model"
    if freqs == "model" and config.rope_layout != "neox":
        raise ValueError("rope_freqs='model' rotates like DeepseekV32's indexer (NeoX halves); "
                         "rope_layout='interleaved' needs rope_freqs='theta'")
    return replace(config, rope_dim=r, rope_freqs=freqs)


# ---------------------------------------------------------------------------------- the cache


def _ours(held: torch.Tensor | None, buf: torch.Tensor | None) -> bool:
    """Is `held` still the prefix view of our buffer (possibly cropped)?"""
    return (held is not None and buf is not None and held.dim() == 4 and held.data_ptr() == buf.data_ptr()
            and held.shape[0] == buf.shape[0] and held.stride() == buf.stride()
            and held.dtype == buf.dtype)


def _grown(held: torch.Tensor | None, n: int, extra: torch.Tensor) -> torch.Tensor:
    """A new buffer [B, 1, capacity, D] holding held's first n rows, with room for `extra` and more."""
    b, _, s, d = extra.shape
    need = n + s
    capacity = need + max(256, need // 4)
    buf = extra.new_empty(b, 1, capacity, d)
    if n:
        buf[:, :, :n].copy_(held[:, :, :n])
    return buf


def _append_in_place(layer, latent: torch.Tensor, index_keys: torch.Tensor):
    """Write this step's rows after the layer's current ones; returns ([B,T,D], [B,T,d_I])."""
    if not layer.is_initialized:
        layer.lazy_initialization(latent, index_keys)
    held_k, held_v = layer.keys, layer.values
    n = held_k.shape[-2] if held_k is not None and held_k.numel() else 0
    bufs = getattr(layer, _BUFFERS, None)
    kbuf, vbuf = bufs if bufs else (None, None)
    s = latent.shape[2]
    if not (_ours(held_k, kbuf) and _ours(held_v, vbuf)) or n + s > kbuf.shape[2] \
            or kbuf.dtype != latent.dtype or vbuf.dtype != index_keys.dtype:
        kbuf, vbuf = _grown(held_k, n, latent), _grown(held_v, n, index_keys)
        setattr(layer, _BUFFERS, (kbuf, vbuf))
    kbuf[:, :, n:n + s].copy_(latent)
    vbuf[:, :, n:n + s].copy_(index_keys)
    layer.keys, layer.values = kbuf[:, :, :n + s], vbuf[:, :, :n + s]
    return layer.keys[:, 0], layer.values[:, 0]


def append_latent(cache, layer_idx: int, latent: torch.Tensor, index_keys: torch.Tensor,
                  cache_position: torch.Tensor | None):
    """Add this step's latent rows [B, S, D] and indexer keys [B, S, d_I] to `cache`.

    Returns all rows so far, ([B, T, D], [B, T, d_I]). Dynamic layers are written in place (see
    the module docstring); other layer kinds (static caches) through their own `update`, which
    writes in place already and hands back the whole preallocated buffer (T = capacity; the
    attention mask marks the unused slots).
    """
    from transformers.cache_utils import DynamicLayer

    lat, ix = latent.unsqueeze(1), index_keys.unsqueeze(1)
    layers = getattr(cache, "layers", None)
    if layers is not None:
        replicate = getattr(cache, "layer_class_to_replicate", None)
        while replicate is not None and len(layers) <= layer_idx:
            layers.append(replicate())
        layer = layers[layer_idx] if layer_idx < len(layers) else None
        if isinstance(layer, DynamicLayer) and not getattr(layer, "is_sliding", False):
            return _append_in_place(layer, lat, ix)
    k, v = cache.update(lat, ix, layer_idx, {"cache_position": cache_position})
    return k[:, 0], v[:, 0]


# ---------------------------------------------------------------------------------- the forward


def _rope_fns(module: nn.Module):
    """transformers' own MLA rotary functions for this module's class (whatever its version)."""
    mod = sys.modules[type(module).__module__]
    interleave = getattr(module.config, "rope_interleave", True)  # DeepseekV32 always interleaves
    return mod.apply_rotary_pos_emb_interleave if interleave else mod.apply_rotary_pos_emb


def _positions(position_ids, cache_position, past: int, b: int, s: int, device) -> torch.Tensor:
    if position_ids is None:
        position_ids = cache_position if cache_position is not None else \
            torch.arange(past, past + s, device=device)
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    return position_ids.expand(b, s)


def _runs_dense(runtime: DSARuntime, s: int, t: int) -> bool:
    """Will this call be plain dense attention (no selection, no capture, no training)?"""
    if runtime.capture is not None or runtime.inspect is not None or runtime.indexer_losses is not None:
        return False
    return not runtime.enabled or (t <= runtime.topk and runtime.config.dense_when_short)


def _mha_mode(module, q_nope, q_rot, latent, valid, scale) -> torch.Tensor:
    """Dense attention in MLA's MHA mode: K/V decompressed per head from the latent (what
    transformers' DeepseekV3 computes, and what DeepSeek's service runs for short prefill, TR §3).
    -> [B, S, H, d_v]."""
    b, t, _ = latent.shape
    h, dn, dv = module.num_heads, module.qk_nope_head_dim, module.v_head_dim
    c, k_rot = latent[..., :module.kv_lora_rank], latent[..., module.kv_lora_rank:]
    kv = module.kv_b_proj(c).view(b, t, h, dn + dv)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    k = torch.cat([k_nope, k_rot.unsqueeze(2).expand(b, t, h, -1)], dim=-1)
    q = torch.cat([q_nope, q_rot], dim=-1)
    # V zero-padded to K's width (transformers does the same for flash attention): with unequal
    # widths torch's SDPA leaves its flash kernel for the math one, which holds [B, H, S, T].
    v = torch.nn.functional.pad(v, (0, max(0, k.shape[-1] - dv)))
    return dense_attention(q, k, v, valid, scale)[..., :dv]


def mla_dsa_forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                    cache=None, past_key_values=None, cache_position=None, position_ids=None,
                    **kwargs):
    """DeepseekV3/V32 attention with the latent cache and DSA in MLA's MQA mode.

    Accepts the keyword spellings of every transformers 5.x release (``cache`` or
    ``past_key_values``; ``cache_position`` where it is still passed)."""
    layer: DSALayer = self.dsa_layer
    runtime = layer.runtime
    cache = cache if cache is not None else past_key_values
    x = hidden_states
    b, s, _ = x.shape
    h, dn, dr, r = self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.kv_lora_rank

    if getattr(self, "q_a_proj", None) is not None:
        q_latent = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(q_latent)
    else:
        q_latent, q = None, self.q_proj(x)
    q = q.view(b, s, h, dn + dr)
    q_nope, q_rot = q[..., :dn], q[..., dn:]
    compressed = self.kv_a_proj_with_mqa(x)
    c = self.kv_a_layernorm(compressed[..., :r])
    k_rot = compressed[..., r:]
    cos, sin = position_embeddings
    q_rot, k_rot = _rope_fns(self)(q_rot.transpose(1, 2), k_rot.view(b, 1, s, dr), cos, sin)
    q_rot, k_rot = q_rot.transpose(1, 2), k_rot[:, 0]  # [B, S, H, d_R], [B, S, d_R]

    past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
    positions = _positions(position_ids, cache_position, past, b, s, x.device)
    with torch.no_grad():  # the indexer is trained on captured inputs (warmup.py), never here
        new_index_keys = layer.indexer.keys(x, positions)
    latent = torch.cat([c, k_rot], dim=-1)  # [B, S, r + d_R]: FlashMLA's row layout (dsa.md §7.1)
    if cache is not None:
        latent, index_keys = append_latent(cache, self.layer_idx, latent, new_index_keys,
                                           cache_position)
    else:
        index_keys = new_index_keys
    t = latent.shape[1]
    valid = mask_to_bool(attention_mask, s, t)

    if s > 1 and _runs_dense(runtime, s, t):
        out = _mha_mode(self, q_nope, q_rot, latent, valid, self.scaling)
        return self.o_proj(out.reshape(b, s, h * self.v_head_dim)), None

    w = self.kv_b_proj.weight.view(h, dn + self.v_head_dim, r)
    q_bar = torch.cat([torch.einsum("bshd,hdr->bshr", q_nope, w[:, :dn]), q_rot], dim=-1)
    layer.pending = PendingIndexerInputs(
        x.detach(), positions, index_keys,
        q_input=None if q_latent is None else q_latent.detach())
    kv = latent.unsqueeze(1)  # [B, 1, T, r + d_R]: one KV head; the value is its first r dims
    out, _ = dsa_attention(self, q_bar.transpose(1, 2), kv, kv[..., :r], attention_mask,
                           scaling=self.scaling)  # [B, S, H, r]
    out = torch.einsum("bshr,hvr->bshv", out.to(w.dtype), w[:, dn:])
    return self.o_proj(out.reshape(b, s, h * self.v_head_dim)), None


# ---------------------------------------------------------------------------------- wiring


def _attention_modules(model) -> list[nn.Module]:
    return [layer.self_attn for layer in model.model.layers]


def _install(model, runtime: DSARuntime, indexers: list[nn.Module]) -> None:
    register()
    for layer_idx, (attn, indexer) in enumerate(zip(_attention_modules(model), indexers, strict=True)):
        attn.dsa_layer = DSALayer(layer_idx, indexer.attach(attn), runtime)
        attn.forward = MethodType(mla_dsa_forward, attn)
    model.dsa_runtime = runtime
    model.dsa_base_attn_implementation = model.config._attn_implementation
    # The registered mask is boolean and never skipped; our forward calls no attention function
    # of transformers' own, so the model's attention implementation only decides the mask.
    model.set_attn_implementation(DSA_ATTENTION)


def convert_mla(model, config: DSAConfig | None = None, *, seed: int = 0):
    """Attach an `MLAIndexer` (random init, fp32) to every layer of a DeepseekV3 model. In place."""
    config = mla_dsa_config(model, config)
    inv_freq, scaling = rotary_table(model, config)
    cfg = model.config
    q_in = cfg.q_lora_rank or cfg.hidden_size
    device = next(model.parameters()).device
    indexers = []
    with torch.random.fork_rng(devices=[]):  # reproducible init without touching global RNG
        torch.manual_seed(seed)
        for attn in _attention_modules(model):
            indexer = MLAIndexer(cfg.hidden_size, q_in, config, inv_freq, scaling).to(device)
            attn.indexer = indexer  # registered: DeepseekV32's state-dict names
            indexers.append(indexer)
    _install(model, DSARuntime(config), indexers)
    model.dsa_owns_indexers = True
    return model


def v32_dsa_config(model, **overrides) -> DSAConfig:
    cfg = model.config
    fields = dict(index_topk=cfg.index_topk, index_n_heads=cfg.index_n_heads,
                  index_head_dim=cfg.index_head_dim)
    fields.update(overrides)
    return mla_dsa_config(model, DSAConfig(**fields))


def use_latent_attention(model, config: DSAConfig | None = None):
    """Run transformers' DeepseekV32ForCausalLM on the latent layout with dsparity's kernels.

    Each layer's DeepseekV32Indexer keeps its weights; an `MLAIndexer` sharing them scores and
    selects (fused indexer + top-k, deterministic ties, -1 padding)."""
    config = config or v32_dsa_config(model)
    inv_freq, scaling = rotary_table(model, config)
    indexers = [MLAIndexer.sharing(attn.indexer, config, inv_freq, scaling)
                for attn in _attention_modules(model)]
    _install(model, DSARuntime(config), indexers)
    model.dsa_owns_indexers = False
    return model


def remove_mla(model):
    """Undo `convert_mla` / `use_latent_attention`: transformers' own attention again."""
    owns = getattr(model, "dsa_owns_indexers", False)
    for attn in _attention_modules(model):
        del attn.forward  # the instance attribute: the class's forward shows through again
        del attn.dsa_layer
        if owns:
            del attn.indexer
    model.set_attn_implementation(model.dsa_base_attn_implementation)
    model.dsa_runtime = None
    return model
