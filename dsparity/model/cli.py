"""`dsparity warmup`: train a converted model's indexers and show how well they select.

Registered by the main CLI as ``app.command("warmup")(warmup)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dsparity.model.loading import DEFAULT_MODEL


def _model_name(spec: str) -> str:
    """`local:NAME?key=value` or NAME -> NAME."""
    name = spec.removeprefix("local:")
    return name.split("?", 1)[0]


def warmup(
    model: Annotated[str, typer.Option("--model", "-m", help="local model spec: built-in name, "
                                       "folder, .gguf or hub id")] = DEFAULT_MODEL,
    topk: Annotated[int, typer.Option(help="index_topk k (keys each query attends to)")] = 256,
    steps: Annotated[int, typer.Option(help="dense warm-up steps")] = 200,
    sparse_steps: Annotated[int, typer.Option(help="sparse-stage steps after warm-up")] = 0,
    seq_len: Annotated[int, typer.Option(help="training / evaluation sequence length")] = 2048,
    train_sequences: Annotated[int, typer.Option(help="training sequences (dense targets "
                                                 "are cached, ~10 s each)")] = 6,
    heldout_sequences: Annotated[int, typer.Option(help="held-out sequences")] = 2,
    out: Annotated[Path, typer.Option(help="folder for indexers, report and plot")] = Path(
        "results/warmup"),
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Warm up DSA lightning indexers on installed Python sources; print held-out metrics."""
    from rich.console import Console
    from rich.table import Table

    from dsparity.errors import DsparityError
    from dsparity.model import DSAConfig, WarmupConfig, convert_to_dsa, save_indexers, warm_up
    from dsparity.model.loading import cache_root, load_causal_lm
    from dsparity.model.plot import write_warmup_plot
    from dsparity.model.prepare import indexer_cache_path

    console = Console()
    try:
        lm, tokenizer, resolved = load_causal_lm(_model_name(model))
        config = DSAConfig(index_topk=topk)
        recipe = WarmupConfig(seq_len=seq_len, train_sequences=train_sequences,
                              heldout_sequences=heldout_sequences, steps=steps,
                              sparse_steps=sparse_steps)
        convert_to_dsa(lm, config)
        report = warm_up(lm, tokenizer, recipe, progress=progress)
    except (DsparityError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc

    out.mkdir(parents=True, exist_ok=True)
    meta = {"base_model": resolved.name, "base_revision": resolved.revision,
            "report": report.to_dict()}
    save_indexers(lm, out / "indexers.safetensors", base_model=resolved.name,
                  base_revision=resolved.revision, report=report.to_dict())
    # Also fill prepare_dsa's cache, keyed by this recipe (the default recipe is what it loads).
    save_indexers(lm, indexer_cache_path(lm, resolved.revision, config, recipe,
                                         cache_root() / "indexers"),
                  base_model=resolved.name, base_revision=resolved.revision,
                  report=report.to_dict())
    (out / "report.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    plot = write_warmup_plot(report.history, out / "warmup.svg",
                             f"{resolved.name}: DSA indexer warm-up, k={topk}, L={seq_len}")

    table = Table(title=f"held-out, L={seq_len}, k={topk}, rows t >= k, mean over layers")
    for col in ("", "KL", "recall", "oracle top-k", "window+sink"):
        table.add_column(col, justify="right")
    for label, m in (("untrained", report.start), ("warmed up", report.final)):
        table.add_row(label, f"{m.kl:.3f}", f"{m.recall:.3f}", f"{m.oracle:.3f}",
                      f"{m.window_sink:.3f}")
    console.print(table)
    f = report.final
    console.print(f"recall / oracle = {f.recall / f.oracle:.3f}; recall - window+sink = "
                  f"{f.recall - f.window_sink:+.3f}; KL {report.start.kl:.2f} -> {f.kl:.2f}; "
                  f"wall {report.timings['total']:.0f} s")
    console.print(f"wrote {out / 'indexers.safetensors'}, {out / 'report.json'}, {plot}")
