"""How good is a selection? Attention-mass recall and the indexer's KL, with two references.

For query t with dense head-averaged attention p_t (the warm-up target, dsa.md §5.1):
- recall(S_t) = sum_{s in S_t} p_t[s]: the attention mass a k-token selection keeps;
- oracle: S_t = top-k of p_t itself (the best any k-selection can keep);
- window + sink: the first `sink` tokens plus the most recent k - sink (StreamingLLM,
  Xiao et al. 2023, arXiv 2309.17453), the cheapest positional baseline of the same budget;
- KL(p_t || softmax(I_t)) over causal keys: the dense warm-up loss (TR eq. 3).
Only rows t >= k count: before that every key is selected and all selections are equal.
- needle recall: at rows that copy a token from far back (a retrieval answer), whether the
  selection contains that token's position (`diagnostics.py`); with the oracle's and the window's.
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
    # Needle recall, over (row, layer) pairs where the dense attention reads the needle (its top-k,
    # the oracle's, holds the evidence): the share where the selection holds it too. Layers that
    # do not read the needle need not select it; those that do must.
    needle: float | None = None  # the indexer's top-k
    needle_window: float | None = None  # window + sink at the same k
    needle_oracle: float | None = None  # share of all evidence rows the oracle's top-k holds
    needle_rows: int = 0  # rows where the oracle holds the evidence


def kl_rows(p: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(scores)) per row; p [R,T] (0 outside the causal set), scores -inf there."""
    logq = torch.log_softmax(scores, dim=-1)
    valid = torch.isfinite(scores)
    logq = logq.masked_fill(~valid, 0.0)
    plogp = torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))
    return (plogp - p * logq).sum(-1)


def selected_set_kl(scores: torch.Tensor, p: torch.Tensor, k: int) -> torch.Tensor:
    """[R] KL over the selected set only (TR eq. 4): p restricted to S_t = top-k(I_t) and
    renormalised, against softmax(I) over S_t (dsa.md §8.2.5 option (b)). The warm-up's sparse
    stage and the sparse training with the LM loss both use this one definition."""
    idx = kernels.select_topk(scores.detach().unsqueeze(0), k)[0].long()  # [R, k]
    valid = idx >= 0
    safe = idx.clamp_min(0)
    target = p.gather(-1, safe) * valid
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
    return kl_rows(target, scores.gather(-1, safe).masked_fill(~valid, float("-inf")))


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


def layer_metrics(p: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor, k: int,
                  evidence: torch.Tensor | None = None, sink: int = SINK_TOKENS) -> SelectionMetrics:
    """p, scores [R, T] for query positions `rows`; mass metrics over rows >= k, needle metrics
    over rows whose `evidence` [R] (context position they copy) is >= 0."""
    idx = kernels.select_topk(scores.unsqueeze(0), k)[0]
    far = rows >= k
    out = SelectionMetrics(
        kl=kl_rows(p[far], scores[far]).mean().item() if far.any() else 0.0,
        recall=selection_recall(p[far], idx[far]).mean().item() if far.any() else 1.0,
        oracle=oracle_recall(p[far], k).mean().item() if far.any() else 1.0,
        window_sink=window_sink_recall(p[far], rows[far], k).mean().item() if far.any() else 1.0,
        rows=int(far.sum()),
    )
    if evidence is not None and (evidence >= 0).any():
        has = evidence >= 0
        ev, r = evidence[has], rows[has]
        best = p[has].topk(min(k, p.shape[-1]), dim=-1).indices
        read = (best == ev[:, None]).any(-1)  # the dense attention reads the needle here
        out.needle_oracle = read.float().mean().item()
        out.needle_rows = int(read.sum())
        if out.needle_rows:
            in_window = (ev < sink) | ((ev <= r) & (ev > r - (k - sink)))
            out.needle = (idx[has][read] == ev[read][:, None]).any(-1).float().mean().item()
            out.needle_window = in_window[read].float().mean().item()
    return out


def mean_metrics(items: list[SelectionMetrics]) -> SelectionMetrics:
    """Row-weighted mean over layers / sequences (needle metrics over their own rows)."""
    n = sum(m.rows for m in items)

    def avg(name: str) -> float:
        return sum(getattr(m, name) * m.rows for m in items) / n if n else 0.0

    out = SelectionMetrics(avg("kl"), avg("recall"), avg("oracle"), avg("window_sink"), n)
    needles = [m for m in items if m.needle_rows]
    if needles:
        total = sum(m.needle_rows for m in needles)
        for name in ("needle", "needle_window"):
            setattr(out, name, sum(getattr(m, name) * m.needle_rows for m in needles) / total)
        out.needle_rows = total
    oracles = [m for m in items if m.needle_oracle is not None]
    if oracles:
        out.needle_oracle = sum(m.needle_oracle for m in oracles) / len(oracles)
    return out
