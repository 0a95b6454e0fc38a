"""Run one model over tasks: request -> backend -> durable sample row -> grade row.

Each answer is written the moment it arrives, together with its cache entry, so a killed run
loses at most the requests in flight, and re-running the same command resumes without sending a
finished request again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dsparity.errors import DsparityError
from dsparity.evals import provenance
from dsparity.evals.accounting.pricing import BUILTIN_PRICES, Price, price_for
from dsparity.evals.backends import Backend, context_fit, identity_key, make_backend
from dsparity.evals.backends.base import Request, ScoreRequest
from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.graders.base import GradeUnavailable
from dsparity.evals.logprobs import describe
from dsparity.evals.specs import ModelSpec
from dsparity.evals.storage.store import SampleKey, SampleRecord, Store
from dsparity.evals.storage.writer import GroupWriter
from dsparity.evals.tasks import TaskItem, TaskSpec


@dataclass(frozen=True)
class RunSettings:
    suite: str
    limit: int | None = None
    repeats: int = 1
    seed: int = 0
    temperature: float | None = None  # None: the task's own setting (greedy by default)
    top_p: float | None = None  # None: the request's own (1.0)
    fresh: bool = False  # a new run even if an identical one exists
    cache: bool = True  # False (--no-cache): every request goes to the model, none to the cache
    judge: str | None = None  # --judge: the judge of every judge grader, over the task's own
    budget: float | None = None  # stop sending once the run has cost this much
    prices: dict[str, Price] = field(default_factory=lambda: dict(BUILTIN_PRICES))
    # How the command chose what it ran beyond the above (--suite / --tasks as typed, --include,
    # --size, --budget, --prices): kept with the run for the report's reproduce line, not part of
    # what identifies the run.
    command: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What identifies the run (the budget does not: raising it continues the same run; nor
        do the cache and the judge, which change how answers are obtained or graded, not what
        was asked)."""
        d = {"suite": self.suite, "limit": self.limit, "repeats": self.repeats,
             "seed": self.seed, "temperature": self.temperature}
        if self.top_p is not None:  # only when set: runs stored before --top-p keep their keys
            d["top_p"] = self.top_p
        return d

    def recorded(self) -> dict[str, Any]:
        """What the run row keeps: the identity plus the rest of the command's run settings."""
        return self.to_dict() | {"top_p": self.top_p, "cache": self.cache, "judge": self.judge}


@dataclass
class RunResult:
    run_id: str
    resumed: bool
    sent: int = 0  # requests actually sent to the backend
    from_cache: int = 0
    errors: int = 0
    skipped: int = 0  # already answered before this invocation
    error_classes: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0  # whole run, this invocation included
    stopped_by_budget: bool = False
    grade_errors: int = 0  # samples the grader could not grade (judge outage): graded next run


def _request_for(item: TaskItem, repeat: int, settings: RunSettings):
    request = item.request
    if isinstance(request, ScoreRequest):
        return request  # log-likelihoods are exact: no sampling, every repeat the same numbers
    if settings.temperature is not None:
        request = replace(request, temperature=settings.temperature)
    if settings.top_p is not None:
        request = replace(request, top_p=settings.top_p)
    if request.temperature > 0:  # sampled: each repeat is its own draw, seeded reproducibly
        request = replace(request, seed=settings.seed + repeat)
    return request


async def execute_run(spec: ModelSpec, tasks: list[TaskSpec], settings: RunSettings, store: Store,
                      *, backend: Backend | None = None, show_progress: bool = True) -> RunResult:
    """Generate and grade every (task, doc, repeat) not yet answered in this run."""
    backend = backend or make_backend(spec)
    await backend.start()
    try:
        price = price_for(spec.name, spec.opt("price"), settings.prices) if spec.kind == "openai" \
            else None
        run_id, resumed = _open_run(store, spec, backend, tasks, settings, price)
        result = RunResult(run_id, resumed, cost=store.run_cost(run_id))
        await _generate_all(store, backend, tasks, settings, result, show_progress,
                            price[1] if price else None)
        grade_run(store, run_id, judge=settings.judge)
        result.grade_errors = len(store.grade_errors(run_id))
        store.finish_run(run_id, "stopped_budget" if result.stopped_by_budget else "complete")
        return result
    finally:
        await backend.close()


