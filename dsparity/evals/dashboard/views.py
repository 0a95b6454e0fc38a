"""Plain-data views for the dashboard pages: paired samples, answer diffs, trend charts."""

from __future__ import annotations

import difflib
import re
import time
from html import escape
from typing import Any

from dsparity.evals.logprobs import prompt_of
from dsparity.evals.store import SampleKey, Store

FILTERS = ("all", "disagreements", "regressions", "errors")
DIFF_CHARS = 6000  # longer answers are diffed on their first characters only
PALETTE = ("#0969da", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#57606a", "#e16f24", "#116329")


def _side(s: dict | None, g: dict | None) -> dict[str, Any] | None:
    if s is None:
        return None
    details = (g or {}).get("details") or {}
    return {"judge_reason": _judge_reason(details), "text": s["text"], "reasoning": s["reasoning"],
            "error": s["error"],
            "error_class": s["error_class"], "score": None if g is None else g["score"],
            "passed": None if g is None else g["passed"], "details": details,
            "screenshots": [str(p) for p in details.get("screenshots") or [] if isinstance(p, str)],
            "doc_hash": s["doc_hash"], "prompt_hash": s["prompt_hash"]}


def _judge_reason(details: dict) -> str | None:
    """The judge's own words, where a judge graded the answer (rubric score or checklist)."""
    verdict = details.get("verdict")
    if isinstance(verdict, dict) and verdict.get("reason"):
        return str(verdict["reason"])
    reasons = details.get("reasons")
    if isinstance(reasons, list) and reasons:
        return " · ".join(str(r) for r in reasons)
    return None


def pair_samples(store: Store, candidate_run: str, baseline_run: str) -> list[dict[str, Any]]:
    """Every (task, doc, repeat) of either run, side by side, with the kinds the filters use.

    A disagreement is what the comparison counts as one: both answered and graded, on the same
    document and prompt, with different scores.
    """
    runs = {"candidate": store.run(candidate_run), "baseline": store.run(baseline_run)}
    rows: dict[tuple, dict[str, Any]] = {}
    for who, run in runs.items():
        grades = store.grades(run["id"])
        for s in store.samples(run["id"]):
            key = (s["task"], s["doc_id"], s["repeat"])
            row = rows.setdefault(key, {
                "task": s["task"], "doc_id": s["doc_id"], "repeat": s["repeat"],
                "prompt": prompt_of(s["request"]),
                "target": s["target"], "grader": (run["tasks"].get(s["task"]) or {}).get("grader", ""),
                "candidate": None, "baseline": None})
            row[who] = _side(s, grades.get(SampleKey(*key)))
    out = []
    for key in sorted(rows):
        row = rows[key]
        c, b = row["candidate"], row["baseline"]
        same_item = bool(c and b and (c["doc_hash"], c["prompt_hash"]) == (b["doc_hash"], b["prompt_hash"]))
        scored = same_item and c["error"] is None and b["error"] is None \
            and c["score"] is not None and b["score"] is not None
        row["error"] = any(x is not None and x["error"] is not None for x in (c, b))
        row["disagreement"] = bool(scored and c["score"] != b["score"])
        row["regression"] = bool(scored and c["score"] < b["score"])
        row["paired"] = same_item
        out.append(row)
    return out


def filter_rows(rows: list[dict], *, kind: str, task: str, grader: str, query: str) -> list[dict]:
    q = query.casefold()

    def keep(r: dict) -> bool:
        if kind == "disagreements" and not r["disagreement"]:
            return False
        if kind == "regressions" and not r["regression"]:
            return False
        if kind == "errors" and not r["error"]:
            return False
        if task and r["task"] != task:
            return False
        if grader and r["grader"] != grader:
            return False
        if q:
            texts = [r["prompt"], r["target"]] + [(r[w] or {}).get("text", "")
                                                  for w in ("candidate", "baseline")]
            return any(q in t.casefold() for t in texts)
        return True

    return [r for r in rows if keep(r)]


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """(op, text) segments turning the baseline answer `b` into the candidate answer `a`:
    op is "same", "del" (baseline only) or "ins" (candidate only)."""
    ta, tb = re.split(r"(\s+)", a[:DIFF_CHARS]), re.split(r"(\s+)", b[:DIFF_CHARS])
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, tb, ta, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("same", "".join(tb[i1:i2])))
            continue
        if i2 > i1:
            out.append(("del", "".join(tb[i1:i2])))
        if j2 > j1:
            out.append(("ins", "".join(ta[j1:j2])))
    return out


