"""Drift between a scheduled job's consecutive runs: paired tests on the items both runs answered.

A job runs the same items each time, so a change of score is tested item by item, as a comparison
tests candidate against baseline (`stats.compare_scores`): Tango's score test for 0/1 outcomes,
the t test on paired differences for continuous scores (per document, repeats averaged). For each
task it tests the candidate's score now against its score last time, the baseline's likewise, and
the candidate-minus-baseline difference (per document). A shift is a drift event only when it is
both significant after Holm's adjustment over every test of the run (alpha 0.05) and larger than
the task's margin: three answers of fifty that changed is noise (Tango p = 0.08), a score that
fell 40 points is not. A change of the overall or a task's verdict is an event as before: each
verdict already rests on its own test.

Score rows only (unit "points"): fidelity buckets are compared in nats by their own rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsparity.evals import stats

ALPHA = 0.05
DocKey = tuple[str, int, str, str]  # task, doc_id, doc_hash, prompt_hash: the same item both times


@dataclass
class RunScores:
    """Per document, the mean score over its repeats (answered, graded samples only)."""

    candidate: dict[DocKey, float] = field(default_factory=dict)
    baseline: dict[DocKey, float] = field(default_factory=dict)


def doc_scores(store, run_id: str) -> dict[DocKey, float]:
    by_doc: dict[DocKey, list[float]] = defaultdict(list)
    for task, doc_id, doc_hash, prompt_hash, score in store.item_scores(run_id):
        by_doc[(task, doc_id, doc_hash, prompt_hash)].append(score)
    return {k: float(np.mean(v)) for k, v in by_doc.items()}


def run_scores(store, candidate_run: str | None, baseline_run: str | None) -> RunScores | None:
    if not candidate_run or not baseline_run:
        return None
    return RunScores(doc_scores(store, candidate_run), doc_scores(store, baseline_run))


def detect_drift(current: dict, previous: dict | None, margin: float, *, now: RunScores | None = None,
                 before: RunScores | None = None, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Drift events of this run against the job's previous completed run (its summary, and the
    per-document scores of both runs when they are still stored)."""
    if previous is None:
        return []
    events = []
    if current["overall"]["verdict"] != previous["overall"]["verdict"]:
        events.append({"kind": "verdict", "task": None, "from": previous["overall"]["verdict"],
                       "to": current["overall"]["verdict"]})
    for task, row in current["tasks"].items():
        old = previous["tasks"].get(task)
        if old is not None and row["verdict"] != old["verdict"]:
            events.append({"kind": "task_verdict", "task": task, "from": old["verdict"],
                           "to": row["verdict"]})
    if now is not None and before is not None:
        events += _shifts(current, margin, now, before, alpha)
    return events


def _shifts(current: dict, margin: float, now: RunScores, before: RunScores, alpha: float) -> list[dict]:
    tests = []
    for task, row in current["tasks"].items():
        if row.get("unit", "points") != "points":
            continue
        task_margin = float(row.get("margin") or margin)
        for measure, pairs in _pairs(task, now, before).items():
            if len(pairs) < 2:
                continue
            a = np.array([p[0] for p in pairs])
            b = np.array([p[1] for p in pairs])
            # a difference of two 0/1 scores is no 0/1 outcome: the t test, not Tango's
            result = stats.compare_scores(a, b, margin=task_margin, alpha=alpha,
                                          binary=False if measure == "diff" else None)
            tests.append((task, measure, task_margin, result))
    adjusted = stats.holm([t[3].p_diff for t in tests])
    events = []
    for (task, measure, task_margin, result), p in zip(tests, adjusted, strict=True):
        if math.isfinite(p) and p < alpha and abs(result.diff) > task_margin + 1e-12:
            events.append({"kind": "shift", "task": task, "measure": measure, "from": result.mean_b,
                           "to": result.mean_a, "shift": result.diff, "p": float(p), "n": result.n,
                           "ci95": list(result.ci95), "margin": task_margin, "method": result.method})
    return events


def _pairs(task: str, now: RunScores, before: RunScores) -> dict[str, list[tuple[float, float]]]:
    """(now, before) per document both runs answered: each side's score, and the difference."""
    pairs: dict[str, list[tuple[float, float]]] = {"candidate": [], "baseline": [], "diff": []}
    for side in ("candidate", "baseline"):
        new, old = getattr(now, side), getattr(before, side)
        pairs[side] = [(new[k], old[k]) for k in sorted(new) if k[0] == task and k in old]
    for k in sorted(now.candidate):
        if k[0] == task and k in now.baseline and k in before.candidate and k in before.baseline:
            pairs["diff"].append((now.candidate[k] - now.baseline[k],
                                  before.candidate[k] - before.baseline[k]))
    return pairs
