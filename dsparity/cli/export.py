"""`dsparity export`: one stored run's samples as JSONL or Parquet, in lm-eval's per-sample shape."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from dsparity.cli.base import Db, app, console, existing_store


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix will do)")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="File format")] = ExportFormat.jsonl,
    out: Annotated[Path | None, typer.Option(
        "--out", help="File to write, - for standard output (jsonl); by default "
                      "results/exports/run-RUN.FORMAT")] = None,
    db: Db = None,
) -> None:
    """Write a run's samples, one row each: lm-eval's per-sample fields (doc_id, doc, target,
    arguments, resps, filtered_resps, metric values) and dsparity's (task, repeat, grade, error,
    tokens, latency, model spec). Secrets are masked."""
    from dsparity.evals.storage.export import write

    store = existing_store(db)
    run_id = store.run(run_id)["id"]  # an unknown id: one line, before any file is made
    if str(out) == "-":
        if fmt is ExportFormat.parquet:
            from dsparity.errors import DsparityError

            raise DsparityError("--out", "-", "parquet is not written to standard output",
                                "give a file name, or use --format jsonl")
        path = None
    else:
        path = out or Path("results") / "exports" / f"run-{run_id}.{fmt.value}"
    n, where = write(store, run_id, fmt.value, path, stdout=sys.stdout)
    console.print(f"exported {n} samples of run {run_id} to {where}", soft_wrap=True, highlight=False)
