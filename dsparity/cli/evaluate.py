"""`dsparity run`, `compare`, `report`, `grade`, `runs`: evaluations and their reports."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsparity.cli.base import (
    DEFAULT_SUITE,
    Budget,
    Db,
    Include,
    Judge,
    Limit,
    Margin,
    OutDir,
    Prices,
    Repeats,
    Size,
    Suite,
    TaskNames,
    app,
    console,
    existing_store,
    load_selected_tasks,
    out,
    pct,
)
from dsparity.errors import DsparityError
from dsparity.evals.pricing import load_prices
from dsparity.evals.served import served_default
from dsparity.evals.specs import DEFAULT_CANDIDATE


@app.command()
def run(
    model: Annotated[str, typer.Option("--model", help="Model spec, e.g. local:smollm2-135m-instruct")],
    suite: Suite = None, tasks: TaskNames = None, limit: Limit = None, repeats: Repeats = 1,
    seed: Annotated[int, typer.Option(help="Seed for sampled decoding")] = 0,
    db: Db = None, include: Include = None, size: Size = None, budget: Budget = None, prices: Prices = None,
    fresh: Annotated[bool, typer.Option(help="Start a new run even if this one exists")] = False,
) -> None:
    """Run one model over tasks, store every sample, grade it. Re-running resumes."""
    from dsparity.evals.runner import RunSettings, execute_run
    from dsparity.evals.specs import parse_spec
    from dsparity.evals.store import Store

    spec = parse_spec(model, source="--model")
    task_specs = load_selected_tasks(suite, tasks, limit, include, size)
    settings = RunSettings(suite=suite or tasks or DEFAULT_SUITE, limit=limit, repeats=repeats,
                           seed=seed, fresh=fresh, budget=budget, prices=load_prices(prices))

    async def go():
        from dsparity.evals.backends import make_backend

        backend = make_backend(spec)
        await backend.start()  # validate the model before the store is touched
        return await execute_run(spec, task_specs, settings, Store(db), backend=backend)

    result = asyncio.run(go())
    _print_run(result, db)
    _exit_if_budget_stopped([result])

def _print_run(result, db) -> None:
    from dsparity.evals.store import Store

    verb = "resumed" if result.resumed else "created"
    out.print(f"run {result.run_id} ({verb}): {result.sent} requests sent, {result.from_cache} from "
              f"cache, {result.skipped} already answered, {result.errors} errors"
              + (f", cost {result.cost:.4f}" if result.cost else ""))
    grades = Store(db).grades(result.run_id)
    by_task: dict[str, list[float]] = {}
    for k, g in grades.items():
        by_task.setdefault(k.task, []).append(g["score"])
    for task, scores in sorted(by_task.items()):
        out.print(f"  {task}: {100 * sum(scores) / len(scores):.1f}% of {len(scores)}")

@app.command()
def compare(
    candidate: Annotated[list[str] | None, typer.Option(
        help="Candidate model spec; repeat it to compare several (e.g. one per attention mode: "
             "attention=dsa|window|block|oracle at the same topk) against one baseline, side by "
             f"side [default: {DEFAULT_CANDIDATE}]")] = None,
    baseline: Annotated[str | None, typer.Option(
        help="Baseline model spec [default: the dense default model served by `dsparity serve` "
             "on loopback, started and stopped by this command]")] = None,
    suite: Suite = None, tasks: TaskNames = None, limit: Limit = None,
    repeats: Repeats = 1, seed: int = 0, db: Db = None, include: Include = None,
    size: Size = None, margin: Margin = 0.05, out_dir: OutDir = Path("results/reports"),
    budget: Budget = None, prices: Prices = None,
) -> None:
    """Run both models on the same items, grade, pair, and write the parity report."""
    from dsparity.evals.runner import RunSettings
    from dsparity.evals.specs import parse_spec

    cand_specs = [parse_spec(c, source="--candidate") for c in (candidate or [DEFAULT_CANDIDATE])]
    base_spec = parse_spec(baseline, source="--baseline") if baseline else None
    task_specs = load_selected_tasks(suite, tasks, limit, include, size)
    with served_default(console.print) if base_spec is None else contextlib.nullcontext(base_spec) as served:
        settings = RunSettings(suite=suite or tasks or DEFAULT_SUITE, limit=limit,
                               repeats=repeats, seed=seed, budget=budget, prices=load_prices(prices))
        asyncio.run(_compare(cand_specs, served, task_specs, settings, db, margin, out_dir))

async def _compare(cand_specs, base_spec, task_specs, settings, db, margin, out_dir) -> None:
    """One comparison per candidate against the same baseline (its run resumes, never re-asks);
    with several candidates the first report gains the side-by-side section (modes_report.py)."""
    from dsparity.evals.comparison_flow import run_comparison
    from dsparity.evals.store import Store

    store = lambda: Store(db)  # noqa: E731  (opened once the first backends pass their preflight)
    comparisons = []
    for cand_spec in cand_specs:
        store, outcome = await run_comparison(cand_spec, base_spec, task_specs, settings,
                                              store, margin, log=console.print)
        _exit_if_budget_stopped([outcome.candidate, outcome.baseline])
        comparisons.append(outcome.comparison)
    if len(comparisons) > 1:
        from dsparity.evals.modes_report import side_by_side

        recall = await asyncio.to_thread(_modes_recall, store, cand_specs, comparisons)
        comparisons[0]["modes"] = side_by_side(comparisons, recall)
        comparisons[0]["modes"]["reproduce"] = _reproduce_all(comparisons)
    for comparison in comparisons:
        _write_report(store, comparison, out_dir)
    if len(comparisons) > 1:
        _print_modes(comparisons[0]["modes"])

def _reproduce_all(comparisons) -> str:
    """The one command behind a side-by-side report: the first comparison's, every candidate."""
    import shlex

    from dsparity.evals.report import reproduce_command

    parts = shlex.split(reproduce_command(comparisons[0]))
    at = parts.index("--candidate") + 2
    extra = [x for c in comparisons[1:] for x in ("--candidate", c["candidate"]["model_spec"])]
    return shlex.join(parts[:at] + extra + parts[at:])

