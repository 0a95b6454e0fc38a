"""Pair two runs item by item and turn the paired scores into per-task and overall verdicts."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsparity.evals import stats
from dsparity.evals.accounting import usage
from dsparity.evals.logprobs import prompt_of
from dsparity.evals.stats import fidelity
from dsparity.evals.stats.pass_rates import pass_at_k_by_task
from dsparity.evals.storage.store import SampleKey, Store

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
                 margin: float | None = None, alpha: float = DEFAULT_ALPHA,
                 iters: int = 10_000, seed: int = 0, judge: str | None = None) -> dict[str, Any]:
    """The comparison as plain data (what the store keeps and every report renders).

    `margin` (score units) applies to every score task; None leaves each task its own stated
    margin (`metadata.dsparity.margin`), else DEFAULT_MARGIN. Fidelity tasks always use their
    own margin in nats per token."""
    cand_run, base_run = store.run(candidate_run), store.run(baseline_run)
    cand, cand_samples = _scored(store, cand_run["id"])
    base, base_samples = _scored(store, base_run["id"])
    cand_usage, base_usage = usage.summarize(cand_samples), usage.summarize(base_samples)
    paired = sorted(set(cand) & set(base), key=lambda k: (k.task, k.doc_id, k.repeat))
    by_task: dict[str, list[PairKey]] = defaultdict(list)
    for key in paired:
        by_task[key.task].append(key)
    tasks = sorted(set(cand_run["tasks"]) | set(base_run["tasks"]))
    topk = _topk(cand_run)
    per_task, fidelity_results = [], []
    for t in tasks:
        info = cand_run["tasks"].get(t) or base_run["tasks"].get(t) or {}
        settings = info.get("settings") or {}
        keys = by_task.get(t, [])
        if info.get("grader") == "fidelity":
            result = fidelity.compare_task(t, [(cand[k], base[k]) for k in keys], settings, topk=topk,
                                           margin=None, alpha=alpha)
            fidelity_results.append(result)
            per_task += result["rows"] or [_empty_row(t, result["margin"], alpha, result["unit"])]
            continue
        task_margin = margin if margin is not None else float(settings.get("margin", DEFAULT_MARGIN))
        row = _task_result(t, keys, cand, base, task_margin, alpha, iters, seed)
        if passes := _pass_at_k(keys, cand, base, int(cand_run["settings"].get("repeats") or 1)):
            row["pass_at_k"] = passes
        if settings.get("pairwise"):
            row["pairwise"] = pairwise_preference(keys, cand, base, settings, judge)
        per_task.append(row)
    for row in per_task:
        row["power"] = power_note(row)
    fidelity_tasks = {r["task"] for r in fidelity_results}
    return {
        "margin": margin if margin is not None else DEFAULT_MARGIN, "alpha": alpha,
        "margins_from_tasks": margin is None,
        "candidate": _run_summary(cand_run), "baseline": _run_summary(base_run),
        "tasks": per_task,
        "fidelity": fidelity_results,
        "overall": {"n": sum(r["n"] for r in per_task),
                    **stats.overall_verdict(per_task, alpha=alpha)},
        "usage": {"candidate": cand_usage, "baseline": base_usage,
                  "cost_ratio": usage.ratio(cand_usage["overall"]["cost"], base_usage["overall"]["cost"]),
                  "output_token_ratio": usage.ratio(cand_usage["overall"]["output_tokens_total"],
                                                    base_usage["overall"]["output_tokens_total"])},
        "longctx_maps": depth_length_maps(paired, cand, base),
        "disagreements": _disagreements([k for k in paired if k.task not in fidelity_tasks], cand, base),
        "unpaired": {"candidate_only": len(set(cand) - set(base)),
                     "baseline_only": len(set(base) - set(cand))},
        "grade_errors": {"candidate": _grade_errors(store, cand_run["id"]),
                         "baseline": _grade_errors(store, base_run["id"])},
    }


def _pass_at_k(keys: list[PairKey], cand: dict, base: dict, repeats: int) -> dict[str, dict] | None:
    """pass@k of both models over the paired samples (the same draws the row's test uses)."""
    sides = {name: pass_at_k_by_task([(k.task, k.doc_id, rows[k]["passed"]) for k in keys], repeats)
             for name, rows in (("candidate", cand), ("baseline", base))}
    if not keys or keys[0].task not in sides["candidate"] or keys[0].task not in sides["baseline"]:
        return None
    return {name: by_task[keys[0].task] for name, by_task in sides.items()}


def _grade_errors(store: Store, run_id: str) -> dict[str, int]:
    """Samples per task that have an answer but no grade yet (a judge outage): never scored."""
    counts: dict[str, int] = defaultdict(int)
    for key in store.grade_errors(run_id):
        counts[key.task] += 1
    return dict(counts)


def _run_summary(run: dict) -> dict[str, Any]:
    return {k: run[k] for k in ("id", "label", "model_spec", "identity", "suite", "settings",
                                "provenance", "tasks", "status", "created_at")}


def _task_result(task, keys, cand, base, margin, alpha, iters, seed):
    # One score per document: repeats of a document are averaged (the clustered unit, grading.md
    # 5.1), so N draws of one item count as one item in every test, never as N.
    per_doc_a, per_doc_b = defaultdict(list), defaultdict(list)
    for k in keys:
        per_doc_a[k.doc_id].append(cand[k]["score"])
        per_doc_b[k.doc_id].append(base[k]["score"])
    docs = sorted(per_doc_a)
    a = np.array([np.mean(per_doc_a[d]) for d in docs], dtype=float)
    b = np.array([np.mean(per_doc_b[d]) for d in docs], dtype=float)
    result = stats.compare_scores(a, b, margin=margin, alpha=alpha, iters=iters, seed=seed)
    return {"task": task, "kind": "score", "unit": "points", **_jsonable(result.to_dict())}


def _empty_row(task: str, margin: float, alpha: float, unit: str) -> dict[str, Any]:
    return {"task": task, "kind": "fidelity", "unit": unit, "n": 0, "diff": None, "se": None,
            "ci90": [None, None], "ci95": [None, None], "p_tost": None, "p_diff": None,
            "verdict": stats.Verdict.INCONCLUSIVE.value, "margin": margin, "alpha": alpha,
            "mean_a": None, "mean_b": None, "more_items_needed": None}


def _topk(run: dict) -> int | None:
    """The candidate's top-k when it is a local sparse model (fidelity's first bucket edge)."""
    options = (run.get("identity") or {}).get("options") or {}
    if options.get("attention", "dense") == "dense":
        return None
    return int(options.get("topk", 256))


def power_note(row: dict[str, Any]) -> dict[str, Any]:
    """What this row can resolve at its size (grading.md 5.4): for 0/1 tasks the best-case
    equivalence resolution and the smallest one-way loss found with 80% power; for others the
    minimum detectable effect from the observed standard error."""
    n, margin, alpha = row.get("n") or 0, row.get("margin"), row.get("alpha", DEFAULT_ALPHA)
    if row.get("b") is not None and row.get("method", "").startswith("Tango"):
        resolution = stats.binary_resolution(n, alpha=alpha)
        return {"resolution": resolution, "mde": stats.binary_mde(n, alpha=alpha),
                "can_show_equivalence": bool(margin and resolution < margin),
                "items_for_equivalence": stats.items_for_equivalence(margin, alpha=alpha) if margin else None}
    se = row.get("se")
    if se is None or n < 2:
        return {"resolution": None, "mde": None, "can_show_equivalence": False}
    df = max(1, int(row.get("n_clusters") or n) - 1)
    from scipy import stats as st

    mde = (float(st.t.ppf(1 - alpha / 2, df)) + float(st.t.ppf(0.8, df))) * se
    half = float(st.t.ppf(1 - alpha, df)) * se
    return {"resolution": half, "mde": mde, "can_show_equivalence": bool(margin and half < margin)}


def pairwise_preference(keys: list[PairKey], cand: dict, base: dict, settings: dict,
                        judge: str | None) -> dict[str, Any]:
    """A judge sees both answers in both orders (a disagreement is a tie); the candidate's win
    rate over prompts, with its CI (grading.md 5.2: w = 0.5 is parity)."""
    from dsparity.evals.graders.judge import pairwise_judge

    spec = judge or settings.get("judge")  # --judge over the task's own, as for judge graders
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


DISAGREEMENT_CHARS = 4000  # per text in a stored comparison: the full answers stay in the samples


def _disagreements(paired, cand, base, limit: int = 200) -> list[dict[str, Any]]:
    out = []
    for k in paired:
        if cand[k]["score"] == base[k]["score"]:
            continue
        c, b = cand[k], base[k]
        out.append({"task": k.task, "doc_id": k.doc_id, "repeat": k.repeat,
                    "prompt": _clip(prompt_of(c["request"])), "target": _clip(c["target"]),
                    "candidate": _side(c), "baseline": _side(b)})
        if len(out) >= limit:
            break
    return out


def _side(sample: dict) -> dict[str, Any]:
    return {"text": _clip(sample["text"]), "score": sample["score"], "details": sample["grade_details"]}


def _clip(text: str) -> str:
    n = DISAGREEMENT_CHARS
    return text if len(text) <= n else text[:n] + f"… [{len(text) - n} more characters in the sample]"


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
