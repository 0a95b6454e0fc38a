"""`dsparity jobs run|run-due|daemon|history`: scheduled comparison jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsparity.cli.base import (
    Db,
    console,
    existing_store,
    jobs_app,
    out,
)
from dsparity.errors import DsparityError
from dsparity.redact import redact

Now = Annotated[str | None, typer.Option(
    "--now", help="Pretend it is this time (ISO 8601, e.g. 2026-01-02T03:00:00+00:00): for tests "
                  "and backfills")]

Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars")]

def _parse_now(now: str | None) -> float | None:
    from datetime import UTC, datetime

    if now is None:
        return None
    try:
        moment = datetime.fromisoformat(now)
    except ValueError:
        raise DsparityError("--now", repr(now), "not an ISO 8601 time", "e.g. 2026-01-02T03:00:00+00:00") \
            from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

@jobs_app.command("run")
def jobs_run(
    file: Annotated[Path, typer.Argument(help="Job file (YAML)")], db: Db = None, quiet: Quiet = False,
) -> None:
    """Run one job now and record it in the job's history (exit 1: drift or regression, 4: failed)."""
    from dsparity.evals.jobs import load_job, run_job
    from dsparity.evals.storage.store import Store

    job = load_job(file)
    outcome = run_job(Store(db), job, trigger="manual", log=console.print, show_progress=not quiet)
    if outcome.status == "skipped":
        raise DsparityError(f"job {job.name}", "lease", "is running in another process",
                            "wait for it to finish")
    out.print(f"job {job.name}: run {outcome.job_run} {outcome.status}"
              + (f", verdict {outcome.verdict}, comparison {outcome.comparison_id}"
                 if outcome.verdict else "") + (f", cause: {outcome.cause}" if outcome.cause else ""),
              highlight=False, soft_wrap=True)
    raise typer.Exit(outcome.exit_code)

@jobs_app.command("run-due")
def jobs_run_due(
    folder: Annotated[Path, typer.Argument(help="Folder of job files")], db: Db = None,
    now: Now = None, quiet: Quiet = False,
) -> None:
    """Run every job whose latest cron slot has no run yet; call it from cron, a systemd timer
    or a Kubernetes CronJob. Exit: 0 fine, 1 drift or regression, 4 a run failed."""
    from dsparity.evals.jobs import run_due
    from dsparity.evals.storage.store import Store

    outcomes, problems = run_due(Store(db), folder, now=_parse_now(now), log=console.print,
                                 show_progress=not quiet)
    for p in problems:
        console.print(f"[red]broken job file:[/] {p.line()}", highlight=False, soft_wrap=True)
    ran = [o for o in outcomes if o.status != "skipped"]
    for o in ran:
        out.print(f"job {o.job}: run {o.job_run} {o.status}"
                  + (f", verdict {o.verdict}" if o.verdict else "")
                  + (f", {len(o.drift)} drift event(s)" if o.drift else "")
                  + (f", cause: {o.cause}" if o.cause else ""), highlight=False, soft_wrap=True)
    if not ran:
        out.print("no job due")
    code = max([o.exit_code for o in outcomes] + [0])
    if problems and code == 0:
        code = 2
    raise typer.Exit(code)

@jobs_app.command("daemon")
def jobs_daemon(folder: Annotated[Path, typer.Argument(help="Folder of job files")], db: Db = None) -> None:
    """Run due jobs forever (for machines without cron); re-reads the folder at every wake-up."""
    from dsparity.evals.jobs import daemon
    from dsparity.evals.storage.store import Store

    console.print(f"dsparity jobs daemon: watching {folder}")
    daemon(Store(db), folder, log=console.print)

@jobs_app.command("history")
def jobs_history(name: Annotated[str | None, typer.Argument(help="Job name [default: all]")] = None,
                 db: Db = None) -> None:
    """A job's past runs: when, outcome, verdict, drift events, cause."""
    store = existing_store(db)
    table = Table()
    for col in ("job", "run", "trigger", "started", "status", "verdict", "drift", "cause"):
        table.add_column(col, overflow="fold")
    for r in store.job_runs(name):
        table.add_row(r["job"], r["id"], r["trigger"],
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["started_at"])), r["status"],
                      r["verdict"] or "", str(len(r["drift"] or [])), redact(r["cause"] or ""))
    out.print(table)
