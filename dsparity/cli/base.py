"""What every `dsparity` command shares: the Typer apps, consoles, option types, helpers."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dsparity.errors import DsparityError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evidence for (or against) parity of a sparse-attention model with its "
                       "dense baseline.")
tasks_app = typer.Typer(no_args_is_help=True, help="List and validate task suites.")
app.add_typer(tasks_app, name="tasks")
jobs_app = typer.Typer(no_args_is_help=True, help="Scheduled comparison jobs (YAML job files).")
app.add_typer(jobs_app, name="jobs")
console = Console(stderr=True)  # progress, logs and errors
out = Console()  # results

DEFAULT_SUITE = "default"

Db = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL of the results store "
                                        "[default: sqlite:///results/dsparity.db or $DSPARITY_DB]")]

Suite = Annotated[str | None, typer.Option("--suite", help="Comma-separated suites [default: default]")]

TaskNames = Annotated[str | None, typer.Option("--tasks", help="Comma-separated task names")]

Limit = Annotated[int | None, typer.Option("--limit", min=1, help="At most N items per task")]

Repeats = Annotated[int, typer.Option(
    "--repeats", min=1, help="Samples per item; with --temperature > 0 each is its own seeded draw "
                             "and pass@k is reported (k = 1, 5, 10 up to N)")]

Temperature = Annotated[float | None, typer.Option(
    "--temperature", min=0.0, help="Sampling temperature for every generation request, both models "
                                   "(0 = greedy) [default: each task's own, greedy unless it samples]")]


def _top_p(value: float | None) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"{value} is not in (0, 1]: top-p is the probability mass sampled from")
    return value


TopP = Annotated[float | None, typer.Option(
    "--top-p", callback=_top_p, help="Nucleus sampling mass in (0, 1] for every generation request "
                                     "[default: 1.0]")]

NoCache = Annotated[bool, typer.Option(
    "--no-cache", help="Send every request to the model: answers in the response cache are not "
                       "reused (the fresh ones replace them). For moving model aliases; with --fresh "
                       "to ask again what a stored run already answered")]

Fresh = Annotated[bool, typer.Option(
    "--fresh", help="Start a new run even if this configuration has one; later runs without "
                    "--fresh resume the newest")]

Include = Annotated[list[Path] | None, typer.Option("--include", help="Extra task folder(s)")]

Size = Annotated[int | None, typer.Option(
    "--size", min=1, help="Items per generated task (reasoning: per task, longctx: per length) "
                          "[default: each task's own]")]

def _positive_margin(value: float | None) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"{value} is not in (0, 1]: the margin is a difference in score "
                                 "units, e.g. 0.05 for 5 points")
    return value


Margin = Annotated[float | None, typer.Option(
    "--margin", callback=_positive_margin,
    help="Equivalence margin in score units (0.05 = 5 points) for every score task [default: each "
         "task's own stated margin, else 0.05; fidelity tasks keep theirs, in nats per token]")]

OutDir = Annotated[Path, typer.Option("--out", help="Folder for the reports")]

Judge = Annotated[str | None, typer.Option(
    "--judge", help="Model spec of the judge for judge graders and pairwise judging, over each "
                    "task's own judge [default: the task's metadata.dsparity.judge, else "
                    "$DSPARITY_JUDGE]")]

Budget = Annotated[float | None, typer.Option(
    "--budget", min=0.0, help="Stop sending requests once a run has cost this much (price currency)")]

Prices = Annotated[Path | None, typer.Option(
    "--prices", help="YAML price table that adds to or overrides the built-in one")]


class FailOn(enum.StrEnum):
    materially_worse = "materially_worse"
    worse = "worse"
    inconclusive = "inconclusive"


def split_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None

def load_selected_tasks(suite: str | None, tasks: str | None, limit: int | None, include: list[Path] | None,
                size: int | None = None):
    from dsparity.evals.tasks import load_tasks

    for folder in include or []:
        if not folder.is_dir():
            raise DsparityError("--include", str(folder), "no such task folder",
                                "give a folder that holds task YAML files")
    suites = split_list(suite) or (None if tasks else [DEFAULT_SUITE])
    return load_tasks(suites=suites, names=split_list(tasks), limit=limit, include=include, size=size)

def command_choices(suite: str | None, tasks: str | None, include: list[Path] | None, size: int | None,
                    budget: float | None = None, prices: Path | None = None) -> dict:
    """What a run records of how it was chosen, for the report's reproduce line (RunSettings.command):
    the selection as typed, folders made absolute (the line works from any directory)."""
    return {"suite": suite, "tasks": tasks, "include": [str(Path(f).resolve()) for f in include or []],
            "size": size, "budget": budget, "prices": str(Path(prices).resolve()) if prices else None}

def existing_store(db: str | None):
    from dsparity.evals.storage.store import Store, default_url

    url = db or default_url()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise DsparityError("--db", url, "no results database there", "run `dsparity run` or "
                            "`dsparity compare` first, or pass --db")
    return Store(url)

def pct(v, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
