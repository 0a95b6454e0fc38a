"""One comparison end to end: start both backends, run both models, pair and judge.

Shared by `dsparity compare` and scheduled jobs, so both record runs and comparisons the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dsparity.evals.comparison.pairing import compare_runs
from dsparity.evals.runner import RunResult, RunSettings, execute_run, preflight
from dsparity.evals.specs import ModelSpec
from dsparity.evals.storage.store import Store
from dsparity.evals.tasks import TaskSpec


@dataclass
class ComparisonOutcome:
    candidate: RunResult
    baseline: RunResult
    comparison: dict[str, Any] | None  # None when a run stopped at its budget


class FreshAnswers(Store):
    """The same store, without answers from the response cache: a scheduled job must ask the
    model again, or a silent change behind an unchanged endpoint would never be seen."""

    def __init__(self, store: Store):  # shares the engine: opens nothing
        self.__dict__.update(store.__dict__)

    def cached_many(self, keys: list[str]) -> dict:
        return {}


async def run_comparison(cand_spec: ModelSpec, base_spec: ModelSpec, task_specs: list[TaskSpec],
                         settings: RunSettings, store: Store | Callable[[], Store], margin: float | None, *,
                         log: Callable[[str], Any] = print, show_progress: bool = True,
                         judge: str | None = None, on_ready: Callable[[], Any] | None = None,
                         fresh_baseline: bool = True) -> tuple[Store, ComparisonOutcome]:
    """Both runs and their comparison. `store` may be a factory, called once both backends
    and every judge the tasks need have passed their preflight (so a wrong URL leaves no
    database behind); `on_ready` runs then too (the power check is printed there, so a bad input
    still gets exactly one line). `judge` (or settings.judge) grades judge tasks and judges
    pairwise tasks, over each task's own judge. `fresh_baseline` False: with settings.fresh, the
    baseline still resumes its newest run (one made fresh for an earlier candidate)."""
    from dsparity.evals.backends import make_backend
    from dsparity.evals.graders.judge import preflight_judges

    judge = judge or settings.judge
    settings = replace(settings, judge=judge)
    base_backend = make_backend(base_spec)
    await base_backend.start()  # cheap preflight first: a wrong URL fails before any model loads
    cand_backend = make_backend(cand_spec)
    try:
        await preflight(base_backend, task_specs)
        # the judges before the candidate loads: a wrong judge fails in seconds, not minutes
        await preflight_judges([(t.name, t.grader, t.settings) for t in task_specs], judge,
                               pairwise=True)
        await cand_backend.start()
        await preflight(cand_backend, task_specs)
    except BaseException:
        await base_backend.close()
        await cand_backend.close()
        raise
    if on_ready is not None:  # both backends passed their preflight; nothing is sent yet
        on_ready()
    if not isinstance(store, Store):
        try:
            store = store()
        except BaseException:
            await cand_backend.close()
            await base_backend.close()
            raise
    log(f"[bold]candidate[/] {cand_spec.label}")
    try:
        cand = await execute_run(cand_spec, task_specs, settings, store, backend=cand_backend,
                                 show_progress=show_progress)
    except BaseException:
        await base_backend.close()
        raise
    log(f"[bold]baseline[/] {base_spec.label}")
    base_settings = settings if fresh_baseline else replace(settings, fresh=False)
    base = await execute_run(base_spec, task_specs, base_settings, store, backend=base_backend,
                             show_progress=show_progress)
    if cand.stopped_by_budget or base.stopped_by_budget:
        return store, ComparisonOutcome(cand, base, None)
    return store, ComparisonOutcome(cand, base, compare_runs(store, cand.run_id, base.run_id,
                                                             margin=margin, judge=judge))
