"""Plain-data views for the dashboard pages: paired samples, answer diffs, trend charts."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from html import escape
from itertools import groupby
from operator import itemgetter
from typing import Any

from dsparity.evals.dashboard import queries
from dsparity.evals.logprobs import prompt_of
from dsparity.evals.storage.store import Store

FILTERS = ("all", "disagreements", "regressions", "errors")
DIFF_CHARS = 4000  # longer answers are diffed on their first characters only (as many as shown)...
DIFF_TOKENS = 1000  # ...and first words and spaces
DIFF_WORK = 60_000  # search steps per pair of answers, at most (~20 ms; bench/dashboard_pages.py)
PAGE_DIFF_WORK = 150_000  # and per page: later rows of a page of hard pairs get the fallback
_TOKEN = re.compile(r"\s+|\S+")  # words and the whitespace between them
PALETTE = ("#0969da", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#57606a", "#e16f24", "#116329")


def _side(s: dict | None, g: dict | None) -> dict[str, Any] | None:
    if s is None:
        return None
    details = (g or {}).get("details") or {}
    return {"judge_reason": _judge_reason(details), "text": s["text"], "reasoning": s["reasoning"],
            "text_chars": s.get("text_chars", len(s["text"])),
            "reasoning_chars": s.get("reasoning_chars", len(s["reasoning"])),
            "error": s["error"], "errored": s["error"] is not None,
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


def pair_index(store: Store, candidate_run: str, baseline_run: str) -> list[dict[str, Any]]:
    """Every (task, doc, repeat) of either run, side by side, without texts: the kinds the
    filters use, for every row of a comparison at the cost of a few light columns.

    A disagreement is what the comparison counts as one: both answered and graded, on the same
    document and prompt, with different scores.
    """
    rows: dict[tuple, dict[str, Any]] = {}
    for who, run_id in (("candidate", candidate_run), ("baseline", baseline_run)):
        run = store.run(run_id)
        for key, side in queries.sample_index(store, run["id"]).items():
            row = rows.setdefault(key, {"task": key[0], "doc_id": key[1], "repeat": key[2],
                                        "grader": (run["tasks"].get(key[0]) or {}).get("grader", ""),
                                        "candidate": None, "baseline": None})
            row[who] = side
    return [_kinds(rows[key]) for key in sorted(rows)]


def pair_samples(store: Store, candidate_run: str, baseline_run: str) -> list[dict[str, Any]]:
    """Every row of pair_index with its prompt, target, answers and grade details."""
    return with_texts(store, candidate_run, baseline_run, pair_index(store, candidate_run, baseline_run))


def with_texts(store: Store, candidate_run: str, baseline_run: str, rows: list[dict[str, Any]],
               chars: int | None = None) -> list[dict[str, Any]]:
    """`rows` (from pair_index: one page of them) with prompts, targets, answers and grade
    details; answers cut at `chars` characters when given (their lengths are kept)."""
    keys = [(r["task"], r["doc_id"], r["repeat"]) for r in rows]
    full: dict[tuple, dict[str, tuple]] = {}
    for who, run_id in (("candidate", candidate_run), ("baseline", baseline_run)):
        run_id = store.run(run_id)["id"]
        for i in range(0, len(keys), 200):  # bounded IN lists
            found, graded = queries.sample_rows(store, run_id, keys[i:i + 200], chars)
            for key, s in found.items():
                full.setdefault(key, {})[who] = (s, graded.get(key))
    out = []
    for r in rows:
        got = full.get((r["task"], r["doc_id"], r["repeat"]), {})
        first = next(iter(got.values()), (None, None))[0] or {"request": {}, "target": ""}
        out.append(_kinds(r | {
            "prompt": prompt_of(first["request"]) if first["request"] else "", "target": first["target"],
            "candidate": _side(*got["candidate"]) if "candidate" in got else None,
            "baseline": _side(*got["baseline"]) if "baseline" in got else None}))
    return out


RUN_FILTERS = ("all", "wrong", "errors")  # a run's samples: every one, below full marks, errored


def run_index(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Every sample of one run without its texts, in key order: what its filters need."""
    return [{"task": k[0], "doc_id": k[1], "repeat": k[2], **v}
            for k, v in sorted(queries.sample_index(store, run_id).items())]


def filter_run_rows(rows: list[dict], *, kind: str, task: str,
                    matching: set[tuple] | None = None) -> list[dict]:
    def keep(r: dict) -> bool:
        if kind == "errors" and not r["errored"]:
            return False
        if kind == "wrong" and (r["errored"] or r["score"] is None or r["score"] >= 1.0):
            return False
        if task and r["task"] != task:
            return False
        return matching is None or (r["task"], r["doc_id"], r["repeat"]) in matching

    return [r for r in rows if keep(r)]


def run_page_rows(store: Store, run_id: str, rows: list[dict[str, Any]], chars: int) -> list[dict[str, Any]]:
    """One page of a run's samples with prompt, target, answer (cut at `chars`, its length kept),
    reasoning, error, grade and the context cut, read for these rows only."""
    found, graded = queries.sample_rows(store, run_id, [(r["task"], r["doc_id"], r["repeat"]) for r in rows],
                                        chars)
    out = []
    for r in rows:
        key = (r["task"], r["doc_id"], r["repeat"])
        s = found.get(key)
        if s is None:
            continue
        request = s["request"] or {}
        out.append(r | {"prompt": prompt_of(request) if request else "", "target": s["target"],
                        "context_cut": request.get("context_cut"), "sample": _side(s, graded.get(key))})
    return out


