"""Tokens, latency and money per task and per run: what each model spent to get its scores."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)), "max": float(arr.max())}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and overall: counts, token and latency distributions, cost.

    Errors are counted but kept out of the token and latency figures (a timeout has no tokens
    worth comparing); answers cut by the length limit are counted apart, and so are requests
    whose new tokens were cut to fit the model's context.
    """
    by_task: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_task[s["task"]].append(s)
    tasks = {task: _one(rows) for task, rows in sorted(by_task.items())}
    return {"tasks": tasks, "overall": _one(samples)}


def _one(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["error"] is None]
    costs = [r["cost"] for r in rows if r.get("cost") is not None]
    total_cost = float(sum(costs)) if costs else None
    return {
        "samples": len(rows),
        "errors": len(rows) - len(ok),
        "error_classes": _count(r["error_class"] for r in rows if r["error"] is not None),
        "hit_length_limit": sum(r["finish_reason"] == "length" for r in ok),
        # new tokens cut to fit the model's context (evals/context_fit.py)
        "context_cut": sum(bool((r.get("request") or {}).get("context_cut")) for r in rows),
        "truncated_in_store": sum(bool(r.get("truncated")) for r in rows),
        "output_tokens": _percentiles([r["completion_tokens"] for r in ok]),
        "reasoning_tokens": _percentiles([r["reasoning_tokens"] for r in ok]),
        "prompt_tokens": _percentiles([r["prompt_tokens"] for r in ok]),
        "latency_s": _percentiles([r["latency_s"] for r in ok if not r.get("cached")]),
        "output_tokens_total": int(sum(r["completion_tokens"] for r in ok)),
        "reasoning_tokens_total": int(sum(r["reasoning_tokens"] for r in ok)),
        "cost": total_cost,
        "cost_per_1000": (1000 * total_cost / len(rows)) if total_cost is not None and rows else None,
    }


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v or "unknown"] = out.get(v or "unknown", 0) + 1
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b when both are known and b is not zero."""
    return a / b if a is not None and b else None
