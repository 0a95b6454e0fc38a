"""Starting a converted model's lightning indexers from its own attention heads.

Trained from random weights on a CPU budget (about 10^4 tokens of captured rows, minutes) an
indexer learns the sink and local mass of the dense attention but few of the far reads a retrieval
answer makes: held-out needle recall 0.54 at k = 32 after the whole default warm-up. DeepSeek warm
up from scratch on 2.1B tokens (tech report §2.1); a CPU cannot. But a converted dense model
already holds scorers that pick what its attention reads: its own heads.

The indexer has one key per token, shared by all its heads, as a KV group's key is shared by the
group's query heads. A key of m head-sized blocks holds m groups' keys side by side, and a query
head that is zero outside its group's block reads only that group's key:

    k^I   = LayerNorm([W_K[g_1] x | ... | W_K[g_m] x])   LN gain per block = that key's scale
    q^I_j = W_Q[h_j] x in block b(h_j), zeros elsewhere   the groups' query heads, cycled to H_I
    w_j   ~ 1                     weights_proj: least-squares fit of a constant on the layer inputs
    RoPE on every dim, block by block, the model's theta (`DSAConfig.rope_head_dim`, `convert.py`)

so I(t, s) ~ sum_j ReLU(logit_{h_j}(t, s)) up to LayerNorm's per-key centring and scaling. With
m = all groups (`default_dsa_config`) the start sums every head of the layer; with fewer, the
groups kept per layer are those whose start selects best on the training captures (attention mass
recall plus needle recall). The warm-up's two stages then train from there.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dsparity.model.config import DSAConfig
from dsparity.model.convert import attention_modules, dsa_layers, model_rope_theta
from dsparity.model.metrics import layer_metrics, mean_metrics
from dsparity.model.stacked import trainable_scorer

if TYPE_CHECKING:
    from dsparity.model.warmup import Capture

LSQ_TOKENS = 8192  # layer inputs used to fit the constant head weights (plenty for 576 unknowns)


@dataclass
class AttentionInit:
    groups: list[list[int]]  # per layer, the KV groups the indexer starts from (one per block)


def default_dsa_config(model, topk: int) -> DSAConfig:
    """The indexer shape a first-use warm-up gives `model`: where its heads can seed the indexer,
    all KV groups side by side (d_I = groups x head_dim, H_I = its query heads), so the start
    scores sum_h ReLU(logit_h) over every head of the model; DSAConfig's V3.2-like 4 x 64 otherwise.

    Why every group, measured on the default model (1K/2K needles, 32 depths each, k = 64): the
    best single group per layer, warmed up, kept 30 of the 45 needles dense attention finds; the
    sum over all nine heads, untrained, 42; this start warmed up, all 45 (62 of 64 in all; the
    oracle top-k 57; README, "Retrieval at V3.2-Exp's proportions"). The price is the indexer's
    width: heads x groups x head_dim per (query, key), the zero blocks computed too, i.e. as many
    times the model's own q.k as it has KV groups (9 x 192 = 3 x 9 x 64 here, against 4 x 64);
    pass a DSAConfig of one group's width (d_I = head_dim) where that cost matters more."""
    config = model.config
    if _model_blocker(model) is not None:
        return DSAConfig(index_topk=topk)
    return DSAConfig(index_topk=topk, index_n_heads=config.num_attention_heads,
                     index_head_dim=config.num_key_value_heads * _head_dim(config))


def _model_blocker(model) -> str | None:
    config = model.config
    if getattr(config, "model_type", "") not in ("llama", "mistral", "qwen2"):
        return f"model_type {getattr(config, 'model_type', '?')!r} (Llama, Mistral and Qwen2 heads only)"
    attn = attention_modules(model)[0]
    if not (hasattr(attn, "q_proj") and hasattr(attn, "k_proj")):
        return "no q_proj/k_proj in the attention module"
    if attn.q_proj.bias is not None or attn.k_proj.bias is not None:
        return "q/k projections carry a bias the indexer's key has no place for"
    params = getattr(config, "rope_parameters", None) or {}
    partial = getattr(config, "partial_rotary_factor", 1.0) != 1.0
    if params.get("rope_type", "default") != "default" or partial:
        return "the model's rotary embedding is scaled or partial"
    return None


