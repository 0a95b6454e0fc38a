"""The sparse attention function transformers calls, registered as ``dsparity_dsa``.

transformers (5.x) calls ``fn(module, query [B,Hq,S,D], key [B,Hkv,T,D], value [B,Hkv,T,Dv],
attention_mask, scaling=..., **kwargs)`` with the KV cache already concatenated and GQA not
repeated, and expects ``(out [B,S,Hq,Dv], weights | None)`` (stack.md, "Custom attention"). The
mask must be registered too (``AttentionMaskInterface``) or it arrives as None; ours is boolean,
True = may attend, so padding and sliding windows reach the indexer as well.

Two callers:
- A model converted by `convert_to_dsa`: the forward pre-hook on each attention module left the
  indexer inputs in ``module.dsa_layer.pending``; here we score all keys, take the top-k and attend
  over the selection (dsa.md §3.8 steps 6-8).
- transformers' ``DeepseekV32ForCausalLM``: its own indexer passes ``indices`` [B,S,topk] int32.
  Rows with fewer than topk causal keys carry masked (future) positions there, which the reference
  demo removes by adding the causal mask (dsa.md §8.2.8); we turn them into -1 instead.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dsparity import kernels
from dsparity.model.config import DSAConfig
from dsparity.model.metrics import selected_set_kl
from dsparity.model.selection import mode_scores

DSA_ATTENTION = "dsparity_dsa"


@dataclass
class PendingIndexerInputs:
    """What the pre-hook hands to the attention call of the same layer and step."""

    x: torch.Tensor  # [B, S, hidden] attention input (indexer query source and head weights)
    positions: torch.Tensor  # [B, S] absolute positions of the queries
    keys: torch.Tensor  # [B, T, d_I] rotated indexer keys: cached ones plus this step's
    q_input: torch.Tensor | None = None  # [B, S, q_lora_rank] MLA's query latent c^Q (mla.py)


@dataclass
class DSARuntime:
    """Switches shared by all layers of one converted model (cheap to flip at any time)."""

    config: DSAConfig
    enabled: bool = True
    # Warm-up hook: capture(layer_idx, x [B,S,hidden], p [B,R,T]): the layer's attention input
    # and the head-averaged dense attention of query rows `capture_rows` [R] over all keys (the
    # warm-up target, computed here from this layer's own q and k). With `capture_sparse` the
    # layer's output is still the sparse one, so later layers see what they see at inference.
    capture: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
    capture_rows: torch.Tensor | None = None
    capture_sparse: bool = False
    # When not None, every layer appends its selected indices [B,S,k] here (tests, diagnostics);
    # with `record_rows` [R] only those query rows, [B,R,k] (long inputs, few rows of interest).
    recorded: dict[int, list[torch.Tensor]] | None = None
    record_rows: torch.Tensor | None = None
    # Sparse training with the LM loss (sparse_training.py): when not None, each layer appends its
    # indexer loss KL(p_S || softmax(I_S)) over the selected set (TR eq. 4) here.
    indexer_losses: list[torch.Tensor] | None = None
    # Selection rule at the same budget (`modes.py`): "dsa" = the lightning indexer; "window",
    # "block", "oracle" = the sparsity controls. `apply_mode` sets these three.
    mode: str = "dsa"
    sink: int = 4  # window: sink tokens
    block_size: int = 64  # block: keys per block
    # Analysis hook: inspect(layer_idx, p [B,S,T] head-averaged dense probs, indices [B,S,k]).
    # When set, layers run dense (the dense model's hidden states) and report what they would select.
    inspect: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None

    @property
    def topk(self) -> int:
        return self.config.index_topk


@dataclass
class DSALayer:
    """Per attention module: its indexer, the shared runtime and the hand-off slot."""

    layer_idx: int
    indexer: torch.nn.Module
    runtime: DSARuntime
    pending: PendingIndexerInputs | None = field(default=None, repr=False)
    hook: object | None = field(default=None, repr=False)  # the pre-hook's RemovableHandle


def mask_to_bool(mask: torch.Tensor | None, s: int, t: int) -> torch.Tensor | None:
    """[B,1,S,T] bool (True = attend) or additive float mask -> [B, S, T] bool, or None."""
    if mask is None:
        return None
    m = mask[:, 0, -s:, :t]
    if m.dtype == torch.bool:
        return m
    return m > torch.finfo(m.dtype).min / 2


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    valid: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Dense attention through SDPA -> [B,S,Hq,Dv]; fully masked rows give 0, not NaN."""
    b, s, hq, _ = q.shape
    t = k.shape[1]
    if valid is None:
        valid = kernels.reference.causal_valid(s, t, q.device).expand(b, s, t)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=valid[:, None],
        scale=scale, enable_gqa=True)
    return out.transpose(1, 2).nan_to_num(0.0)


