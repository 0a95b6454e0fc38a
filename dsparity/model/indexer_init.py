"""Starting a converted model's lightning indexers from its own attention heads.

Trained from random weights on a CPU budget (about 10^4 tokens of captured rows, minutes) an
indexer learns the sink and local mass of the dense attention but few of the far reads a retrieval
answer makes: held-out needle recall 0.54 at k = 32 after the whole default warm-up (README,
"Warming the indexers up"). DeepSeek warm up from scratch on 2.1B tokens (tech report §2.1); a
CPU cannot. But a converted dense model already holds scorers that pick what its attention reads:
its own heads.
The indexer's shape admits one KV group of them per layer, since its single key is shared by all
indexer heads as a group's key is shared by its query heads:

    k^I   = LayerNorm(W_K[g] x)   KV group g's key projection; LN gain = the keys' typical scale
    q^I_j = W_Q[h_j] x            the query heads of group g, repeated to fill H_I heads
    w_j   ~ 1                     weights_proj: least-squares fit of a constant on the layer inputs
    RoPE over all d_I dims, the model's theta (a Llama head rotates every dim; `convert.py`)

so I(t, s) ~ sum_j ReLU(logit_{h_j}(t, s)) up to LayerNorm's per-key centring and scaling. Per
layer, the group kept is the one whose start selects best on the training captures (attention
mass recall plus needle recall); the warm-up's two stages then train from there.

Measured on the default model at k = 32, 1K-token held-out retrieval sequences: needle recall
0.006 (random weights) -> 0.844 at this start, kept through both stages (which raise attention
mass recall 0.800 -> 0.855, oracle 0.871); the same stages from random weights reach 0.54.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dsparity.model.convert import attention_modules, dsa_layers, model_rope_theta
from dsparity.model.metrics import layer_metrics, mean_metrics
from dsparity.model.stacked import trainable_scorer

if TYPE_CHECKING:
    from dsparity.model.warmup import Capture

LSQ_TOKENS = 8192  # layer inputs used to fit the constant head weights (plenty for 576 unknowns)


@dataclass
class AttentionInit:
    groups: list[int]  # per layer, the KV group the indexer starts from


def attention_init_blocker(model) -> str | None:
    """Why the indexers cannot start from the model's heads (None when they can)."""
    config = model.config
    dsa = model.dsa_runtime.config
    if getattr(config, "model_type", "") not in ("llama", "mistral", "qwen2"):
        return f"model_type {getattr(config, 'model_type', '?')!r} (Llama, Mistral and Qwen2 heads only)"
    attn = attention_modules(model)[0]
    if not (hasattr(attn, "q_proj") and hasattr(attn, "k_proj")):
        return "no q_proj/k_proj in the attention module"
    if attn.q_proj.bias is not None or attn.k_proj.bias is not None:
        return "q/k projections carry a bias the indexer's key has no place for"
    head_dim = _head_dim(config)
    if dsa.index_head_dim != head_dim or dsa.rotary_dim != head_dim:
        return (f"the indexer's head ({dsa.index_head_dim} dims, {dsa.rotary_dim} rotated) is not "
                f"the model's ({head_dim}, all rotated)")
    params = getattr(config, "rope_parameters", None) or {}
    partial = getattr(config, "partial_rotary_factor", 1.0) != 1.0
    if params.get("rope_type", "default") != "default" or partial:
        return "the model's rotary embedding is scaled or partial"
    if dsa.rope_theta not in (None, model_rope_theta(config)):
        return "the indexer's rope_theta differs from the model's"
    return None


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def init_from_attention(model, captures: list[Capture], k: int) -> AttentionInit:
    """Set every layer's indexer to its best-scoring KV group's heads (see the module doc)."""
    config = model.config
    n_kv = config.num_key_value_heads
    groups = []
    for n, (layer, attn) in enumerate(zip(dsa_layers(model), attention_modules(model), strict=True)):
        dev = layer.indexer.wk.weight.device  # captures live on the CPU, the model anywhere
        x = torch.cat([c.x[n] for c in captures])[:LSQ_TOKENS].to(dev, torch.float32)  # [T, hidden]
        best: tuple[float, int] | None = None
        for g in range(n_kv):
            _copy_group(layer.indexer, attn, g, x, config)
            score = _start_score(layer.indexer, captures, n, k)
            if best is None or score > best[0]:
                best = (score, g)
        _copy_group(layer.indexer, attn, best[1], x, config)
        groups.append(best[1])
    return AttentionInit(groups)


def _copy_group(indexer, attn, g: int, x: torch.Tensor, config) -> None:
    d = _head_dim(config)
    per_group = config.num_attention_heads // config.num_key_value_heads
    w_k = attn.k_proj.weight[g * d:(g + 1) * d].float()  # [d, hidden]
    indexer.wk.weight.copy_(w_k)
    indexer.k_norm.weight.fill_(float((x @ w_k.T).std(-1).mean()))  # keep the keys' scale
    indexer.k_norm.bias.zero_()
    for j in range(indexer.n_heads):
        h = g * per_group + j % per_group
        indexer.wq.weight[j * d:(j + 1) * d].copy_(attn.q_proj.weight[h * d:(h + 1) * d])
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
