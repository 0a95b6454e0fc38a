"""Needle recall: does a layer's selection contain the evidence a retrieval answer reads?

Attention-mass recall (metrics.py) averages over every row and is dominated by the attention
sink and the local window; it says nothing about the few rows where a question reads its answer.
Needle recall looks only there. For a prompt whose answer is copied from the context (a needle's
value), the answer rows are the query positions that predict the answer tokens, and the evidence
for the row predicting answer token j is the context position holding that same token in the
needle (what an induction-style head attends to when it copies). Per layer:

    needle recall = share of answer rows whose selected set contains their evidence position.

Measured on the model's own sparse forward (every layer runs on the sparse layers' hidden states,
as at inference), or with `dense_states=True` on the dense model's hidden states, which also
gives the dense attention mass on the evidence and what the oracle top-k would select.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class NeedleRecall:
    per_layer: list[float]  # share of answer rows whose evidence the layer selected
    rows: int
    tokens: int
    mass: list[float] | None = None  # dense states: head-mean attention mass on the evidence
    oracle: list[float] | None = None  # dense states: needle recall of the oracle top-k

    @property
    def mean(self) -> float:
        return sum(self.per_layer) / len(self.per_layer) if self.per_layer else 1.0

    @property
    def missed_layers(self) -> list[int]:
        """Layers that missed the evidence on at least half of the answer rows."""
        return [i for i, r in enumerate(self.per_layer) if r < 0.5]

    def to_dict(self) -> dict:
        return asdict(self) | {"mean": self.mean, "missed_layers": self.missed_layers}


def evidence_rows(ids: list[int], answer: list[int]) -> tuple[list[int], list[int]] | None:
    """(answer rows, evidence positions) when `answer` follows `ids` and is copied from them.

    `ids` is the context the model sees before the answer; the evidence is the last occurrence
    of the answer's token sequence inside it. None when the answer does not occur in the context.
    """
    n, m = len(ids), len(answer)
    for start in range(n - m, -1, -1):
        if ids[start:start + m] == answer:
            rows = [n - 1 + j for j in range(m)]  # row predicting answer token j
            return rows, [start + j for j in range(m)]
    return None


@torch.no_grad()
def needle_recall(model, input_ids: torch.Tensor, rows: list[int], evidence: list[int], *,
                  dense_states: bool = False) -> NeedleRecall:
    """Needle recall of the model's current attention mode on one sequence [1, T]."""
    runtime = model.dsa_runtime
    device = next(model.parameters()).device
    row_t = torch.tensor(rows, device=device)
    ev_t = torch.tensor(evidence, device=device)
    per_layer: dict[int, float] = {}
    mass: dict[int, float] = {}
    oracle: dict[int, float] = {}

    def hits(idx: torch.Tensor) -> float:  # idx [1, R, k]
        return float((idx[0] == ev_t[:, None]).any(-1).float().mean())

    if dense_states:
        def inspect(layer_idx: int, probs: torch.Tensor, idx: torch.Tensor) -> None:
            p = probs[0, row_t]  # [R, T]
            per_layer[layer_idx] = hits(idx[:, row_t])
            mass[layer_idx] = float(p.gather(-1, ev_t[:, None]).mean())
            best = p.masked_fill(p == 0, float("-inf")).topk(min(runtime.topk, p.shape[-1]), -1).indices
            oracle[layer_idx] = hits(best[None])

        runtime.inspect = inspect
        try:
            model(input_ids=input_ids.to(device), use_cache=False, logits_to_keep=1)
        finally:
            runtime.inspect = None
    else:
        runtime.recorded, runtime.record_rows = {}, row_t
        try:
            model(input_ids=input_ids.to(device), use_cache=False, logits_to_keep=1)
            for layer_idx, picked in runtime.recorded.items():
                per_layer[layer_idx] = hits(picked[0])
        finally:
            runtime.recorded, runtime.record_rows = None, None
    n_layers = len(model.model.layers)
    full = [per_layer.get(i, 1.0) for i in range(n_layers)]  # a layer that ran dense saw everything
    return NeedleRecall(full, len(rows), int(input_ids.shape[-1]),
                        [mass[i] for i in sorted(mass)] or None, [oracle[i] for i in sorted(oracle)] or None)


__all__ = ["NeedleRecall", "evidence_rows", "needle_recall"]
