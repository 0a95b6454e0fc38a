"""How good is a selection? Attention-mass recall and the indexer's KL, with two references.

For query t with dense head-averaged attention p_t (the warm-up target, dsa.md §5.1):
- recall(S_t) = sum_{s in S_t} p_t[s]: the attention mass a k-token selection keeps;
- oracle: S_t = top-k of p_t itself (the best any k-selection can keep);
- window + sink: the first `sink` tokens plus the most recent k - sink (StreamingLLM,
  Xiao et al. 2023, arXiv 2309.17453), the cheapest positional baseline of the same budget;
- KL(p_t || softmax(I_t)) over causal keys: the dense warm-up loss (TR eq. 3).
Only rows t >= k count: before that every key is selected and all selections are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsparity import kernels

SINK_TOKENS = 4  # StreamingLLM's default of 4 initial tokens


@dataclass
class SelectionMetrics:
    kl: float
    recall: float
    oracle: float
    window_sink: float
    rows: int


def kl_rows(p: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(scores)) per row; p [R,T] (0 outside the causal set), scores -inf there."""
    logq = torch.log_softmax(scores, dim=-1)
    valid = torch.isfinite(scores)
    logq = logq.masked_fill(~valid, 0.0)
    plogp = torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))
    return (plogp - p * logq).sum(-1)


def oracle_recall(p: torch.Tensor, k: int) -> torch.Tensor:
    """[R] mass of the k largest probabilities of each row."""
    return p.topk(min(k, p.shape[-1]), dim=-1).values.sum(-1)


def window_sink_recall(p: torch.Tensor, rows: torch.Tensor, k: int,
                       sink: int = SINK_TOKENS) -> torch.Tensor:
    """[R] mass of tokens [0, sink) plus (t - (k - sink), t] for each query position t in rows."""
    pos = torch.arange(p.shape[-1], device=p.device)
    t = rows.unsqueeze(-1)
    keep = (pos < sink) | ((pos <= t) & (pos > t - (k - sink)))
    return (p * keep).sum(-1)


def selection_recall(p: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[R] mass of the selected keys; indices [R, k] with -1 padding."""
    valid = indices >= 0
    got = p.gather(-1, indices.long().clamp_min(0))
    return (got * valid).sum(-1)


def layer_metrics(p: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor,
                  k: int) -> SelectionMetrics:
    """p, scores [R, T] for query positions `rows` (all >= k)."""
    idx = kernels.select_topk(scores.unsqueeze(0), k)[0]
    return SelectionMetrics(
        kl=kl_rows(p, scores).mean().item(),
        recall=selection_recall(p, idx).mean().item(),
        oracle=oracle_recall(p, k).mean().item(),
        window_sink=window_sink_recall(p, rows, k).mean().item(),
        rows=int(rows.numel()),
    )


def mean_metrics(items: list[SelectionMetrics]) -> SelectionMetrics:
    """Row-weighted mean over layers / sequences."""
    n = sum(m.rows for m in items)

    def avg(name: str) -> float:
        return sum(getattr(m, name) * m.rows for m in items) / n

    return SelectionMetrics(avg("kl"), avg("recall"), avg("oracle"), avg("window_sink"), n)
