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
    FailOn,
    Fresh,
    Include,
    Judge,
    Limit,
    Margin,
    NoCache,
    OutDir,
    Prices,
    Repeats,
    Size,
    Suite,
    TaskNames,
    Temperature,
    TopP,
    app,
    command_choices,
    console,
    existing_store,
    load_selected_tasks,
    out,
    pct,
)
from dsparity.errors import DsparityError
from dsparity.evals.accounting.pricing import load_prices
from dsparity.evals.serving.served import served_default
from dsparity.evals.specs import DEFAULT_CANDIDATE


@app.command()
def run(
    model: Annotated[str, typer.Option("--model", help="Model spec, e.g. local:smollm2-135m-instruct")],
    suite: Suite = None, tasks: TaskNames = None, limit: Limit = None, repeats: Repeats = 1,
    seed: Annotated[int, typer.Option(help="Seed for sampled decoding")] = 0,
    temperature: Temperature = None, top_p: TopP = None,
    db: Db = None, include: Include = None, size: Size = None, budget: Budget = None, prices: Prices = None,
    judge: Judge = None, fresh: Fresh = False, no_cache: NoCache = False,
) -> None:
    """Run one model over tasks, store every sample, grade it. Re-running resumes."""
    from dsparity.evals.runner import RunSettings, execute_run
    from dsparity.evals.specs import parse_spec
    from dsparity.evals.storage.store import Store

    spec = parse_spec(model, source="--model")
    task_specs = load_selected_tasks(suite, tasks, limit, include, size)
    settings = RunSettings(suite=suite or tasks or DEFAULT_SUITE, limit=limit, repeats=repeats,
                           seed=seed, temperature=temperature, top_p=top_p, fresh=fresh,
                           cache=not no_cache, judge=judge, budget=budget, prices=load_prices(prices),
                           command=command_choices(suite, tasks, include, size, budget, prices))
    _note_sampling(settings)

    async def go():
        from dsparity.evals.backends import make_backend
        from dsparity.evals.graders.judge import preflight_judges
        from dsparity.evals.runner import preflight

        # the judges first: a wrong judge fails in seconds, before a local model loads
        await preflight_judges([(t.name, t.grader, t.settings) for t in task_specs], judge)
        backend = make_backend(spec)
        await backend.start()  # validate the model before the store is touched
        try:
            await preflight(backend, task_specs)
        except BaseException:
            await backend.close()
            raise
        return await execute_run(spec, task_specs, settings, Store(db), backend=backend)

    result = asyncio.run(go())
    _print_run(result, db, settings)
    _exit_if_budget_stopped([result])

def _note_sampling(settings) -> None:
    """Repeats of greedy decoding are the same answer N times: say so before anything is sent."""
    if settings.repeats > 1 and not settings.temperature:
        console.print(f"[yellow]note:[/] --repeats {settings.repeats} without --temperature > 0 "
                      "repeats each greedy answer (tasks that sample by themselves excepted); "
                      "pass e.g. --temperature 0.8 for independent draws and pass@k", soft_wrap=True)

