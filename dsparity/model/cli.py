"""`dsparity warmup`: train a converted model's indexers and show how well they select.

Registered by the main CLI as ``app.command("warmup")(warmup)``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from dsparity.model.loading import DEFAULT_MODEL
from dsparity.model.warmup import WarmupConfig


def _model_name(spec: str) -> str:
    """`local:NAME?key=value` or NAME -> NAME."""
    name = spec.removeprefix("local:")
    return name.split("?", 1)[0]


def warmup(
    model: Annotated[str, typer.Option("--model", "-m", help="local model spec: built-in name, "
                                       "folder, .gguf or hub id")] = DEFAULT_MODEL,
    topk: Annotated[int, typer.Option(min=1, help="index_topk k (keys each query attends to)")] = 256,
    steps: Annotated[int, typer.Option(min=0, help="dense warm-up steps")] = WarmupConfig.steps,
    sparse_steps: Annotated[int, typer.Option(min=0, help="sparse-stage steps")] = WarmupConfig.sparse_steps,
    lengths: Annotated[str, typer.Option(help="training sequence lengths in tokens, comma-separated "
                                         "(e.g. 1024,2048,4096,8192; longer ones cost more)")]
    = ",".join(map(str, WarmupConfig.lengths)),
    train_sequences: Annotated[int, typer.Option(min=1, help="dense-stage training sequences")]
    = WarmupConfig.train_sequences,
    sparse_sequences: Annotated[int, typer.Option(min=0, help="sparse-stage training sequences")]
    = WarmupConfig.sparse_sequences,
    heldout_sequences: Annotated[int, typer.Option(min=1, help="held-out sequences")]
    = WarmupConfig.heldout_sequences,
    init: Annotated[str, typer.Option(help="how the indexers start: 'attention' (one KV group of the "
                                      "model's own heads per layer, where shapes allow) or 'random'")]
    = WarmupConfig.init,
    out: Annotated[Path, typer.Option(help="folder for indexers, report and plot")] = Path(
        "results/warmup"),
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Warm up DSA lightning indexers (dense stage, then sparse stage) on installed text with
    planted retrieval; print held-out needle recall and attention-mass recall. The default recipe
    is the one first use runs; longer ones (more steps, longer sequences) are for a GPU or time."""
    from rich.console import Console
    from rich.table import Table

    from dsparity.errors import DsparityError
    from dsparity.model import DSAConfig, convert_to_dsa, save_indexers, warm_up
    from dsparity.model.indexer_init import default_dsa_config
    from dsparity.model.loading import cache_root, load_causal_lm
    from dsparity.model.metrics import SelectionMetrics
    from dsparity.model.plot import write_warmup_plot
    from dsparity.model.prepare import indexer_cache_path

    console = Console()
    try:
        sizes = tuple(int(v) for v in lengths.split(",") if v.strip())
    except ValueError:
        raise DsparityError("--lengths", repr(lengths), "not a list of token counts",
                            "e.g. --lengths 1024,2048") from None
    if init not in ("attention", "random"):
        raise DsparityError("--init", repr(init), "not a way to start the indexers",
                            "use --init attention or --init random")
    lm, tokenizer, resolved = load_causal_lm(_model_name(model))
    # The heads' start spans every KV group (default_dsa_config); a random start keeps V3.2's shape.
    config = default_dsa_config(lm, topk) if init == "attention" else DSAConfig(index_topk=topk)
    recipe = replace(WarmupConfig(), lengths=sizes, steps=steps, sparse_steps=sparse_steps,
                     train_sequences=train_sequences, sparse_sequences=sparse_sequences,
                     heldout_sequences=heldout_sequences, init=init)
    convert_to_dsa(lm, config)
    report = warm_up(lm, tokenizer, recipe, progress=progress)

    out.mkdir(parents=True, exist_ok=True)
    meta = {"base_model": resolved.name, "base_revision": resolved.revision,
            "report": report.to_dict()}
    save_indexers(lm, out / "indexers.safetensors", base_model=resolved.name,
                  base_revision=resolved.revision, report=report.to_dict())
    # Also fill prepare_dsa's cache, keyed by this recipe (the default recipe is what it loads).
    save_indexers(lm, indexer_cache_path(lm, resolved.revision, recipe,
                                         cache_root() / "indexers"),
                  base_model=resolved.name, base_revision=resolved.revision,
                  report=report.to_dict())
    (out / "report.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    plot = write_warmup_plot(report.history, out / "warmup.svg",
                             f"{resolved.name}: DSA indexer warm-up, k={topk}, L={lengths}")

    table = Table(title=f"held-out, k={topk}, L={lengths}: mass recall over rows t >= k; needle "
                        "recall over answer rows (does top-k hold the copied token?)")
    for col in ("", "KL", "mass recall", "needle recall", "oracle top-k", "window+sink"):
        table.add_column(col, justify="right")
    rows = [("untrained", report.start), ("warmed up", report.final)]
    if "metrics" in report.init:
        rows.insert(1, ("from the model's heads", SelectionMetrics(**report.init["metrics"], rows=0)))
    for label, m in rows:
        table.add_row(label, f"{m.kl:.3f}", f"{m.recall:.3f}", _fmt(m.needle),
                      f"{m.oracle:.3f} / {_fmt(m.needle_oracle)}",
                      f"{m.window_sink:.3f} / {_fmt(m.needle_window)}")
    console.print(table)
    f = report.final
    console.print(f"KL {report.start.kl:.2f} -> {f.kl:.2f}; needle recall {_fmt(report.start.needle)} -> "
                  f"{_fmt(f.needle)} (oracle {_fmt(f.needle_oracle)}, window+sink {_fmt(f.needle_window)}); "
                  f"wall {report.timings['total']:.0f} s")
    if report.init.get("reason"):
        console.print(f"indexers started from random weights: {report.init['reason']}")
    weak = [i for i, m in enumerate(report.per_layer) if m.needle is not None and m.needle < 0.5]
    if weak:
        console.print(f"layers whose top-k misses the needle on most answer rows: {weak}")
    console.print(f"wrote {out / 'indexers.safetensors'}, {out / 'report.json'}, {plot}")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
