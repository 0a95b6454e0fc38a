"""Distribution-level fidelity: do two models give the same text the same probabilities?

For each document both models scored (a `loglikelihood_rolling` task), token by token:

    d_t = log q_cand(x_t | x_<t) - log p_base(x_t | x_<t)       (negative: the candidate is worse)

grouped into position buckets by how many tokens the predicting query sees (the first bucket,
up to the candidate's top-k, is where DSA selects every key and so equals dense attention
exactly). Per bucket the unit of analysis is the document (tokens of one document are not
independent): each document contributes its mean d over the bucket's tokens, and the bucket's
difference is the mean over documents with a t interval on G - 1 degrees of freedom, i.e. a CI
clustered by document (grading.md 5.1). The verdict uses the same rules as task rows
(`stats.verdict`) against a margin in nats per token.

Where both sides returned their top-N alternatives, each bucket also reports the baseline-to-
candidate KL over the shared top-N partition (a lower bound of the full KL,
`logprobs.partition_kl`) and how often the two models' most likely tokens agree.

When the two models did not score the same tokens (different tokenizers), the comparison falls
back to one bucket per document: log-likelihood per UTF-8 byte.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as st

from dsparity.evals import stats
from dsparity.evals.logprobs import SpanScores, partition_kl, top1

DEFAULT_MARGIN = 0.03  # nats per token (README, "The fidelity suite")
DEFAULT_EDGES = ("k", 2048, 4096, 8192)
CURVE_BIN = 128  # tokens per point of the difference-by-position curve


def bucket_edges(settings: dict, topk: int | None) -> list[int]:
    """Upper edges of the position buckets; "k" is the candidate's top-k (dropped if unknown)."""
    edges = []
    for e in settings.get("buckets") or DEFAULT_EDGES:
        if e == "k":
            if topk:
                edges.append(int(topk))
        else:
            edges.append(int(e))
    return sorted(set(edges))


def bucket_label(lo: int, hi: int) -> str:
    return f"<= {_k(hi)}" if lo <= 1 else f"{_k(lo)}-{_k(hi)}"


def _k(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _doc_scores(sample: dict) -> SpanScores | None:
    packed = sample.get("scores") or []
    if not packed:
        return None
    spans = [SpanScores.unpack(p) for p in packed]
    if len(spans) == 1:
        return spans[0]
    cat = lambda name: None if getattr(spans[0], name) is None else np.concatenate(  # noqa: E731
        [getattr(s, name) for s in spans])
    return SpanScores(cat("logprobs"), cat("greedy"), cat("tokens"), cat("top_ids"), cat("top_logprobs"),
                      spans[0].first_position)


def compare_task(task: str, pairs: list[tuple[dict, dict]], settings: dict, *, topk: int | None,
                 margin: float | None, alpha: float) -> dict[str, Any]:
    """Bucket rows (the task rows of the comparison) plus the difference-by-position curve."""
    margin = float(settings.get("margin", margin or DEFAULT_MARGIN))
    docs = [(c, b, _doc_scores(c), _doc_scores(b)) for c, b in pairs]
    docs = [d for d in docs if d[2] is not None and d[3] is not None]
    same_tokens = bool(docs) and all(
        c.tokens is not None and b.tokens is not None and c.tokens.dtype.kind == "i" and
        c.tokens.shape == b.tokens.shape and np.array_equal(c.tokens, b.tokens)
        and c.first_position == b.first_position for _, _, c, b in docs)
    if not same_tokens:
        return {"task": task, "unit": "nats/byte", "margin": margin,
                "rows": [_per_byte_row(task, docs, margin, alpha)], "curve": [], "edges": []}
    edges = bucket_edges(settings, topk)
    bounds = list(zip([1] + [e + 1 for e in edges[:-1]], edges, strict=True))
    rows = []
    for lo, hi in bounds:
        per_doc = []
        for _, _, c, b in docs:
            pos = c.positions()
            keep = (pos >= lo) & (pos <= hi)
            if keep.any():
                per_doc.append(_doc_bucket(c, b, keep))
        if per_doc:
            rows.append(_row(f"{task} {bucket_label(lo, hi)}", per_doc, margin, alpha) |
                        {"bucket": [lo, hi], "parent": task})
    return {"task": task, "unit": "nats/token", "margin": margin, "rows": rows, "edges": edges,
            "curve": _curve(docs, alpha), "documents": len(docs),
            "tokens": int(sum(c.n for _, _, c, _ in docs))}


def _doc_bucket(c: SpanScores, b: SpanScores, keep: np.ndarray) -> dict[str, float]:
    out = {"diff": float(np.mean(c.logprobs[keep] - b.logprobs[keep])),
           "cand": float(np.mean(c.logprobs[keep])), "base": float(np.mean(b.logprobs[keep])),
           "tokens": int(keep.sum())}
    if c.top_ids is not None and b.top_ids is not None and c.top_ids.dtype == b.top_ids.dtype:
        out["kl"] = float(np.mean(partition_kl(b.top_ids[keep], b.top_logprobs[keep],
                                               c.top_ids[keep], c.top_logprobs[keep])))
        out["top1"] = float(np.mean(top1(c.top_ids[keep], c.top_logprobs[keep]) ==
                                    top1(b.top_ids[keep], b.top_logprobs[keep])))
    return out


def _row(name: str, per_doc: list[dict], margin: float, alpha: float) -> dict[str, Any]:
    d = np.array([x["diff"] for x in per_doc])
    g = d.size
    diff = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(g)) if g > 1 else math.nan
    if g > 1 and se <= 1e-12 * max(1.0, float(np.abs(d).max())):
        se = 0.0  # identical numbers on both sides: the difference is exactly known
    ci90, ci95 = _t_interval(diff, se, g - 1, 2 * alpha), _t_interval(diff, se, g - 1, alpha)
    verdict = stats.verdict(diff, ci90, ci95, margin) if g > 1 else stats.Verdict.INCONCLUSIVE
    p_tost = stats._tost_from(diff, se, g - 1, margin)
    p_diff = _p_two_sided(diff, se, g - 1)
    row = {"task": name, "kind": "fidelity", "unit": "nats/token", "n": g, "n_clusters": g,
           "tokens": int(sum(x["tokens"] for x in per_doc)),
           "mean_a": float(np.mean([x["cand"] for x in per_doc])),
           "mean_b": float(np.mean([x["base"] for x in per_doc])), "diff": diff, "se": _num(se),
           "ci90": [_num(v) for v in ci90], "ci95": [_num(v) for v in ci95],
           "p_tost": _num(p_tost), "p_diff": _num(p_diff), "p_mcnemar": None,
           "equivalent": bool(p_tost < alpha) if math.isfinite(p_tost) else False,
           "verdict": verdict.value, "margin": margin, "alpha": alpha, "more_items_needed": None}
    for key in ("kl", "top1"):
        values = [x[key] for x in per_doc if key in x]
        row[key] = float(np.mean(values)) if values else None
    return row


