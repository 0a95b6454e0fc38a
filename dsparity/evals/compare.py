"""Pair two runs item by item and turn the paired scores into per-task and overall verdicts."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsparity.evals import stats, usage
from dsparity.evals.store import SampleKey, Store

DEFAULT_MARGIN = 0.05  # 5 points: a difference a user of the smoke-sized suites could notice
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class PairKey:
    task: str
    doc_id: int
    doc_hash: str
    prompt_hash: str
    repeat: int


def _scored(store: Store, run_id: str) -> tuple[dict[PairKey, dict], list[dict]]:
    """Answered, graded samples keyed for pairing, and every sample (for usage figures)."""
    grades = store.grades(run_id)
    all_samples = store.samples(run_id)
    rows: dict[PairKey, dict] = {}
    for s in all_samples:
        grade = grades.get(SampleKey(s["task"], s["doc_id"], s["repeat"]))
        if s["error"] is not None or grade is None:
            continue  # an infrastructure error is not a wrong answer: it is not paired
        key = PairKey(s["task"], s["doc_id"], s["doc_hash"], s["prompt_hash"], s["repeat"])
        rows[key] = s | {"score": grade["score"], "passed": grade["passed"],
                         "grade_details": grade["details"]}
    return rows, all_samples


def compare_runs(store: Store, candidate_run: str, baseline_run: str, *,
                 margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA,
                 iters: int = 10_000, seed: int = 0, judge: str | None = None) -> dict[str, Any]:
    """The comparison as plain data (what the store keeps and every report renders)."""
    cand_run, base_run = store.run(candidate_run), store.run(baseline_run)
    cand, cand_samples = _scored(store, cand_run["id"])
    base, base_samples = _scored(store, base_run["id"])
    cand_usage, base_usage = usage.summarize(cand_samples), usage.summarize(base_samples)
    paired = sorted(set(cand) & set(base), key=lambda k: (k.task, k.doc_id, k.repeat))
    by_task: dict[str, list[PairKey]] = defaultdict(list)
    for key in paired:
        by_task[key.task].append(key)
    tasks = sorted(set(cand_run["tasks"]) | set(base_run["tasks"]))
    per_task = [_task_result(t, by_task.get(t, []), cand, base, margin, alpha, iters, seed)
                for t in tasks]
    for t in per_task:
        settings = (cand_run["tasks"].get(t["task"]) or {}).get("settings") or {}
        if settings.get("pairwise"):
            t["pairwise"] = pairwise_preference(by_task.get(t["task"], []), cand, base, settings, judge)
    return {
        "margin": margin, "alpha": alpha,
        "candidate": _run_summary(cand_run), "baseline": _run_summary(base_run),
        "tasks": per_task,
        "overall": _overall(per_task, margin),
        "usage": {"candidate": cand_usage, "baseline": base_usage,
                  "cost_ratio": usage.ratio(cand_usage["overall"]["cost"], base_usage["overall"]["cost"]),
                  "output_token_ratio": usage.ratio(cand_usage["overall"]["output_tokens_total"],
                                                    base_usage["overall"]["output_tokens_total"])},
        "longctx_maps": depth_length_maps(paired, cand, base),
        "disagreements": _disagreements(paired, cand, base),
        "unpaired": {"candidate_only": len(set(cand) - set(base)),
                     "baseline_only": len(set(base) - set(cand))},
    }


def _run_summary(run: dict) -> dict[str, Any]:
    return {k: run[k] for k in ("id", "label", "model_spec", "identity", "suite", "settings",
                                "provenance", "tasks", "status", "created_at")}


def _task_result(task, keys, cand, base, margin, alpha, iters, seed):
    # One score per document: repeats of a document are averaged (the clustered unit, grading.md 5.1).
    per_doc_a, per_doc_b = defaultdict(list), defaultdict(list)
    for k in keys:
        per_doc_a[k.doc_id].append(cand[k]["score"])
        per_doc_b[k.doc_id].append(base[k]["score"])
    docs = sorted(per_doc_a)
    a = np.array([np.mean(per_doc_a[d]) for d in docs], dtype=float)
    b = np.array([np.mean(per_doc_b[d]) for d in docs], dtype=float)
    result = stats.compare_scores(a, b, margin=margin, alpha=alpha, iters=iters, seed=seed)
    return {"task": task, **_jsonable(result.to_dict())}


def _overall(per_task: list[dict], margin: float) -> dict[str, Any]:
    """Tasks weigh equally (macro average, grading.md 5.5): a big task cannot hide a small one."""
    usable = [t for t in per_task if t["n"] >= 2 and t["se"] is not None]
    n_items = sum(t["n"] for t in per_task)
    if not usable:
        return {"n": n_items, "verdict": stats.Verdict.INCONCLUSIVE.value, "diff": None,
                "method": "none: too few paired items"}
    diff, se = stats.macro_difference([t["diff"] for t in usable], [t["se"] for t in usable])
    ci90 = (diff - 1.6449 * se, diff + 1.6449 * se)
    ci95 = (diff - 1.96 * se, diff + 1.96 * se)
    verdict = stats.verdict(diff, ci90, ci95, margin)
    return {"n": n_items, "tasks": len(usable), "diff": diff, "se": se, "ci90": list(ci90),
            "ci95": list(ci95), "verdict": verdict.value,
            "method": "macro average over tasks, normal CI"}


def pairwise_preference(keys: list[PairKey], cand: dict, base: dict, settings: dict,
                        judge: str | None) -> dict[str, Any]:
    """A judge sees both answers in both orders (a disagreement is a tie); the candidate's win
    rate over prompts, with its CI (grading.md 5.2: w = 0.5 is parity)."""
    from dsparity.evals.graders.judge import pairwise_judge

    spec = settings.get("judge") or judge
    scores, clusters, details = [], [], []
    for k in keys:
        c, b = cand[k], base[k]
        verdict = pairwise_judge(c["request"]["messages"][-1]["content"], c["text"], b["text"],
                                 judge=spec, rubric=settings.get("pairwise_rubric"), doc=c["doc"])
        if verdict.error:
            details.append({"doc_id": k.doc_id, "error": verdict.error})
            continue
        scores.append(verdict.score_1)
        clusters.append(k.doc_id)
        details.append({"doc_id": k.doc_id, "winner": "candidate" if verdict.winner == "1" else
                        "baseline" if verdict.winner == "2" else "tie", "consistent": verdict.consistent,
                        "orders": verdict.orders})
    if not scores:
        return {"n": 0, "judge": spec, "errors": len(details), "details": details}
    rate, lo, hi = stats.win_rate(np.array(scores), clusters=np.array(clusters))
    return {"n": len(scores), "judge": spec, "win_rate": rate, "ci95": [lo, hi],
            "ties": sum(s == 0.5 for s in scores), "errors": len(keys) - len(scores), "details": details}


def _length_of(doc: dict) -> int | None:
    for key in ("target_tokens", "target_chars", "length_tokens", "length_chars", "length"):
        if isinstance(doc.get(key), int | float):
            return int(doc[key])
    return None


def depth_length_maps(paired: list[PairKey], cand: dict, base: dict) -> list[dict[str, Any]]:
    """Accuracy by (context length, needle depth) for both models, for tasks whose items say both.

    Depths are rounded to tenths so that generated depths fall into readable columns.
    """
    cells: dict[str, dict[tuple[int, float], list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for k in paired:
        doc = cand[k]["doc"]
        length, depth = _length_of(doc), doc.get("depth")
        if length is None or not isinstance(depth, int | float):
            continue
        cells[k.task][(length, round(float(depth), 1))].append((cand[k]["score"], base[k]["score"]))
    maps = []
    for task, grid in sorted(cells.items()):
        lengths = sorted({length for length, _ in grid})
        depths = sorted({depth for _, depth in grid})
        maps.append({"task": task, "lengths": lengths, "depths": depths, "cells": [
            {"length": length, "depth": depth, "n": len(v),
             "candidate": float(np.mean([a for a, _ in v])), "baseline": float(np.mean([b for _, b in v]))}
            for (length, depth), v in sorted(grid.items())]})
    return maps


def _disagreements(paired, cand, base, limit: int = 200) -> list[dict[str, Any]]:
    out = []
    for k in paired:
        if cand[k]["score"] == base[k]["score"]:
            continue
        c, b = cand[k], base[k]
        out.append({"task": k.task, "doc_id": k.doc_id, "repeat": k.repeat,
                    "prompt": c["request"]["messages"][-1]["content"], "target": c["target"],
                    "candidate": {"text": c["text"], "score": c["score"], "details": c["grade_details"]},
                    "baseline": {"text": b["text"], "score": b["score"], "details": b["grade_details"]}})
        if len(out) >= limit:
            break
    return out


def _jsonable(d: dict) -> dict:
    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, tuple | list):
            return [fix(x) for x in v]
        if isinstance(v, np.generic):
            return fix(v.item())
        return v

    return {k: fix(v) for k, v in d.items()}