def _print_run(result, db, settings) -> None:
    from dsparity.evals.stats.pass_rates import describe, pass_at_k_by_task
    from dsparity.evals.storage.store import Store

    verb = "resumed" if result.resumed else "created"
    out.print(f"run {result.run_id} ({verb}): {result.sent} requests sent, {result.from_cache} from "
              f"cache, {result.skipped} already answered, {result.errors} errors"
              + (f", cost {result.cost:.4f}" if result.cost else ""))
    if not settings.cache and result.resumed and not result.sent and result.skipped:
        console.print("[yellow]note:[/] --no-cache sends only what this run has not answered yet; "
                      "add --fresh for a new run that asks the model again", soft_wrap=True)
    grades = Store(db).grades(result.run_id)
    by_task: dict[str, list[float]] = {}
    for k, g in grades.items():
        by_task.setdefault(k.task, []).append(g["score"])
    passes = pass_at_k_by_task([(k.task, k.doc_id, g["passed"]) for k, g in grades.items()],
                               settings.repeats)
    for task, scores in sorted(by_task.items()):
        rates = f"; {describe(passes[task])}" if task in passes else ""
        out.print(f"  {task}: {100 * sum(scores) / len(scores):.1f}% of {len(scores)}{rates}")
    if result.grade_errors:
        console.print(f"[yellow]not graded:[/] {result.grade_errors} answers (the judge gave no "
                      "verdict); stored as grading errors, never scored, graded again when this "
                      "command runs again", soft_wrap=True)

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
    repeats: Repeats = 1, seed: int = 0, temperature: Temperature = None, top_p: TopP = None,
    db: Db = None, include: Include = None,
    size: Size = None, margin: Margin = None, out_dir: OutDir = Path("results/reports"),
    budget: Budget = None, prices: Prices = None, judge: Judge = None, fresh: Fresh = False,
    no_cache: NoCache = False,
    fail_on: Annotated[FailOn | None, typer.Option(
        "--fail-on", help="Exit 1 when the overall verdict is this or worse (a CI gate); without it "
                          "the exit code is 0 whatever the verdict")] = None,
) -> None:
    """Run both models on the same items, grade, pair, and write the parity report."""
    from dsparity.evals.runner import RunSettings
    from dsparity.evals.specs import parse_spec

    cand_specs = [parse_spec(c, source="--candidate") for c in (candidate or [DEFAULT_CANDIDATE])]
    base_spec = parse_spec(baseline, source="--baseline") if baseline else None
    task_specs = load_selected_tasks(suite, tasks, limit, include, size)
    settings = RunSettings(suite=suite or tasks or DEFAULT_SUITE, limit=limit, repeats=repeats,
                           seed=seed, temperature=temperature, top_p=top_p, fresh=fresh,
                           cache=not no_cache, judge=judge, budget=budget, prices=load_prices(prices),
                           command=command_choices(suite, tasks, include, size, budget, prices))
    _note_sampling(settings)
    with served_default(console.print) if base_spec is None else contextlib.nullcontext(base_spec) as served:
        verdicts = asyncio.run(_compare(cand_specs, served, task_specs, settings, db, margin, out_dir,
                                        on_ready=lambda: _print_power(task_specs, margin)))
    if fail_on is not None and any(fails(v, fail_on.value) for v in verdicts):
        raise typer.Exit(1)

def fails(verdict: str, level: str) -> bool:
    """Is `verdict` at or below `level` on better > equivalent > inconclusive > worse > materially?"""
    order = ["materially_worse", "worse", "inconclusive", "equivalent", "better"]
    return order.index(verdict) <= order.index(level)

def _print_power(task_specs, margin) -> None:
    """Before anything is sent: what each task can resolve, and a warning where it cannot decide."""
    from dsparity.evals.stats.power import plan

    for row in plan(task_specs, margin=margin):
        if row.warning:
            console.print(f"[yellow]power:[/] {row.task}: {row.warning}", soft_wrap=True)
        elif row.resolution is not None:
            console.print(f"power: {row.task}: {row.n} items resolve +-{100 * row.resolution:.1f} points "
                          f"(margin +-{100 * row.margin:g}); a loss of {100 * row.mde:.0f}+ points is "
                          "found with 80% power", soft_wrap=True)