def _per_byte_row(task: str, docs: list, margin: float, alpha: float) -> dict[str, Any]:
    per_doc = []
    for c_sample, _, c, b in docs:
        nbytes = (c_sample["doc"].get("_lm_eval") or {}).get("bytes") or 1
        per_doc.append({"diff": (c.total - b.total) / nbytes, "cand": c.total / nbytes,
                        "base": b.total / nbytes, "tokens": c.n})
    row = _row(f"{task} per byte", per_doc, margin, alpha) if per_doc else \
        {"task": f"{task} per byte", "n": 0, "verdict": "inconclusive", "diff": None}
    return row | {"unit": "nats/byte", "parent": task}


def _curve(docs: list, alpha: float) -> list[dict[str, float]]:
    """Mean difference per CURVE_BIN positions across documents, with a 95% t band."""
    top = max(int(c.positions().max()) for _, _, c, _ in docs)
    points = []
    for lo in range(1, top + 1, CURVE_BIN):
        hi = lo + CURVE_BIN - 1
        per_doc = []
        for _, _, c, b in docs:
            pos = c.positions()
            keep = (pos >= lo) & (pos <= hi)
            if keep.any():
                per_doc.append(float(np.mean(c.logprobs[keep] - b.logprobs[keep])))
        if len(per_doc) < 2:
            continue
        d = np.array(per_doc)
        se = float(d.std(ddof=1) / math.sqrt(d.size))
        lo95, hi95 = _t_interval(float(d.mean()), se, d.size - 1, alpha)
        points.append({"position": (lo + hi) / 2, "diff": float(d.mean()), "lo": lo95, "hi": hi95})
    return points


def _t_interval(diff: float, se: float, df: int, alpha: float) -> tuple[float, float]:
    if df < 1 or not math.isfinite(se):
        return (math.nan, math.nan)
    half = float(st.t.ppf(1 - alpha / 2, df)) * se
    return (diff - half, diff + half)


def _p_two_sided(diff: float, se: float, df: int) -> float:
    if df < 1 or not math.isfinite(se):
        return math.nan
    if se == 0:
        return 0.0 if diff != 0 else 1.0
    return float(2 * st.t.sf(abs(diff) / se, df))


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None
