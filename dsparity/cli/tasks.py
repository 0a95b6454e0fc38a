"""`dsparity tasks list|show|validate`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from dsparity.cli.base import (
    Include,
    Size,
    console,
    out,
    tasks_app,
)
from dsparity.errors import DsparityError


@tasks_app.command("list")
def tasks_list(include: Include = None, size: Size = None) -> None:
    """Suites and tasks with their item counts, lengths and graders (nothing is generated)."""
    from dsparity.evals.taskgen.cache import GenOptions
    from dsparity.evals.tasks import BUILTIN_TASKS, count_items, scan

    dirs = [BUILTIN_TASKS, *(include or [])]
    specs, problems = scan(dirs)
    options = GenOptions.from_env(size=size)
    wide = out.width >= 120  # the descriptions only where they fit; `tasks show` has them too
    table = Table(box=None if not wide else box.HEAVY_HEAD)
    for col in ("suite", "task", "items", "grader", "max new", "lengths"):
        table.add_column(col, no_wrap=True)
    if wide:
        table.add_column("about", overflow="fold", ratio=1)
    per_suite: dict[str, list] = {}
    for s in sorted(specs.values(), key=lambda s: (s.suite, s.name)):
        n = count_items(s, options)
        per_suite.setdefault(s.suite, []).append((n, s.grader))
        lengths = options.lengths or s.settings.get("lengths")
        table.add_row(s.suite + ("*" if s.needs_hub else ""), s.name,
                      "hub" if n is None else str(n), s.grader,
                      str(s.settings.get("max_tokens") or
                          (s.config.get("generation_kwargs") or {}).get("max_gen_toks", "")),
                      ",".join(_klen(v) for v in lengths) if lengths and s.settings.get("lengths") else "",
                      *([str(s.settings.get("description", ""))] if wide else []))
    out.print(table)
    if any(s.needs_hub for s in specs.values()):
        out.print("* needs the Hugging Face hub (or its local cache); run only when named")
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
    shots = spec.fewshot.get("num_fewshot", 0)
    if shots:
        out.print(f"few-shot: {shots} examples from split {spec.fewshot['split']!r} (sampler "
                  f"{spec.fewshot['sampler']}, seed {spec.fewshot['seed']}); the prompts below are "
                  "sent with them", highlight=False, soft_wrap=True)
    if spec.config.get("filter_list") or spec.grader == "lm_eval":
        names = [f.get("name") for f in spec.config.get("filter_list") or []] or ["none"]
        metrics = [m.get("metric") for m in spec.config.get("metric_list") or []] or ["exact_match"]
        out.print(f"graded by lm-eval's own filters ({', '.join(map(str, names))}) and metrics "
                  f"({', '.join(map(str, metrics))})", highlight=False, soft_wrap=True)
    clip = 20_000 if shots else 600  # a few-shot prompt is shown whole: the shots are the point
    for item in spec.items[:items]:
        out.print(f"\n[bold]item {item.doc_id}[/] (doc {item.doc_hash}, {_request_kind(item.request)}) "
                  f"target: {item.target[:120]!r}", soft_wrap=True)
        messages = getattr(item.request, "messages", None) or ((
            "context", "\n---\n".join(f"{s.context!r} -> {s.continuation!r}" for s in item.request.spans)),)
        for role, text in messages:
            short = text if len(text) <= clip else text[:clip // 2] + \
                f" [... {len(text) - clip} chars ...] " + text[-clip // 2:]
            if len(messages) > 1 or role != "user":
                out.print(f"[{role}]", highlight=False, markup=False)
            out.print(short, highlight=False, markup=False, soft_wrap=True)

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


def _request_kind(request) -> str:
    """'max tokens N' for a generation, what is scored for a log-likelihood request."""
    if hasattr(request, "max_tokens"):
        return f"max tokens {request.max_tokens}"
    return "scored: whole text" if request.rolling else f"scored: {len(request.spans)} continuation(s)"