async def _compare(cand_specs, base_spec, task_specs, settings, db, margin, out_dir,
                   on_ready=None) -> list[str]:
    """One comparison per candidate against the same baseline (its run resumes, never re-asks);
    with several candidates the first report gains the side-by-side section (report/modes.py)."""
    from dsparity.evals.comparison.flow import run_comparison
    from dsparity.evals.storage.store import Store

    store = lambda: Store(db)  # noqa: E731  (opened once the first backends pass their preflight)
    comparisons = []
    for i, cand_spec in enumerate(cand_specs):
        store, outcome = await run_comparison(cand_spec, base_spec, task_specs, settings,
                                              store, margin, log=console.print, on_ready=on_ready,
                                              fresh_baseline=i == 0)
        on_ready = None  # once, before the first comparison
        _exit_if_budget_stopped([outcome.candidate, outcome.baseline])
        comparisons.append(outcome.comparison)
    if len(comparisons) > 1:
        from dsparity.evals.report.modes import side_by_side

        recall = await asyncio.to_thread(_modes_recall, store, cand_specs, comparisons)
        comparisons[0]["modes"] = side_by_side(comparisons, recall)
        comparisons[0]["modes"]["reproduce"] = _reproduce_all(comparisons)
    for comparison in comparisons:
        _write_report(store, comparison, out_dir)
    if len(comparisons) > 1:
        _print_modes(comparisons[0]["modes"])
    return [c["overall"]["verdict"] for c in comparisons]

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
    from dsparity.evals.logprobs import prompt_of

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
        messages = [r["request"].get("messages") or prompt_of(r["request"]) for r in rows[:prompts]]
        console.print(f"[bold]recall[/] {spec.label}: attention mass kept on {len(messages)} prompt(s)")
        backend = make_backend(spec)
        try:
            backend.load()
            recall[run_id] = backend.selection_recall(messages) if messages else None
        finally:
            backend.model = None
    return recall

def _print_modes(section: dict) -> None:
    from dsparity.evals.report import score_text

    table = Table(title=f"side by side against {section['baseline']['label']}", caption="scores in %; "
                  "fidelity rows: mean log-prob per token (nats)")
    table.add_column("task")
    table.add_column("baseline")
    for col in section["columns"]:  # the mode names the column; labels are in the reports
        table.add_column(col["mode"] + (f" k={col['topk']}" if col["topk"] else ""))
    for row in section["tasks"]:
        table.add_row(row["task"], score_text(row["baseline"], row["unit"]),
                      *[score_text(v, row["unit"]) for v in row["modes"]])
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
    out.print(f"{comparison['candidate']['label']}\n  vs {comparison['baseline']['label']}",
              soft_wrap=True, markup=False, highlight=False)
    for line in comparison_lines(comparison) + sampling_lines(comparison):
        out.print(line, soft_wrap=True, markup=False, highlight=False)
    out.print(f"overall: {overall['verdict']} ({overall['why']})", soft_wrap=True, markup=False)
    out.print(f"report: {paths['html']}\n        {paths['md']}\n        {paths['json']}")