def dense_attention_with_probs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               valid: torch.Tensor | None,
                               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit dense attention -> (out [B,S,Hq,Dv], head-averaged probs [B,S,T] float32).

    q [B,S,Hq,D], k/v [B,T,Hkv,D]. Written out so the warm-up can read the probabilities: the
    head average is the warm-up target p of TR eq. 3 (the L1-normalised head sum, dsa.md §5.1).
    One KV head's query group at a time ([G*S, D] @ [D, T], in-place softmax), so only G of the
    H per-head [S, T] maps exist at once; the head sum accumulates in one [B, S, T] buffer.
    """
    b, s, hq, d = q.shape
    t, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    if valid is None:
        valid = kernels.reference.causal_valid(s, t, q.device).expand(b, s, t)
    masked = ~valid[:, None]  # [B, 1, S, T]
    qh = q.float().transpose(1, 2).reshape(b, hkv, group * s, d)  # heads of a KV group adjacent
    out = q.new_empty(b, hkv, group * s, v.shape[-1], dtype=torch.float32)
    p_sum = torch.zeros(b, s, t, dtype=torch.float32, device=q.device)
    for n in range(hkv):
        logits = torch.matmul(qh[:, n], k[:, :, n].float().transpose(1, 2)).mul_(scale)
        logits = logits.view(b, group, s, t).masked_fill_(masked, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num_(0.0)  # [B, G, S, T]
        p_sum += probs.sum(1)
        out[:, n] = torch.matmul(probs.view(b, group * s, t), v[:, :, n].float())
    out = out.view(b, hq, s, -1).transpose(1, 2)  # [B, S, Hq, Dv]
    return out.to(q.dtype), p_sum.div_(hq)


def row_probs(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """Dense attention probabilities of query rows `rows` [R] averaged over heads -> [B, R, T].

    q [B,S,Hq,D], k [B,T,Hkv,D]. The warm-up target p of TR eq. 3 (the L1-normalised head sum,
    dsa.md §5.1) for the rows it trains on, without the [B, S, T] maps of every query.
    """
    b, s, hq, d = q.shape
    t, hkv = k.shape[1], k.shape[2]
    if valid is None:
        valid = kernels.reference.causal_valid(s, t, q.device).expand(b, s, t)
    qr = q[:, rows].float().view(b, len(rows), hkv, hq // hkv, d)  # [B, R, Hkv, G, D]
    logits = torch.einsum("brngd,btnd->brngt", qr, k.float()) * scale
    logits = logits.masked_fill(~valid[:, rows][:, :, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(dim=(2, 3))


def _indexer_scores(layer: DSALayer, t: int, valid: torch.Tensor | None,
                    train: bool = False) -> torch.Tensor:
    """Indexer scores over all T keys, masked like the attention -> [B, S, T] float32.

    train: recompute this step's keys with gradients (the cached ones were made under no_grad);
    only valid without a KV cache, which is how sparse training runs.
    """
    p = layer.pending
    keys = layer.indexer.keys(p.x, p.positions) if train else p.keys
    q_i, w_i = layer.indexer.queries(p.x, p.positions, p.q_input)
    scores = kernels.indexer_scores(q_i, keys, w_i)  # [B, S, Tk], bottom-right causal
    tk = scores.shape[-1]
    if tk < t:  # static caches hand over T = capacity; slots past the indexer cache are unused
        scores = torch.nn.functional.pad(scores, (0, t - tk), value=float("-inf"))
    if valid is not None:  # padding / sliding windows of the model's own mask
        scores = scores.masked_fill(~valid, float("-inf"))
    return scores


_causal_memo: tuple = (None, None, False)  # (weakref to a model mask, (s, t), plain causal?)


def _plain_causal(mask: torch.Tensor | None, valid: torch.Tensor | None, s: int, t: int) -> bool:
    """Is the model's mask exactly bottom-right causal (no padding, window or static slots)?

    An O(S * T) comparison, done once per forward: every layer receives the same mask object."""
    global _causal_memo
    if valid is None:
        return True
    ref, shape, answer = _causal_memo
    if ref is not None and ref() is mask and shape == (s, t):
        return answer
    b = valid.shape[0]
    answer = torch.equal(valid, kernels.reference.causal_valid(s, t, valid.device).expand(b, s, t))
    _causal_memo = (weakref.ref(mask), (s, t), answer)
    return answer


def _fused_dsa_selection(layer: DSALayer, t: int, plain_causal: bool, topk: int) -> torch.Tensor | None:
    """Indexer + top-k without the [B, S, T] score matrix (memory O(block * T)) when the mask is
    plain causal; None otherwise (padding, windows, static caches): the caller then scores and
    masks explicitly. Same indices either way."""
    p = layer.pending
    if not plain_causal or p.keys.shape[1] != t:
        return None
    q_i, w_i = layer.indexer.queries(p.x, p.positions, p.q_input)
    return kernels.indexer_topk(q_i, p.keys, w_i, topk)


def _selection_scores(layer: DSALayer, q: torch.Tensor, k: torch.Tensor, t: int,
                      valid: torch.Tensor | None, scale: float, train: bool = False) -> torch.Tensor:
    """[B, S, T] scores of the runtime's mode: the indexer's (dsa) or a control's (modes.py)."""
    runtime = layer.runtime
    if runtime.mode == "dsa":
        return _indexer_scores(layer, t, valid, train=train)
    return mode_scores(runtime.mode, q, k, valid, scale=scale, sink=runtime.sink,
                       block_size=runtime.block_size)