def _kinds(row: dict[str, Any]) -> dict[str, Any]:
    c, b = row["candidate"], row["baseline"]
    same_item = bool(c and b and (c["doc_hash"], c["prompt_hash"]) == (b["doc_hash"], b["prompt_hash"]))
    scored = same_item and not c["errored"] and not b["errored"] \
        and c["score"] is not None and b["score"] is not None
    row["error"] = any(x is not None and x["errored"] for x in (c, b))
    row["disagreement"] = bool(scored and c["score"] != b["score"])
    row["regression"] = bool(scored and c["score"] < b["score"])
    row["paired"] = same_item
    return row


def filter_rows(rows: list[dict], *, kind: str, task: str, grader: str,
                matching: set[tuple] | None = None) -> list[dict]:
    """Rows of one kind (FILTERS), task and grader; `matching`: only these keys (a search)."""

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
        return matching is None or (r["task"], r["doc_id"], r["repeat"]) in matching

    return [r for r in rows if keep(r)]


@dataclass
class WordDiff:
    """A word diff and what it cost. `exact` is False where the answers differ too much to diff
    within the budget: the differing middle is then shown as one deletion and one insertion."""

    segments: list[tuple[str, str]]  # (op, text): "same", "del" (baseline only), "ins" (candidate only)
    work: int  # token comparisons and search steps spent
    exact: bool
    clipped: bool  # an answer was longer than DIFF_CHARS / DIFF_TOKENS: only its start was diffed


def word_diff(a: str, b: str, *, budget: int = DIFF_WORK) -> WordDiff:
    """Segments turning the baseline answer `b` into the candidate answer `a`, word by word.

    Bounded whatever the answers are: each is cut at DIFF_CHARS characters and DIFF_TOKENS
    tokens, the common start and end are matched in linear time, and the middle is diffed with
    Myers' O((N+M)D) algorithm (Myers 1986, "An O(ND) difference algorithm and its variations",
    Algorithmica 1:251-266), which gives up once `budget` steps are spent (difflib's matcher is
    cubic on repetitive text: 13-87 s for one pair of long answers).
    """
    ta, tb = _tokens(a), _tokens(b)
    clipped = sum(map(len, ta)) < len(a) or sum(map(len, tb)) < len(b)
    head = 0
    while head < len(ta) and head < len(tb) and ta[head] == tb[head]:
        head += 1
    tail = 0
    while tail < len(ta) - head and tail < len(tb) - head and ta[-1 - tail] == tb[-1 - tail]:
        tail += 1
    mid_a, mid_b = ta[head:len(ta) - tail], tb[head:len(tb) - tail]
    ops, work = _myers(mid_b, mid_a, budget)
    exact = ops is not None
    if ops is None:
        ops = [("del", "".join(mid_b)), ("ins", "".join(mid_a))]
    every = [("same", "".join(ta[:head])), *ops, ("same", "".join(ta[len(ta) - tail:]))]
    segments = [(op, "".join(t for _, t in run)) for op, run in groupby(every, key=itemgetter(0))]
    return WordDiff([s for s in segments if s[1]], work + head + tail, exact, clipped)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text, 0, DIFF_CHARS)[:DIFF_TOKENS]


def _myers(old: list[str], new: list[str], budget: int) -> tuple[list[tuple[str, str]] | None, int]:
    """Shortest edit script from `old` to `new` as (op, token) pairs, or None past `budget` steps.
    Each step is one diagonal visited or one token compared; the saved frontiers cost one step per
    entry, so memory is bounded by the budget too."""
    n, m = len(old), len(new)
    if not n or not m:
        return [("del", t) for t in old] + [("ins", t) for t in new], 0
    offset = n + m + 1
    v = [0] * (2 * offset + 1)
    trace: list[list[int]] = []
    work = 0
    for d in range(n + m + 1):
        lo, hi = offset - d, offset + d
        trace.append(v[lo - 1:hi + 2])
        work += hi - lo + 3
        for k in range(lo, hi + 1, 2):
            if work > budget:
                return None, work
            x = v[k + 1] if k == lo or (k != hi and v[k - 1] < v[k + 1]) else v[k - 1] + 1
            y = x - (k - offset)
            start = x
            while x < n and y < m and old[x] == new[y]:
                x += 1
                y += 1
            v[k] = x
            work += 1 + x - start
            if x >= n and y >= m:
                return _backtrack(old, new, trace, offset), work
    raise AssertionError("unreachable: d = n + m always reaches the end")


def _backtrack(old: list[str], new: list[str], trace: list[list[int]], offset: int) -> list[tuple[str, str]]:
    x, y = len(old), len(new)
    ops: list[tuple[str, str]] = []
    for d in range(len(trace) - 1, 0, -1):
        saved = trace[d]  # v[offset - d - 1 .. offset + d + 1] before step d

        def at(k: int, saved=saved, d=d) -> int:
            return saved[k - (offset - d - 1)]

        k = x - y + offset
        down = k == offset - d or (k != offset + d and at(k - 1) < at(k + 1))
        prev_k = k + 1 if down else k - 1
        prev_x = at(prev_k)
        prev_y = prev_x - (prev_k - offset)
        while x > prev_x + (0 if down else 1) and y > prev_y + (1 if down else 0):
            x, y = x - 1, y - 1
            ops.append(("same", old[x]))
        if down:
            y -= 1
            ops.append(("ins", new[y]))
        else:
            x -= 1
            ops.append(("del", old[x]))
    while x > 0 and y > 0:
        x, y = x - 1, y - 1
        ops.append(("same", old[x]))
    ops.reverse()
    return ops


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