def _modes_recall(store, cand_specs, comparisons, prompts: int = 2) -> dict[str, dict | None]:
    """Attention-mass recall of each local sparse candidate on its longest long-context prompts."""
    from dsparity.evals.backends import make_backend

    recall: dict[str, dict | None] = {}
    for spec, comparison in zip(cand_specs, comparisons, strict=True):
        run_id = comparison["candidate"]["id"]
        if spec.kind != "local" or spec.opt("attention", "dense") == "dense":
            recall[run_id] = None
            continue
        longctx = {m["task"] for m in comparison.get("longctx_maps", [])}
        rows = [r for r in store.samples(run_id)
                if r["error"] is None and (not longctx or r["task"] in longctx)]
        rows.sort(key=lambda r: -(r["prompt_tokens"] or 0))
        messages = [r["request"]["messages"] for r in rows[:prompts]]
        console.print(f"[bold]recall[/] {spec.label}: attention mass kept on {len(messages)} prompt(s)")
        backend = make_backend(spec)
        try:
            backend.load()
            recall[run_id] = backend.selection_recall(messages) if messages else None
        finally:
            backend.model = None
    return recall

def _print_modes(section: dict) -> None:
    table = Table(title=f"side by side against {section['baseline']['label']}")
    table.add_column("task")
    table.add_column("baseline")
    for col in section["columns"]:
        table.add_column(f"{col['label']}\n{col['mode']}" + (f" k={col['topk']}" if col["topk"] else ""))
    for row in section["tasks"]:
        table.add_row(row["task"], pct(row["baseline"]), *[pct(v) for v in row["modes"]])
    table.add_row("verdict", "", *[c["verdict"] for c in section["columns"]])
    table.add_row("recall", "", *["n/a" if c["recall"] is None else f"{c['recall']:.3f}"
                                  for c in section["columns"]])
    table.add_row("latency s p50", _num(section["baseline"]["latency_p50"]),
                  *[_num(c["latency_p50"]) for c in section["columns"]])
    out.print(table)