async def preflight(backend: Backend, tasks: list[TaskSpec]) -> None:
    """Checks that need the started backend, made before anything is stored: an endpoint that
    log-likelihood tasks need can echo prompt log-probs, and every tokenized document fits the
    model's context (lm-eval would silently cut it from the left)."""
    scored = [t for t in tasks if t.scored]
    if not scored:
        return
    if hasattr(backend, "check_scoring"):
        await backend.check_scoring()
    limit = backend.context_length() if hasattr(backend, "context_length") else None
    if not limit:
        return
    for task in scored:
        for item in task.items:
            for span in item.request.spans:
                n = len(span.context) + len(span.continuation)
                if span.tokenized and n > limit:
                    raise DsparityError(str(task.yaml_path), f"document {item.doc_id}",
                                        f"{n} tokens do not fit the model's context of {limit}",
                                        "ask for shorter lengths (DSPARITY_LONGCTX_LENGTHS) or use "
                                        "a model with a longer context")


def _open_run(store: Store, spec: ModelSpec, backend: Backend, tasks: list[TaskSpec],
              settings: RunSettings, price: tuple[str, Price] | None) -> tuple[str, bool]:
    """The newest run of this configuration (resumed), or with `fresh` a new one.

    Runs of one configuration are numbered generations: 0 is the configuration's own key, each
    --fresh run the next number. So the same command without --fresh resumes the newest one,
    a fresh run that was interrupted included."""
    task_info = {t.name: {"task_hash": t.task_hash, "n_items": len(t.items), "n_docs": t.n_docs,
                          "grader": t.grader, "settings": t.settings, "suite": t.suite}
                 for t in tasks}
    key_parts = [backend.identity, task_info, settings.to_dict()]
    base = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()
    fields = dict(
        model_spec=spec.text, label=spec.label, identity=backend.identity, suite=settings.suite,
        tasks=task_info,
        settings=settings.recorded() | {"price": {"name": price[0], **price[1].to_dict()} if price else None,
                                        "command": settings.command},
        provenance=provenance.collect() | {"seed": settings.seed})
    generation = _newest_generation(store, base)
    if not settings.fresh:
        return store.find_or_create_run(_run_key(base, max(generation, 0)), **fields)
    while True:  # a concurrent --fresh run may take the next number first: take the one after
        generation += 1
        run_id, resumed = store.find_or_create_run(_run_key(base, generation), **fields)
        if not resumed:
            return run_id, False


def _run_key(base: str, generation: int) -> str:
    return base if generation == 0 else hashlib.sha256(f"{base}:fresh:{generation}".encode()).hexdigest()


def _newest_generation(store: Store, base: str, batch: int = 64) -> int:
    """The highest generation that has a run (-1: none). Generations are created in order, so
    the first batch that is not full ends the search."""
    newest, start = -1, 0
    while True:
        keys = {_run_key(base, g): g for g in range(start, start + batch)}
        found = store.existing_run_keys(list(keys))
        if found:
            newest = max(keys[k] for k in found)
        if len(found) < batch:
            return newest
        start += batch


