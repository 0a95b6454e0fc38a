"""Run one model over tasks: request -> backend -> durable sample row -> grade row.

Each answer is written the moment it arrives, together with its cache entry, so a killed run
loses at most the requests in flight, and re-running the same command resumes without sending a
finished request again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dsparity.errors import DsparityError
from dsparity.evals import context_fit, provenance
from dsparity.evals.backends import Backend, identity_key, make_backend
from dsparity.evals.backends.base import Request, ScoreRequest
from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.logprobs import describe
from dsparity.evals.pricing import BUILTIN_PRICES, Price, price_for
from dsparity.evals.specs import ModelSpec
from dsparity.evals.store import SampleKey, SampleRecord, Store
from dsparity.evals.tasks import TaskItem, TaskSpec
from dsparity.evals.writer import GroupWriter


@dataclass(frozen=True)
class RunSettings:
    suite: str
    limit: int | None = None
    repeats: int = 1
    seed: int = 0
    temperature: float | None = None  # None: the task's own setting (greedy by default)
    fresh: bool = False  # a new run even if an identical one exists
    budget: float | None = None  # stop sending once the run has cost this much
    prices: dict[str, Price] = field(default_factory=lambda: dict(BUILTIN_PRICES))
    # How the command chose what it ran beyond the above (--suite / --tasks as typed, --include,
    # --size, --budget, --prices): kept with the run for the report's reproduce line, not part of
    # what identifies the run.
    command: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What identifies the run (the budget does not: raising it continues the same run)."""
        return {"suite": self.suite, "limit": self.limit, "repeats": self.repeats,
                "seed": self.seed, "temperature": self.temperature}


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


def _request_for(item: TaskItem, repeat: int, settings: RunSettings):
    request = item.request
    if isinstance(request, ScoreRequest):
        return request  # log-likelihoods are exact: no sampling, every repeat the same numbers
    if settings.temperature is not None:
        request = replace(request, temperature=settings.temperature)
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
        grade_run(store, run_id)
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
    task_info = {t.name: {"task_hash": t.task_hash, "n_items": len(t.items), "n_docs": t.n_docs,
                          "grader": t.grader, "settings": t.settings, "suite": t.suite}
                 for t in tasks}
    key_parts = [backend.identity, task_info, settings.to_dict()]
    if settings.fresh:
        key_parts.append(uuid.uuid4().hex)
    run_key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode())
    return store.find_or_create_run(
        run_key.hexdigest(),
        model_spec=spec.text, label=spec.label, identity=backend.identity, suite=settings.suite,
        tasks=task_info,
        settings=settings.to_dict() | {"price": {"name": price[0], **price[1].to_dict()} if price else None,
                                       "command": settings.command},
        provenance=provenance.collect() | {"seed": settings.seed})


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
    hits = store.cached_many(list(keys.values()))  # one query instead of one per item
    writer = GroupWriter(store)

    async def save(item: TaskItem, repeat: int, request, completion, cache_key: str | None, cached: bool,
                   cut: dict | None = None) -> None:
        cost = None if price is None else (0.0 if cached else price.cost(completion.usage))
        result.cost += cost or 0.0
        stored = request.to_dict() | ({"context_cut": cut} if cut else {})
        fields = dict(doc_hash=item.doc_hash, prompt_hash=item.prompt_hash, target=item.target,
                      doc=item.doc, request=stored, cached=int(cached), cost=cost)
        await writer.write(SampleRecord(result.run_id, SampleKey(item.task, item.doc_id, repeat), fields,
                                        completion, cache_key))
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

        try:
            await asyncio.gather(*(one(item, r) for item, r in todo))
        finally:
            writer.close()


def _cache_key(model_key: str, request, repeat: int) -> str:
    """Model identity + request (+ the draw, for sampled decoding): never shared across models."""
    draw = repeat if getattr(request, "temperature", 0.0) > 0 else 0
    return hashlib.sha256(f"{model_key}:{request.key()}:{draw}".encode()).hexdigest()


def grade_run(store: Store, run_id: str, *, replace: bool = False) -> int:
    """Grade answered samples that have no grade yet (all of them with replace=True)."""
    run = store.run(run_id)
    existing = {} if replace else store.grades(run_id)
    rows = []
    for s in store.samples(run_id):
        key = SampleKey(s["task"], s["doc_id"], s["repeat"])
        if s["error"] is not None or key in existing:
            continue  # an infrastructure error is not a wrong answer: it gets no grade
        info = run["tasks"][s["task"]]
        grade = get_grader(info["grader"])(
            GradeInput(s["text"], s["target"], s["doc"], s["finish_reason"], s.get("scores")),
            info["settings"])
        rows.append(dict(task=s["task"], doc_id=s["doc_id"], repeat=s["repeat"],
                         grader=info["grader"], score=grade.score,
                         passed=None if grade.passed is None else int(grade.passed),
                         details=grade.details))
    store.put_grades(run_id, rows, replace=replace)
    return len(rows)