def _num(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"

def _exit_if_budget_stopped(results) -> None:
    stopped = [r for r in results if r.stopped_by_budget]
    if stopped:
        console.print(f"[yellow]stopped:[/] run {stopped[0].run_id} reached its budget "
                      f"(spent {stopped[0].cost:.4f}); re-run with a higher --budget to continue")
        raise typer.Exit(3)

def _write_report(store, comparison, out_dir: Path) -> None:
    from dsparity.evals.report import render

    cid = store.put_comparison(comparison["candidate"]["id"], comparison["baseline"]["id"],
                               comparison["margin"], comparison["alpha"], comparison)
    paths = render(comparison, out_dir, name=f"comparison-{cid}")
    overall = comparison["overall"]
    table = Table(title=f"{comparison['candidate']['label']} vs {comparison['baseline']['label']}")
    for col in ("task", "n", "candidate %", "baseline %", "diff (pts)", "95% CI", "verdict"):
        table.add_column(col)
    for t in comparison["tasks"]:
        ci = t.get("ci95") or [None, None]
        table.add_row(t["task"], str(t["n"]), pct(t["mean_a"]), pct(t["mean_b"]),
                      pct(t["diff"], signed=True),
                      f"[{pct(ci[0], signed=True)}, {pct(ci[1], signed=True)}]", t["verdict"])
    out.print(table)
    out.print(f"overall: {overall['verdict']} (margin ±{100 * comparison['margin']:.1f} points, "
              f"{overall['n']} paired items)")
    out.print(f"report: {paths['html']}\n        {paths['md']}\n        {paths['json']}")

@app.command()
def report(
    candidate_run: Annotated[str, typer.Argument(help="Run id of the candidate")],
    baseline_run: Annotated[str, typer.Argument(help="Run id of the baseline")],
    margin: Margin = 0.05, db: Db = None, out_dir: OutDir = Path("results/reports"), judge: Judge = None,
) -> None:
    """Re-make a comparison from two stored runs (e.g. with a new margin) without re-running."""
    from dsparity.evals.compare import compare_runs

    store = existing_store(db)
    comparison = compare_runs(store, candidate_run, baseline_run, margin=margin, judge=judge)
    _write_report(store, comparison, out_dir)

@app.command()
def grade(
    run_id: Annotated[str, typer.Argument(help="Run id")], db: Db = None,
    judge: Annotated[str | None, typer.Option(
        "--judge", help="Judge model spec for judge graders (overrides the task's; "
                        "default env DSPARITY_JUDGE)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Grader setting KEY=VALUE (YAML value) on top of each task's, "
                      "e.g. timeout_s=20")] = None,
    artifacts: Annotated[Path | None, typer.Option(
        "--artifacts", help="Folder for web screenshots [default: env DSPARITY_ARTIFACTS "
                            "or results/artifacts]")] = None,
) -> None:
    """Re-grade a stored run with the current graders and new settings, without re-generating."""
    import yaml

    from dsparity.evals.graders import override_settings
    from dsparity.evals.runner import grade_run

    overrides: dict = {}
    for item in set_ or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise DsparityError("--set", repr(item), "expected KEY=VALUE", "e.g. --set timeout_s=20")
        overrides[key.strip()] = yaml.safe_load(value)
    if judge:
        from dsparity.evals.specs import parse_spec

        parse_spec(judge, source="--judge")
        overrides["judge"] = judge
    if artifacts:
        overrides["artifact_dir"] = str(artifacts)
    store = existing_store(db)
    with override_settings(overrides):
        n = grade_run(store, store.run(run_id)["id"], replace=True)
    out.print(f"graded {n} samples")

@app.command()
def runs(db: Db = None) -> None:
    """List stored runs."""
    store = existing_store(db)
    table = Table()
    for col in ("run", "model", "suite", "status", "samples", "created"):
        table.add_column(col)
    for r in store.list_runs():
        table.add_row(r["id"], r["label"], r["suite"], r["status"],
                      str(sum(t["n_items"] for t in r["tasks"].values())),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])))
    out.print(table)