def attention_init_blocker(model) -> str | None:
    """Why the indexers cannot start from the model's heads (None when they can)."""
    if (reason := _model_blocker(model)) is not None:
        return reason
    config = model.config
    dsa = model.dsa_runtime.config
    head_dim = _head_dim(config)
    m, rest = divmod(dsa.index_head_dim, head_dim)
    if rest or not 1 <= m <= config.num_key_value_heads or dsa.rotary_dim != dsa.index_head_dim \
            or dsa.rope_block != head_dim:
        return (f"the indexer's head ({dsa.index_head_dim} dims, {dsa.rotary_dim} rotated in blocks "
                f"of {dsa.rope_block}) is not the model's ({head_dim}, all rotated) nor a whole "
                f"number of them up to its {config.num_key_value_heads} KV groups")
    if dsa.rope_theta not in (None, model_rope_theta(config)):
        return "the indexer's rope_theta differs from the model's"
    return None


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def init_from_attention(model, captures: list[Capture], k: int) -> AttentionInit:
    """Set every layer's indexer to its best-scoring KV groups' heads (see the module doc)."""
    config = model.config
    blocks = model.dsa_runtime.config.index_head_dim // _head_dim(config)
    choices = [list(c) for c in itertools.combinations(range(config.num_key_value_heads), blocks)]
    groups = []
    for n, (layer, attn) in enumerate(zip(dsa_layers(model), attention_modules(model), strict=True)):
        dev = layer.indexer.wk.weight.device  # captures live on the CPU, the model anywhere
        x = torch.cat([c.x[n] for c in captures])[:LSQ_TOKENS].to(dev, torch.float32)  # [T, hidden]
        def score(choice: list[int], layer=layer, attn=attn, x=x, n=n) -> float:
            _copy_groups(layer.indexer, attn, choice, x, config)
            return _start_score(layer.indexer, captures, n, k)

        best = choices[0] if len(choices) == 1 else max(choices, key=score)
        _copy_groups(layer.indexer, attn, best, x, config)
        groups.append(best)
    return AttentionInit(groups)


def _copy_groups(indexer, attn, groups: list[int], x: torch.Tensor, config) -> None:
    """Key block b = KV group groups[b]'s key; the H_I query heads cycle over those groups' query
    heads, each written into its group's block (zeros elsewhere: it reads only that key)."""
    d = _head_dim(config)
    per_group = config.num_attention_heads // config.num_key_value_heads
    heads = [g * per_group + i for g in groups for i in range(per_group)]
    w_k = torch.cat([attn.k_proj.weight[g * d:(g + 1) * d] for g in groups]).float()  # [m*d, hidden]
    indexer.wk.weight.copy_(w_k)
    keys = (x @ w_k.T).unflatten(-1, (len(groups), d))  # [T, m, d]
    indexer.k_norm.weight.copy_(keys.std(-1).mean(0).repeat_interleave(d))  # keep each key's scale
    indexer.k_norm.bias.zero_()
    wq = indexer.wq.weight.view(indexer.n_heads, len(groups), d, -1)
    wq.zero_()
    for j in range(indexer.n_heads):
        h = heads[j % len(heads)]
        wq[j, groups.index(h // per_group)] = attn.q_proj.weight[h * d:(h + 1) * d]
    ridge = x.T @ x + 1e-2 * torch.eye(x.shape[1], device=x.device)
    ones = torch.linalg.solve(ridge, x.T @ torch.ones(x.shape[0], device=x.device))  # w(x) = ones . x ~ 1
    indexer.weights_proj.weight.copy_(ones.expand(indexer.n_heads, -1))


def _start_score(indexer, captures: list[Capture], n: int, k: int) -> float:
    dev = indexer.wk.weight.device
    scorer = trainable_scorer([indexer])
    items = []
    for c in captures:
        rows = c.rows.to(dev)
        scores = scorer.scores(c.x[n:n + 1].to(dev, torch.float32), rows)[0]
        items.append(layer_metrics(c.p[n].to(dev, torch.float32), scores, rows, k,
                                   evidence=c.evidence.to(dev)))
    m = mean_metrics(items)
    return m.recall + (m.needle or 0.0)