def comparison_lines(comparison: dict) -> list[str]:
    """The per-row table in at most 80 columns: scores in points; fidelity buckets, in mean
    log-prob per token, indented under their task; the CI of the difference; the verdict."""
    head = ("task", "n", "cand", "base", "diff", "95% CI", "verdict")
    rows: list[tuple[str, ...] | str] = []
    parent = None
    for t in comparison["tasks"]:
        nats = t.get("unit", "points") != "points"
        fmt = _nat if nats else pct
        name = t["task"]
        if t.get("parent"):
            if t["parent"] != parent:
                rows.append(f"{t['parent']} ({t['unit']}, by tokens of context)")
            parent, name = t["parent"], "  " + name[len(t["parent"]):].strip()
        ci = t.get("ci95") or [None, None]
        rows.append((name, str(t["n"]), fmt(t["mean_a"]), fmt(t["mean_b"]), fmt(t["diff"], True),
                     f"[{fmt(ci[0], True)},{fmt(ci[1], True)}]", t["verdict"]))
    cells = [head, *[r for r in rows if isinstance(r, tuple)]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    # A name that would push the line past 80 columns goes on a line of its own, whole.
    widths[0] = min(widths[0], max(len(head[0]), 80 - sum(widths[1:]) - 2 * (len(head) - 1)))

    def line(r) -> str:  # text columns left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    lines = [line(head)]
    for r in rows:
        if isinstance(r, str):
            lines.append(r)
        elif len(r[0]) > widths[0]:
            lines += [r[0], line(("", *r[1:]))]
        else:
            lines.append(line(r))
    return lines + ["scores in %, diff in points; fidelity: mean log-prob per token, diff in nats"]

def sampling_lines(comparison: dict) -> list[str]:
    """pass@k per task (several draws per item) and answers left ungraded by the judge."""
    from dsparity.evals.stats.pass_rates import describe

    lines = [f"{t['task']}: candidate {describe(t['pass_at_k']['candidate'])}; "
             f"baseline {describe(t['pass_at_k']['baseline'])}"
             for t in comparison["tasks"] if t.get("pass_at_k")]
    if lines:
        lines.insert(0, "pass@k over each item's draws (the table's n counts items, not draws):")
    errors = comparison.get("grade_errors") or {}
    ungraded = {side: sum(errors.get(side, {}).values()) for side in ("candidate", "baseline")}
    if any(ungraded.values()):
        lines.append(f"not graded (no judge verdict; graded again on the next run): candidate "
                     f"{ungraded['candidate']}, baseline {ungraded['baseline']} answers")
    return lines

def _nat(v, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    text = f"{v:+.3f}" if signed else f"{v:.3f}"
    return "+0.000" if text == "-0.000" else text

@app.command()
def report(
    candidate_run: Annotated[str, typer.Argument(help="Run id of the candidate")],
    baseline_run: Annotated[str, typer.Argument(help="Run id of the baseline")],
    margin: Margin = None, db: Db = None, out_dir: OutDir = Path("results/reports"), judge: Judge = None,
) -> None:
    """Re-make a comparison from two stored runs (e.g. with a new margin) without re-running."""
    from dsparity.evals.comparison.pairing import compare_runs

    store = existing_store(db)
    _preflight_judges(store.run(candidate_run), judge, grading=False, pairwise=True)
    comparison = compare_runs(store, candidate_run, baseline_run, margin=margin, judge=judge)
    _write_report(store, comparison, out_dir)

@app.command()
def grade(
    run_id: Annotated[str, typer.Argument(help="Run id")], db: Db = None, judge: Judge = None,
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
    run = store.run(run_id)
    _preflight_judges(run, overrides.get("judge"))
    with override_settings(overrides):
        n = grade_run(store, run["id"], replace=True)
    ungraded = len(store.grade_errors(run["id"]))
    out.print(f"graded {n} samples" + (f"; {ungraded} not graded (no judge verdict: stored as "
                                       "grading errors, graded again next time)" if ungraded else ""))

def _preflight_judges(run: dict, judge: str | None, *, grading: bool = True, pairwise: bool = False) -> None:
    """The judges a stored run's tasks need, reachable before anything is graded or judged."""
    from dsparity.evals.graders.judge import preflight_judges

    tasks = [(name, info["grader"], info.get("settings") or {}) for name, info in run["tasks"].items()]
    asyncio.run(preflight_judges(tasks, judge, grading=grading, pairwise=pairwise))

@app.command()
def runs(db: Db = None) -> None:
    """List stored runs: samples stored (errors among them) against those the run plans."""
    store = existing_store(db)
    counts = store.sample_counts()
    table = Table()
    for col in ("run", "model", "suite", "status", "samples", "errors", "planned", "created"):
        number = col in ("samples", "errors", "planned")
        table.add_column(col, justify="right" if number else "left", no_wrap=number or col == "run",
                         min_width=12 if col == "run" else None,  # ids get copied whole
                         overflow="fold")  # a narrow terminal folds labels rather than cutting them
    for r in store.list_runs():
        stored, errors = counts.get(r["id"], (0, 0))
        planned = sum(int(t.get("n_items") or 0) for t in r["tasks"].values()) * \
            int((r["settings"] or {}).get("repeats") or 1)
        table.add_row(r["id"], r["label"], r["suite"], r["status"], str(stored), str(errors), str(planned),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])))
    out.print(table)
