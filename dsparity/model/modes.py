"""Attention modes of a converted model: the lightning indexer or a sparsity control, switched
at run time on one DSA model (`apply_mode`), and how much attention mass each mode keeps
(`selection_recall`). The rule-based selections themselves live in `selection.py`; the layer
that applies them is `attention.dsa_attention` (the DSA runtime carries `mode`, `sink` and
`block_size`).
"""

from __future__ import annotations

import torch

from dsparity.model.convert import set_dsa
from dsparity.model.selection import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_SINK,
    SELECTION_MODES,
    attention_recall,
)

MODES = ("dense", "dsa", *SELECTION_MODES)
__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_SINK", "MODES", "apply_mode", "selection_recall"]


def apply_mode(model, mode: str, *, topk: int | None = None, sink: int = DEFAULT_SINK,
               block_size: int = DEFAULT_BLOCK_SIZE):
    """Run a DSA-converted model with another selection rule at the same budget; returns it.

    `dense` switches selection off; `dsa` uses the lightning indexer (it should have been warmed
    up, see `prepare_dsa`); `window`, `block` and `oracle` ignore the indexer. KV and indexer
    caches stay as they are, so a model can be switched between modes at any time.
    """
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r}; use one of: {', '.join(MODES)}")
    if getattr(model, "dsa_runtime", None) is None:
        raise ValueError("apply_mode needs a DSA-converted model (convert_to_dsa / prepare_dsa)")
    set_dsa(model, enabled=mode != "dense", topk=topk)
    runtime = model.dsa_runtime
    runtime.mode = "dsa" if mode == "dense" else mode
    runtime.sink, runtime.block_size = sink, block_size
    model.dsa_mode = mode
    return model


def selection_recall(model, input_ids: torch.Tensor, *, max_rows: int = 256) -> dict:
    """Attention-mass recall of the model's current mode, layer by layer, on one dense pass.

    The model runs dense (so every layer sees the dense model's hidden states, like the warm-up
    calibration in stack.md); each layer also computes the selection its mode would make and
    keeps sum(p_t[S_t]) for query rows t >= k (before that every mode selects every key).
    Returns {"recall": mean over layers, "per_layer": [...], "rows": rows per layer, "tokens": T}.
    """
    runtime = model.dsa_runtime
    k = runtime.topk
    t = input_ids.shape[-1]
    if t <= k:
        raise ValueError(f"selection_recall needs more than topk={k} tokens, got {t}")
    rows = torch.arange(k, t)
    if len(rows) > max_rows:
        rows = rows[torch.linspace(0, len(rows) - 1, max_rows).round().long()]
    per_layer: dict[int, float] = {}

    def inspect(layer_idx: int, probs: torch.Tensor, indices: torch.Tensor) -> None:
        r = rows.to(probs.device)
        per_layer[layer_idx] = float(attention_recall(probs[:, r], indices[:, r]).mean())

    runtime.inspect = inspect
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
    finally:
        runtime.inspect = None
    layers = [per_layer[i] for i in sorted(per_layer)]
    return {"recall": sum(layers) / len(layers) if layers else None, "per_layer": layers,
            "rows": len(rows), "tokens": t}
