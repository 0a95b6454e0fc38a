"""Every layer's indexer as one batched module, for training on captured inputs.

A warm-up step scores a few hundred query rows against every key, in every layer. Done layer by
layer that is ~60 small tensor ops per layer and thirty layers: on a CPU the step is dominated by
op overhead, not arithmetic. Stacked, the same math is a handful of batched ops over a leading
layer dimension (the parameters are copies; `write_back` returns them to the model's indexers).
The score is the indexer's (indexer.py, kernels.reference.indexer_scores), and a test checks the
two agree.
"""

from __future__ import annotations

import torch
from torch import nn

from dsparity import kernels
from dsparity.model.indexer import LightningIndexer, apply_rope


class StackedIndexers(nn.Module):
    def __init__(self, indexers: list[LightningIndexer]):
        super().__init__()
        first = indexers[0]
        self.n_heads, self.head_dim, self.layout = first.n_heads, first.head_dim, first.rope_layout
        self.eps, self.rotary_dim = first.k_norm.eps, first.rotary_dim
        stack = lambda get: nn.Parameter(torch.stack([get(ix).detach().float() for ix in indexers]))  # noqa: E731
        self.wq = stack(lambda ix: ix.wq.weight)  # [N, H*d, hidden]
        self.wk = stack(lambda ix: ix.wk.weight)  # [N, d, hidden]
        self.ln_w = stack(lambda ix: ix.k_norm.weight)  # [N, d]
        self.ln_b = stack(lambda ix: ix.k_norm.bias)  # [N, d]
        self.wp = stack(lambda ix: ix.weights_proj.weight)  # [N, H, hidden]
        self.register_buffer("inv_freq", first.inv_freq.double(), persistent=False)

    def scores(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """x [N, L, hidden] (layer inputs), rows [R] -> scores [N, R, L]; future keys -inf."""
        n, length, _ = x.shape
        pos = torch.arange(length, device=x.device)
        k = torch.bmm(x, self.wk.transpose(1, 2))  # [N, L, d]
        k = torch.nn.functional.layer_norm(k, (self.head_dim,), eps=self.eps)
        k = k * self.ln_w[:, None] + self.ln_b[:, None]
        k = apply_rope(k, pos[None], self.inv_freq, self.layout, self.rotary_dim)
        xr = x[:, rows]  # [N, R, hidden]
        q = torch.bmm(xr, self.wq.transpose(1, 2)).view(n, len(rows), self.n_heads, self.head_dim)
        q = apply_rope(q, rows[None], self.inv_freq, self.layout, self.rotary_dim)
        w = torch.bmm(xr, self.wp.transpose(1, 2))  # [N, R, H]
        logits = torch.einsum("nrhd,nld->nrhl", q, k).relu()
        scores = torch.einsum("nrh,nrhl->nrl", w, logits) * (self.n_heads * self.head_dim) ** -0.5
        return scores.masked_fill(pos[None, None] > rows[None, :, None], float("-inf"))

    @torch.no_grad()
    def write_back(self, indexers: list[LightningIndexer]) -> None:
        for i, ix in enumerate(indexers):
            ix.wq.weight.copy_(self.wq[i])
            ix.wk.weight.copy_(self.wk[i])
            ix.k_norm.weight.copy_(self.ln_w[i])
            ix.k_norm.bias.copy_(self.ln_b[i])
            ix.weights_proj.weight.copy_(self.wp[i])


class LayerwiseIndexers(nn.Module):
    """The same interface, layer by layer: for indexers the stacked math does not cover (the MLA
    indexer's query latent, the deployed FP8 / Hadamard formats)."""

    def __init__(self, indexers: list[nn.Module]):
        super().__init__()
        self.indexers = nn.ModuleList(indexers)  # the model's own modules: trained in place

    def scores(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device)
        out = []
        for n, ix in enumerate(self.indexers):
            keys = ix.keys(x[n:n + 1], pos[None])  # [1, L, d_I]
            q, w = ix.queries(x[n:n + 1, rows], rows[None])
            scores = kernels.indexer_scores(q, keys, w, causal=False)[0]
            out.append(scores.masked_fill(pos[None] > rows[:, None], float("-inf")))
        return torch.stack(out)

    def write_back(self, indexers) -> None:
        pass


def trainable_scorer(indexers: list[nn.Module]) -> StackedIndexers | LayerwiseIndexers:
    """Stacked where every indexer is a plain fp32 `LightningIndexer`, else layer by layer."""
    plain = all(type(ix) is LightningIndexer and not ix.fp8 and not ix.hadamard for ix in indexers)
    return StackedIndexers(indexers) if plain else LayerwiseIndexers(indexers)
