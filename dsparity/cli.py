"""The `dsparity` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dsparity.errors import DsparityError
from dsparity.evals.pricing import load_prices
from dsparity.evals.specs import DEFAULT_CANDIDATE, SERVED_DEFAULT_LABEL
from dsparity.model.loading import DEFAULT_MODEL

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evidence for (or against) parity of a sparse-attention model with its "
                       "dense baseline.")
tasks_app = typer.Typer(no_args_is_help=True, help="List and validate task suites.")
app.add_typer(tasks_app, name="tasks")
console = Console(stderr=True)
out = Console()

DEFAULT_SUITE = "smoke"

Db = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL of the results store "
                                        "[default: sqlite:///results/dsparity.db or $DSPARITY_DB]")]
Suite = Annotated[str | None, typer.Option("--suite", help="Comma-separated suites [default: smoke]")]
TaskNames = Annotated[str | None, typer.Option("--tasks", help="Comma-separated task names")]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="At most N items per task")]
Repeats = Annotated[int, typer.Option("--repeats", min=1, help="Samples per item (sampled decoding)")]
Include = Annotated[list[Path] | None, typer.Option("--include", help="Extra task folder(s)")]
Size = Annotated[int | None, typer.Option(
    "--size", min=1, help="Items per generated task (reasoning: per task, longctx: per length) "
                          "[default: each task's own]")]
Margin = Annotated[float, typer.Option("--margin", min=0.0, max=1.0,
                                       help="Equivalence margin in score units (0.05 = 5 points)")]
OutDir = Annotated[Path, typer.Option("--out", help="Folder for the reports")]
Judge = Annotated[str | None, typer.Option(
    "--judge", help="Model spec of the judge for tasks that ask for one [default: $DSPARITY_JUDGE]")]
Budget = Annotated[float | None, typer.Option(
    "--budget", min=0.0, help="Stop sending requests once a run has cost this much (price currency)")]
Prices = Annotated[Path | None, typer.Option(
    "--prices", help="YAML price table that adds to or overrides the built-in one")]


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _load_tasks(suite: str | None, tasks: str | None, limit: int | None, include: list[Path] | None,
                size: int | None = None):
    from dsparity.evals.tasks import load_tasks

    for folder in include or []:
        if not folder.is_dir():
            raise DsparityError("--include", str(folder), "no such task folder",
                                "give a folder that holds task YAML files")
    suites = _split(suite) or (None if tasks else [DEFAULT_SUITE])
    return load_tasks(suites=suites, names=_split(tasks), limit=limit, include=include, size=size)


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
    task_specs = _load_tasks(suite, tasks, limit, include, size)
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
    task_specs = _load_tasks(suite, tasks, limit, include, size)
    with _served_default() if base_spec is None else contextlib.nullcontext(base_spec) as served:
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
        table.add_row(row["task"], _pct(row["baseline"]), *[_pct(v) for v in row["modes"]])
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
        table.add_row(t["task"], str(t["n"]), _pct(t["mean_a"]), _pct(t["mean_b"]),
                      _pct(t["diff"], signed=True),
                      f"[{_pct(ci[0], signed=True)}, {_pct(ci[1], signed=True)}]", t["verdict"])
    out.print(table)
    out.print(f"overall: {overall['verdict']} (margin ±{100 * comparison['margin']:.1f} points, "
              f"{overall['n']} paired items)")
    out.print(f"report: {paths['html']}\n        {paths['md']}\n        {paths['json']}")


def _pct(v, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


@contextlib.contextmanager
def _served_default():
    """Serve the dense default model on a free loopback port for the duration of a compare."""
    from dsparity.evals.specs import parse_spec
    from dsparity.model.loading import EMBEDDED

    port = _free_port()
    cmd = [sys.executable, "-m", "dsparity.cli", "serve", "--model", f"local:{DEFAULT_MODEL}",
           "--port", str(port), "--name", DEFAULT_MODEL, "--quiet"]
    console.print(f"[bold]baseline server[/] dsparity serve on 127.0.0.1:{port}")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        _wait_healthy(proc, port)
        revision = EMBEDDED[DEFAULT_MODEL].sha256[:16]
        yield parse_spec(f"openai:{DEFAULT_MODEL}@http://127.0.0.1:{port}/v1?label={SERVED_DEFAULT_LABEL}"
                         f"&revision={revision}&concurrency=1&timeout=600")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 600) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise DsparityError("dsparity serve", "baseline server", f"exited with code {proc.returncode}",
                                "see its output above")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json().get("status") == "ok":
                return
        time.sleep(0.5)
    raise DsparityError("dsparity serve", "baseline server", "did not become healthy in time", "")


@app.command()
def report(
    candidate_run: Annotated[str, typer.Argument(help="Run id of the candidate")],
    baseline_run: Annotated[str, typer.Argument(help="Run id of the baseline")],
    margin: Margin = 0.05, db: Db = None, out_dir: OutDir = Path("results/reports"), judge: Judge = None,
) -> None:
    """Re-make a comparison from two stored runs (e.g. with a new margin) without re-running."""
    from dsparity.evals.compare import compare_runs

    store = _existing_store(db)
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
    store = _existing_store(db)
    with override_settings(overrides):
        n = grade_run(store, store.run(run_id)["id"], replace=True)
    out.print(f"graded {n} samples")


@app.command()
def runs(db: Db = None) -> None:
    """List stored runs."""
    store = _existing_store(db)
    table = Table()
    for col in ("run", "model", "suite", "status", "samples", "created"):
        table.add_column(col)
    for r in store.list_runs():
        table.add_row(r["id"], r["label"], r["suite"], r["status"],
                      str(sum(t["n_items"] for t in r["tasks"].values())),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])))
    out.print(table)


def _existing_store(db: str | None):
    from dsparity.evals.store import Store, default_url

    url = db or default_url()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise DsparityError("--db", url, "no results database there", "run `dsparity run` or "
                            "`dsparity compare` first, or pass --db")
    return Store(url)


@app.command()
def serve(
    model: Annotated[str, typer.Option("--model", help="Local model spec")] = f"local:{DEFAULT_MODEL}",
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    name: Annotated[str | None, typer.Option(help="Model id clients use [default: the spec]")] = None,
    quiet: Annotated[bool, typer.Option(help="No access log")] = False,
) -> None:
    """Serve a local model over the OpenAI chat-completions API."""
    import uvicorn

    from dsparity.evals.backends.local import LocalBackend
    from dsparity.evals.server import create_app
    from dsparity.evals.specs import parse_spec

    spec = parse_spec(model, source="--model")
    if spec.kind != "local":
        raise DsparityError("--model", model, "serve needs a local: model",
                            "e.g. local:smollm2-135m-instruct")
    backend = LocalBackend(spec)
    backend.load()
    console.print(f"serving {spec.text} as {name or spec.text!r} on http://{host}:{port}/v1")
    uvicorn.run(create_app(backend, name or spec.text), host=host, port=port,
                log_level="warning" if quiet else "info", access_log=not quiet)


@tasks_app.command("list")
def tasks_list(include: Include = None, size: Size = None) -> None:
    """Suites and tasks with their item counts, lengths and graders (nothing is generated)."""
    from dsparity.evals.taskgen.cache import GenOptions
    from dsparity.evals.tasks import BUILTIN_TASKS, count_items, scan

    dirs = [BUILTIN_TASKS, *(include or [])]
    specs, problems = scan(dirs)
    options = GenOptions.from_env(size=size)
    table = Table()
    for col in ("suite", "task", "items", "grader", "max tokens", "lengths", "about"):
        table.add_column(col, overflow="fold")
    per_suite: dict[str, list] = {}
    for s in sorted(specs.values(), key=lambda s: (s.suite, s.name)):
        n = count_items(s, options)
        per_suite.setdefault(s.suite, []).append((n, s.grader))
        lengths = options.lengths or s.settings.get("lengths")
        table.add_row(s.suite + (" (needs hub)" if s.needs_hub else ""), s.name,
                      "from hub" if n is None else str(n), s.grader,
                      str(s.settings.get("max_tokens") or
                          (s.config.get("generation_kwargs") or {}).get("max_gen_toks", "")),
                      ",".join(_klen(v) for v in lengths) if lengths and "kind" in s.settings else "",
                      str(s.settings.get("description", "")))
    out.print(table)
    for suite, rows in sorted(per_suite.items()):
        known = [n for n, _ in rows if n is not None]
        graders = sorted({g for _, g in rows})
        count = f"{sum(known)} items" if len(known) == len(rows) else "items from the hub"
        out.print(f"suite {suite}: {len(rows)} tasks, {count}, graders: {', '.join(graders)}")
    for p in problems:
        console.print(f"[red]broken:[/] {p.line()}", highlight=False, soft_wrap=True)


def _klen(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


@tasks_app.command("show")
def tasks_show(
    name: Annotated[str, typer.Argument(help="Task name (see `dsparity tasks list`)")],
    include: Include = None, size: Size = None,
    items: Annotated[int, typer.Option("--items", min=0, help="Example items to print")] = 1,
) -> None:
    """One task: file, grader, settings, item count, lengths/depths, and example prompts."""
    import json

    from dsparity.evals.taskgen.cache import GenOptions
    from dsparity.evals.tasks import BUILTIN_TASKS, build_items, scan, select

    dirs = [BUILTIN_TASKS, *(include or [])]
    specs, problems = scan(dirs)
    spec = select(specs, problems, suites=None, names=[name])[0]
    build_items([spec], dirs, limit=None, options=GenOptions.from_env(size=size))
    out.print(f"[bold]{spec.name}[/]  suite {spec.suite}, grader {spec.grader}, {spec.n_docs} items")
    out.print(f"file: {spec.yaml_path}", soft_wrap=True)
    settings = {k: v for k, v in spec.settings.items() if k != "rubric"}
    out.print("settings: " + json.dumps(settings, ensure_ascii=False, default=str), highlight=False,
              soft_wrap=True)
    if "rubric" in spec.settings:
        out.print("judge rubric:\n" + str(spec.settings["rubric"]).rstrip(), highlight=False, soft_wrap=True)
    docs = [it.doc for it in spec.items]
    if docs and "target_tokens" in docs[0]:
        by_length: dict[int, list] = {}
        for d in docs:
            by_length.setdefault(d["target_tokens"], []).append(d)
        for length, rows in sorted(by_length.items()):
            got = [r["length_tokens"] for r in rows]
            depths = [r["depth"] for r in rows if r.get("depth") is not None]
            out.print(f"  length {length}: {len(rows)} items, tokens {min(got)}-{max(got)}"
                      + (f", depths {', '.join(f'{d:.2f}' for d in depths)}" if depths else "")
                      + f" ({rows[0]['tokenizer']})", soft_wrap=True)
    if docs and "generator" in docs[0]:
        gens: dict[str, int] = {}
        for d in docs:
            gens[d["generator"]] = gens.get(d["generator"], 0) + 1
        out.print("generators: " + ", ".join(f"{g} x{n}" for g, n in gens.items())
                  + f"; seed {docs[0]['seed'] // 1000}", highlight=False, soft_wrap=True)
    for item in spec.items[:items]:
        prompt = item.request.messages[-1][1]
        short = prompt if len(prompt) <= 600 else prompt[:300] + f" [... {len(prompt) - 600} chars ...] " \
            + prompt[-300:]
        out.print(f"\n[bold]item {item.doc_id}[/] (doc {item.doc_hash}, max tokens "
                  f"{item.request.max_tokens}) target: {item.target[:120]!r}", soft_wrap=True)
        out.print(short, highlight=False, markup=False, soft_wrap=True)


@app.command("cost-curve")
def cost_curve(
    model: Annotated[str, typer.Option("--model", help="Local model name or folder")] = DEFAULT_MODEL,
    length: Annotated[int, typer.Option(min=64, help="Tokens in the measured pass")] = 8192,
    chunk: Annotated[int, typer.Option(min=1, help="Prefill chunk (tokens per timed forward)")] = 512,
    topk: Annotated[int, typer.Option(min=1, help="DSA top-k")] = 256,
    decode_every: Annotated[int, typer.Option(min=1, help="Decode probe every N positions")] = 1024,
    price: Annotated[float, typer.Option(min=0.0, help="Price of this machine per hour ($)")] = 2.0,
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 1,
    trained: Annotated[bool, typer.Option(
        help="Use warmed-up indexers (prepare_dsa; warms up if not cached) instead of untrained "
             "ones; the cost does not depend on them")] = False,
    out_dir: OutDir = Path("results/cost-curve"),
) -> None:
    """Prefill and decode cost per token vs position, dense vs DSA (table + SVG plot)."""
    import torch

    from dsparity.kernels import cost
    from dsparity.model.loading import load_causal_lm

    torch.set_num_threads(threads)
    console.print(f"loading {model} ...")
    lm, tokenizer, resolved = load_causal_lm(model)
    dsa_model = None
    if trained:
        import copy

        from dsparity.model import prepare_dsa

        dsa_model = prepare_dsa(copy.deepcopy(lm), tokenizer, base_revision=resolved.revision, topk=topk)
    curve = cost.measure(lm, name=model, length=length, chunk=chunk, topk=topk, dsa_model=dsa_model,
                         decode_every=decode_every, price_per_hour=price, progress=console.print)
    paths = cost.write(curve, out_dir)
    out.print(cost.table(curve), highlight=False, soft_wrap=True)
    out.print(cost.summary(curve), highlight=False, soft_wrap=True)
    out.print(f"price assumption: ${price:g} per hour of this machine; report: {paths['html']}",
              highlight=False, soft_wrap=True)


@tasks_app.command("validate")
def tasks_validate(include: Include = None) -> None:
    """Check every task file; report each problem with file, line or field, and the fix.

    Hub tasks are checked as files only (their data needs the hub)."""
    from dsparity.evals.tasks import BUILTIN_TASKS, build_items, scan

    dirs = [BUILTIN_TASKS, *(include or [])]
    specs, problems = scan(dirs)
    offline = [spec for _, spec in sorted(specs.items()) if not spec.needs_hub]
    try:
        build_items(offline, dirs, limit=1)  # all at once: one lm-eval index for the common case
        offline = []
    except DsparityError:
        pass  # at least one is broken: build them one by one to name each
    for spec in offline:
        try:
            build_items([spec], dirs, limit=1)
        except DsparityError as exc:
            problems.append(exc if exc.source != "tasks" else
                            DsparityError(str(spec.yaml_path), spec.name, exc.problem, exc.fix))
    for p in problems:
        out.print(p.line(), highlight=False, soft_wrap=True)
    out.print(f"{len(specs)} tasks, {len(problems)} problems")
    if problems:
        raise typer.Exit(1)


jobs_app = typer.Typer(no_args_is_help=True, help="Scheduled comparison jobs (YAML job files).")
app.add_typer(jobs_app, name="jobs")
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
    from dsparity.evals.store import Store

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
    from dsparity.evals.store import Store

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
    from dsparity.evals.store import Store

    console.print(f"dsparity jobs daemon: watching {folder}")
    daemon(Store(db), folder, log=console.print)


@jobs_app.command("history")
def jobs_history(name: Annotated[str | None, typer.Argument(help="Job name [default: all]")] = None,
                 db: Db = None) -> None:
    """A job's past runs: when, outcome, verdict, drift events, cause."""
    store = _existing_store(db)
    table = Table()
    for col in ("job", "run", "trigger", "started", "status", "verdict", "drift", "cause"):
        table.add_column(col, overflow="fold")
    for r in store.job_runs(name):
        table.add_row(r["job"], r["id"], r["trigger"],
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["started_at"])), r["status"],
                      r["verdict"] or "", str(len(r["drift"] or [])), r["cause"] or "")
    out.print(table)


