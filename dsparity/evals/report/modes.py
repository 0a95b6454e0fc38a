"""Several candidates against one baseline, side by side: the sparsity controls at DSA's budget.

`dsparity compare --candidate A --candidate B ...` makes one comparison per candidate against the
same baseline (the baseline run is shared: its answers are resumed, not asked again). This module
folds those comparisons into one table per task, one depth x length map per mode and task, the
cost of each mode and, for local models, the attention-mass recall of its selection.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

SPARSE_MODES = ("dsa", "window", "block", "oracle")


def spec_options(model_spec: str) -> dict[str, str]:
    """The ``?key=value`` options of a spec string (no validation: specs were parsed already)."""
    _, _, query = model_spec.partition("?")
    return dict(parse_qsl(query))


def mode_of(run: dict[str, Any]) -> dict[str, Any]:
    """{"mode", "topk"} of a run summary (what its spec asked for; API models are `remote`)."""
    opts = spec_options(run.get("model_spec", ""))
    if not run.get("model_spec", "").startswith("local:"):
        return {"mode": "remote", "topk": None}
    mode = opts.get("attention", "dense")
    topk = int(opts["topk"]) if mode in SPARSE_MODES and opts.get("topk") else (
        256 if mode in SPARSE_MODES else None)
    return {"mode": mode, "topk": topk}


def _keys_per_query(mode: str, topk: int | None, prompt_tokens: float | None) -> float | None:
    """Keys each query attends at the median prompt length: min(k, L) when sparse, L when dense."""
    if prompt_tokens is None:
        return None
    if mode in SPARSE_MODES and topk:
        return float(min(topk, prompt_tokens))
    return float(prompt_tokens)


def side_by_side(comparisons: list[dict[str, Any]],
                 recall: dict[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """One section from comparisons that share a baseline. recall: candidate run id -> result of
    `dsparity.model.modes.selection_recall` (or None where the model is not local)."""
    if not comparisons:
        raise ValueError("side_by_side needs at least one comparison")
    recall = recall or {}
    first = comparisons[0]
    columns = []
    for c in comparisons:
        cand = c["candidate"]
        overall = c["usage"]["candidate"]["overall"]
        prompt = overall["prompt_tokens"]["p50"]
        mode = mode_of(cand)
        rec = recall.get(cand["id"])
        columns.append({
            "label": cand["label"], "run": cand["id"], **mode,
            "verdict": c["overall"]["verdict"], "diff": c["overall"].get("diff"),
            "ci95": c["overall"].get("ci95"),
            "latency_p50": overall["latency_s"]["p50"], "output_tokens": overall["output_tokens_total"],
            "cost": overall["cost"], "prompt_tokens_p50": prompt,
            "keys_per_query": _keys_per_query(mode["mode"], mode["topk"], prompt),
            "recall": rec.get("recall") if rec else None,
            "recall_per_layer": rec.get("per_layer") if rec else None,
        })
    base_usage = first["usage"]["baseline"]["overall"]
    baseline = {"label": first["baseline"]["label"], "run": first["baseline"]["id"],
                **mode_of(first["baseline"]), "latency_p50": base_usage["latency_s"]["p50"],
                "output_tokens": base_usage["output_tokens_total"], "cost": base_usage["cost"],
                "prompt_tokens_p50": base_usage["prompt_tokens"]["p50"]}
    baseline["keys_per_query"] = _keys_per_query(baseline["mode"], baseline["topk"],
                                                 baseline["prompt_tokens_p50"])
    return {"baseline": baseline, "columns": columns, "tasks": _task_rows(comparisons),
            "maps": _maps(comparisons)}


def _task_rows(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = sorted({t["task"] for c in comparisons for t in c["tasks"]})
    rows = []
    for name in names:
        per = [next((t for t in c["tasks"] if t["task"] == name), None) for c in comparisons]
        base = next((t["mean_b"] for t in per if t and t.get("mean_b") is not None), None)
        unit = next((t.get("unit", "points") for t in per if t), "points")
        rows.append({"task": name, "baseline": base, "unit": unit,
                     "modes": [t.get("mean_a") if t else None for t in per],
                     "diffs": [t.get("diff") if t else None for t in per],
                     "verdicts": [t.get("verdict") if t else None for t in per],
                     "n": max((t["n"] for t in per if t), default=0)})
    return rows


def _maps(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per long-context task: the baseline's map and one per candidate, on shared axes."""
    tasks = sorted({m["task"] for c in comparisons for m in c.get("longctx_maps", [])})
    out = []
    for task in tasks:
        found = [next((m for m in c.get("longctx_maps", []) if m["task"] == task), None)
                 for c in comparisons]
        lengths = sorted({x for m in found if m for x in m["lengths"]})
        depths = sorted({x for m in found if m for x in m["depths"]})
        grids = []
        base = next(m for m in found if m)
        grids.append({"label": comparisons[0]["baseline"]["label"], "mode": "baseline",
                      "cells": _grid(base, "baseline")})
        for c, m in zip(comparisons, found, strict=True):
            grids.append({"label": c["candidate"]["label"], "mode": mode_of(c["candidate"])["mode"],
                          "cells": _grid(m, "candidate") if m else {}})
        out.append({"task": task, "lengths": lengths, "depths": depths, "grids": grids})
    return out


def _grid(m: dict[str, Any], who: str) -> dict[str, dict[str, float]]:
    """{"LENGTH|DEPTH": {"value", "n"}} (string keys: the section goes to JSON as is)."""
    return {f"{cell['length']}|{cell['depth']}": {"value": cell[who], "n": cell["n"]} for cell in m["cells"]}
