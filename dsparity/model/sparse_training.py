"""Sparse stage with the language-modelling loss: the backbone trains too (TR §2.2, dsa.md §5.2).

The model runs with top-k selection on; the backbone is trained only by the LM loss (at a low LR;
the report's stage 2 uses 7.3e-6) and each indexer only by its KL over the selected set, because
the indexer's inputs are detached (the pre-hook hands over ``x.detach()``) and its target is
computed from detached q/k (`attention.selected_set_loss`).

This needs gradients through all layers at long context: it is meant for a GPU. On the 2-core CPU
machine only the indexer-only stages of `warmup.py` fit the first-use budget; this function is
tested on tiny models and left optional.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsparity.model.convert import dsa_layers


@dataclass(frozen=True)
class SparseLMConfig:
    steps: int = 10
    seq_len: int = 512
    sequences: int = 4
    backbone_lr: float = 7.3e-6  # TR §2.2 stage-2 LR
    indexer_lr: float = 1e-4  # the report does not state it (dsa.md §9): our choice
    seed: int = 0


def split_parameters(model) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(backbone parameters, indexer parameters)."""
    indexer = [p for layer in dsa_layers(model) for p in layer.indexer.parameters()]
    ids = {id(p) for p in indexer}
    return [p for p in model.parameters() if id(p) not in ids], indexer


def losses(model, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM loss, mean indexer selected-set KL) of one sparse forward on `batch` [B, L]."""
    runtime = model.dsa_runtime
    runtime.indexer_losses = []
    try:
        lm = model(batch, labels=batch, use_cache=False).loss
        indexer = torch.stack(runtime.indexer_losses).mean()
    finally:
        runtime.indexer_losses = None
    return lm, indexer


def sparse_train_with_lm(model, tokenizer, cfg: SparseLMConfig | None = None, *,
                         ids: torch.Tensor | None = None) -> list[dict]:
    """Train backbone (LM loss) and indexers (selected-set KL) together; returns the history."""
    from dsparity.model.corpus import token_sequences

    cfg = cfg or SparseLMConfig()
    if ids is None:
        ids = token_sequences(tokenizer, "train", cfg.sequences, cfg.seq_len, seed=cfg.seed)
    backbone, indexer = split_parameters(model)
    before = [p.requires_grad for p in backbone + indexer]
    for p in backbone + indexer:
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": backbone, "lr": cfg.backbone_lr},
                            {"params": indexer, "lr": cfg.indexer_lr}])
    history = []
    try:
        for step in range(cfg.steps):
            batch = ids[step % ids.shape[0]].unsqueeze(0)
            lm, ix = losses(model, batch)
            opt.zero_grad(set_to_none=True)
            (lm + ix).backward()  # disjoint graphs: each part reaches only its own parameters
            opt.step()
            history.append({"step": step + 1, "stage": "sparse+lm", "lm_loss": lm.item(),
                            "indexer_loss": ix.item()})
    finally:
        for p, flag in zip(backbone + indexer, before, strict=True):
            p.requires_grad_(flag)
    return history