def trend_svg(history: list[dict], *, width: int = 900, height: int = 320) -> str:
    """Per-task difference (candidate - baseline, points) over a job's runs.

    The margin band is shaded; each run's overall verdict is a coloured strip; runs with drift
    events get a red ring (class drift-marker); failed runs an x (class failed-marker); a change
    of model revision or dsparity version a dashed line (class revision-change). Everything
    user-controlled is escaped.
    """
    if not history:
        return ""
    left, right, top, bottom = 60, 170, 30, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    done = [r for r in history if r.get("summary")]
    diffs = [t["diff"] for r in done for t in r["summary"]["tasks"].values() if t.get("diff") is not None]
    margin = max([r["summary"].get("margin", 0.05) for r in done] or [0.05])
    span = max([abs(d) for d in diffs] + [margin * 2, 0.1])
    n = len(history)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v + span) / (2 * span))

    verdict_colour = {"equivalent": "#1a7f37", "better": "#0969da", "worse": "#cf222e",
                      "materially_worse": "#82071e", "inconclusive": "#8c959f"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="trend" width="{width}" height="{height}" '
             f'role="img" aria-label="per-task difference over runs">',
             f'<rect x="{left}" y="{y(margin):.1f}" width="{plot_w}" height="{y(-margin) - y(margin):.1f}" '
             f'fill="#e6f4ea"/>',
             f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + plot_w}" y2="{y(0):.1f}" stroke="#888" '
             f'stroke-dasharray="3,3"/>']
    for v in (-span, -margin, 0.0, margin, span):
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">'
                     f'{100 * v:+.0f}</text>')
    tasks = sorted({t for r in done for t in r["summary"]["tasks"]})
    for k, task in enumerate(tasks):
        colour = PALETTE[k % len(PALETTE)]
        points = [(i, r["summary"]["tasks"][task]["diff"]) for i, r in enumerate(history)
                  if r.get("summary") and task in r["summary"]["tasks"]
                  and r["summary"]["tasks"][task].get("diff") is not None]
        if len(points) > 1:
            path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for i, v in points:
            parts.append(f'<circle class="point" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{colour}">'
                         f'<title>{escape(task)}: {100 * v:+.1f} points</title></circle>')
        parts.append(f'<text x="{left + plot_w + 10}" y="{top + 14 * k + 10}" font-size="11" '
                     f'fill="{colour}">{escape(task)}</text>')
    prev_marks = None
    for i, r in enumerate(history):
        jid = escape(str(r["id"]))
        summary = r.get("summary")
        if summary:
            colour = verdict_colour.get(summary["overall"]["verdict"], "#8c959f")
            parts.append(f'<rect class="verdict" data-run="{jid}" x="{x(i) - 6:.1f}" y="{top - 22}" '
                         f'width="12" height="8" fill="{colour}"><title>'
                         f'{escape(summary["overall"]["verdict"])}</title></rect>')
            marks = (summary["candidate"].get("revision"), summary["baseline"].get("revision"),
                     summary["candidate"].get("dsparity"))
            if prev_marks is not None and marks != prev_marks:
                what = [name for name, a, b in zip(("candidate", "baseline", "dsparity"), prev_marks, marks,
                                                   strict=True) if a != b]
                x0 = x(i) - plot_w / n / 2
                parts.append(f'<line class="revision-change" data-run="{jid}" x1="{x0:.1f}" '
                             f'y1="{top}" x2="{x0:.1f}" y2="{top + plot_h}" '
                             f'stroke="#6e7781" stroke-dasharray="6,3"><title>changed: '
                             f'{escape(", ".join(what))}</title></line>')
            prev_marks = marks
        if r.get("status") == "failed":
            parts.append(f'<text class="failed-marker" data-run="{jid}" x="{x(i):.1f}" y="{y(0) + 5:.1f}" '
                         f'text-anchor="middle" font-size="16" fill="#cf222e">×<title>failed: '
                         f'{escape(str(r.get("cause") or ""))}</title></text>')
        if r.get("drift"):
            ys = [y(t["diff"]) for t in (summary or {}).get("tasks", {}).values()
                  if t.get("diff") is not None]
            cy = min(ys) if ys else y(0)
            parts.append(f'<circle class="drift-marker" data-run="{jid}" cx="{x(i):.1f}" cy="{cy:.1f}" r="9" '
                         f'fill="none" stroke="#cf222e" stroke-width="2.5"><title>drift: '
                         f'{len(r["drift"])} event(s)</title></circle>')
        label = time.strftime("%m-%d %H:%M", time.gmtime(r["started_at"]))
        parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="10">'
                     f'{label}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="11">candidate − baseline (points) per '
                 f'run; band ±{100 * margin:.1f} margin</text></svg>')
    return "".join(parts)