def selected_set_loss(scores: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                      valid: torch.Tensor | None, topk: int, scale: float) -> torch.Tensor:
    """The selected-set KL (TR eq. 4) averaged over rows, with the warm-up's one target
    definition: the head-averaged dense attention (`row_probs`), restricted to the selected set
    and renormalised (`metrics.selected_set_kl`). q/k are detached, so this loss never reaches
    the backbone (dsa.md §8.2.6); scores [B,S,T] carry the indexer's gradient."""
    with torch.no_grad():
        p = row_probs(q.detach(), k.detach(), torch.arange(q.shape[1], device=q.device), valid, scale)
    return selected_set_kl(scores.flatten(0, 1), p.flatten(0, 1), topk).mean()


def _drop_masked(indices: torch.Tensor, valid: torch.Tensor | None, t: int) -> torch.Tensor:
    """-1 for out-of-range slots and for slots the mask forbids (DeepseekV32's short rows)."""
    idx = indices.long()
    ok = (idx >= 0) & (idx < t)
    if valid is not None:
        ok &= valid.gather(-1, idx.clamp(0, t - 1))
    return torch.where(ok, idx, torch.full_like(idx, -1))


def dsa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    indices: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, S|T, H, D]
    s, t = q.shape[1], k.shape[1]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    valid = mask_to_bool(attention_mask, s, t)

    if indices is not None:  # DeepseekV32ForCausalLM: its indexer already chose
        return kernels.sparse_attention(q, k, v, _drop_masked(indices, valid, t), scale=scale), None

    layer: DSALayer | None = getattr(module, "dsa_layer", None)
    if layer is None or layer.pending is None:  # not converted: plain dense attention
        return dense_attention(q, k, v, valid, scale), None
    runtime = layer.runtime
    try:
        if runtime.capture is not None:
            rows = runtime.capture_rows if runtime.capture_rows is not None else torch.arange(s)
            runtime.capture(layer.layer_idx, layer.pending.x, row_probs(q, k, rows.to(q.device),
                                                                        valid, scale))
            if not runtime.capture_sparse:
                return dense_attention(q, k, v, valid, scale), None
        if runtime.inspect is not None:
            out, probs = dense_attention_with_probs(q, k, v, valid, scale)
            idx = kernels.select_topk(_selection_scores(layer, q, k, t, valid, scale), runtime.topk)
            runtime.inspect(layer.layer_idx, probs, idx)
            return out, None
        training = runtime.indexer_losses is not None
        # k >= every row's candidate count: selection is everything, i.e. exactly dense.
        short = t <= runtime.topk and runtime.config.dense_when_short and not training
        if not runtime.enabled or short:
            return dense_attention(q, k, v, valid, scale), None
        idx = None
        if runtime.mode == "dsa" and not training:
            idx = _fused_dsa_selection(layer, t, _plain_causal(attention_mask, valid, s, t), runtime.topk)
        if idx is None:
            scores = _selection_scores(layer, q, k, t, valid, scale, train=training)
            idx = kernels.select_topk(scores.detach(), runtime.topk)  # selection has no gradient
        if runtime.recorded is not None:
            rows = runtime.record_rows
            runtime.recorded.setdefault(layer.layer_idx, []).append(
                idx if rows is None else idx[:, rows.to(idx.device)])
        if training:
            runtime.indexer_losses.append(selected_set_loss(scores, q, k, valid, runtime.topk, scale))
        return kernels.sparse_attention(q, k, v, idx, scale=scale), None
    finally:
        layer.pending = None  # never let a stale hand-off reach the next step


def dsa_mask(*args, **kwargs):
    """Boolean (B,1,S,T) mask, never skipped: the indexer needs it even for plain causal input."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs.pop("dtype", None)
    return sdpa_mask(*args, **kwargs)


def register() -> str:
    """Register ``dsparity_dsa`` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(DSA_ATTENTION, dsa_attention)
    AttentionMaskInterface.register(DSA_ATTENTION, dsa_mask)
    return DSA_ATTENTION