@app.command()
def dashboard(
    db: Db = None,
    host: Annotated[str, typer.Option(help="Bind address (anything but loopback needs a token)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8765,
    token_env: Annotated[str, typer.Option(
        help="Environment variable holding the access token")] = "DSPARITY_DASHBOARD_TOKEN",
) -> None:
    """Browse runs, comparisons, samples and job trends in a browser (read-only)."""
    import uvicorn

    from dsparity.evals.dashboard import create_app, is_loopback

    token = os.environ.get(token_env) or None
    if not is_loopback(host) and not token:
        raise DsparityError("--host", host, f"binding beyond loopback needs a token in ${token_env}",
                            f"export {token_env}=<a long random string>, or bind 127.0.0.1")
    from sqlalchemy.engine import make_url

    store = _existing_store(db)
    shown = make_url(store.url).render_as_string(hide_password=True)  # never print a password
    console.print(f"dsparity dashboard on http://{host}:{port}/ over {shown}"
                  + (" (token required)" if token else ""), soft_wrap=True)
    uvicorn.run(create_app(store, token=token), host=host, port=port, log_level="warning")


def _register_optional_commands() -> None:
    with contextlib.suppress(ImportError):
        from dsparity.model.cli import warmup

        app.command("warmup")(warmup)


_register_optional_commands()


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except DsparityError as exc:
        _fail(exc.line())
    except typer.Abort:
        _fail("aborted")
    except TyperException as exc:  # bad flags: one line, not the usage box
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx else "dsparity"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if not message:  # no arguments: the help was printed, which is the answer
            sys.exit(0)
        _fail(f"{message} (see `{where} --help`)")
    except KeyboardInterrupt:
        console.print("interrupted: finished samples are stored; re-run the command to resume")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(line: str) -> None:
    console.print(f"[red]error:[/] {line}", highlight=False, soft_wrap=True, markup=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