async def _generate_all(store: Store, backend: Backend, tasks: list[TaskSpec], settings: RunSettings,
                        result: RunResult, show_progress: bool, price: Price | None) -> None:
    done = store.answered(result.run_id)
    model_key = identity_key(backend.identity)
    todo = [(item, r) for t in tasks for item in t.items for r in range(settings.repeats)
            if SampleKey(item.task, item.doc_id, r) not in done]
    result.skipped = sum(len(t.items) for t in tasks) * settings.repeats - len(todo)
    slots = asyncio.Semaphore(max(1, backend.concurrency))
    keys = {(item.task, item.doc_id, r): _cache_key(model_key, _request_for(item, r, settings), r)
            for item, r in todo}
    # One query instead of one per item; --no-cache reads nothing (the answers it gets replace
    # the cached ones, so the cache keeps the newest answer of a moving model alias).
    hits = store.cached_many(list(keys.values())) if settings.cache else {}
    writer = GroupWriter(store)

    async def save(item: TaskItem, repeat: int, request, completion, cache_key: str | None, cached: bool,
                   cut: dict | None = None) -> None:
        cost = None if price is None else (0.0 if cached else price.cost(completion.usage))
        result.cost += cost or 0.0
        stored = request.to_dict() | ({"context_cut": cut} if cut else {})
        fields = dict(doc_hash=item.doc_hash, prompt_hash=item.prompt_hash, target=item.target,
                      doc=item.doc, request=stored, cached=int(cached), cost=cost)
        await writer.write(SampleRecord(result.run_id, SampleKey(item.task, item.doc_id, repeat), fields,
                                        completion, cache_key, refresh_cache=not settings.cache))
        if completion.error:
            result.errors += 1
            cls = completion.error_class or "unknown"
            result.error_classes[cls] = result.error_classes.get(cls, 0) + 1

    async def one(item: TaskItem, repeat: int) -> None:
        request = _request_for(item, repeat, settings)
        cache_key = keys[(item.task, item.doc_id, repeat)]
        # Cut to the model's context; a prompt that does not fit is stored as an error, unsent.
        fitted = await context_fit.fit(backend, request) if isinstance(request, Request) else None
        if fitted is not None and fitted.overflow is not None:
            await save(item, repeat, request, fitted.overflow, None, cached=False)
        elif (completion := hits.get(cache_key)) is not None:
            result.from_cache += 1
            await save(item, repeat, request, completion, cache_key, cached=True, cut=fitted and fitted.cut)
        else:
            # The slot is held until the answer is stored, so a crash can lose at most
            # `concurrency` answers, and only those are ever requested twice.
            async with slots:
                if settings.budget is not None and result.cost >= settings.budget:
                    result.stopped_by_budget = True
                    advance()
                    return  # not sent, not stored: a re-run with a higher budget continues here
                if isinstance(request, ScoreRequest):
                    completion = await backend.score(request)
                    if completion.ok and not completion.text:
                        completion.text = describe(request, completion.scores or [])
                else:
                    completion = await backend.generate(fitted.request if fitted else request)
                result.sent += 1
                await save(item, repeat, request, completion, cache_key, cached=False,
                           cut=fitted and fitted.cut)
        advance()

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not show_progress, transient=False,
                  console=Console(stderr=True)) as bar:
        job = bar.add_task(f"{backend.identity.get('model')} ", total=len(todo))

        def advance() -> None:
            bar.advance(job)

        pending = [asyncio.ensure_future(one(item, r)) for item, r in todo]
        try:
            await asyncio.gather(*pending)
        except BaseException:
            # One failure (a full disk, an interrupt) stops the rest before the backend closes:
            # a request still in flight would otherwise open a new connection pool after it.
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        finally:
            writer.close()


def _cache_key(model_key: str, request, repeat: int) -> str:
    """Model identity + request (+ the draw, for sampled decoding): never shared across models."""
    draw = repeat if getattr(request, "temperature", 0.0) > 0 else 0
    return hashlib.sha256(f"{model_key}:{request.key()}:{draw}".encode()).hexdigest()


def grade_run(store: Store, run_id: str, *, replace: bool = False, judge: str | None = None) -> int:
    """Grade answered samples that have no grade yet (all of them with replace=True).

    `judge` (--judge) is the judge of every judge grader, over the task's own. A sample the
    grader cannot grade for reasons outside the answer (GradeUnavailable: a judge outage, an
    unparsable verdict) is stored as a grading error, never as a score, and has no grade, so
    the next pass over the run grades it again."""
    run = store.run(run_id)
    existing = {} if replace else store.grades(run_id)
    rows, errors = [], []
    for s in store.samples(run_id):
        key = SampleKey(s["task"], s["doc_id"], s["repeat"])
        if s["error"] is not None or key in existing:
            continue  # an infrastructure error is not a wrong answer: it gets no grade
        info = run["tasks"][s["task"]]
        settings = info["settings"] | ({"judge": judge} if judge else {})
        where = dict(task=s["task"], doc_id=s["doc_id"], repeat=s["repeat"], grader=info["grader"])
        try:
            grade = get_grader(info["grader"])(
                GradeInput(s["text"], s["target"], s["doc"], s["finish_reason"], s.get("scores")),
                settings)
        except GradeUnavailable as exc:
            errors.append(where | dict(error=exc.reason, details=exc.details))
            continue
        passed = None if grade.passed is None else int(grade.passed)
        rows.append(where | dict(score=grade.score, passed=passed, details=grade.details))
    store.put_grades(run_id, rows, replace=replace, errors=errors)
    return len(rows)
