"""Inline SVG charts: no JavaScript, no external assets, so the HTML report works offline."""

from __future__ import annotations

from html import escape

from dsparity.evals.stats.fidelity import CURVE_BIN

CURVE_HALF_BIN = CURVE_BIN / 2


def forest_plot_svg(tasks: list[dict], margin: float, *, width: int = 640) -> str:
    """Per-task difference (candidate - baseline) with its 95% CI, and the +-margin band."""
    rows = [t for t in tasks if t.get("diff") is not None]
    if not rows:
        return ""
    row_h, left, right, top = 26, 180, 30, 24
    height = top + row_h * len(rows) + 30
    lows = [t["ci95"][0] for t in rows if t.get("ci95") and t["ci95"][0] is not None]
    highs = [t["ci95"][1] for t in rows if t.get("ci95") and t["ci95"][1] is not None]
    span = max([abs(v) for v in lows + highs] + [margin * 1.5, 0.05])

    def x(v: float) -> float:
        return left + (v + span) / (2 * span) * (width - left - right)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="per-task differences with 95% CIs">',
             f'<rect x="{x(-margin):.1f}" y="{top - 10}" width="{x(margin) - x(-margin):.1f}" '
             f'height="{row_h * len(rows) + 10}" fill="#e6f4ea"/>',
             f'<line x1="{x(0):.1f}" y1="{top - 10}" x2="{x(0):.1f}" '
             f'y2="{top + row_h * len(rows)}" stroke="#888" stroke-dasharray="3,3"/>']
    for i, t in enumerate(rows):
        y = top + row_h * i + row_h / 2
        lo, hi = t["ci95"] if t.get("ci95") and t["ci95"][0] is not None else (t["diff"], t["diff"])
        color = {"equivalent": "#1a7f37", "worse": "#cf222e", "materially_worse": "#82071e",
                 "better": "#0969da"}.get(t["verdict"], "#6e7781")
        parts += [f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12">'
                  f'{escape(t["task"])}</text>',
                  f'<line x1="{x(lo):.1f}" y1="{y:.1f}" x2="{x(hi):.1f}" y2="{y:.1f}" '
                  f'stroke="{color}" stroke-width="2"/>',
                  f'<circle cx="{x(t["diff"]):.1f}" cy="{y:.1f}" r="4" fill="{color}"/>']
    axis_y = top + row_h * len(rows) + 18
    ticks = [-span, 0.0, span] + ([-margin, margin] if margin / span > 0.15 else [])  # no overlaps
    for v in ticks:
        parts.append(f'<text x="{x(v):.1f}" y="{axis_y}" text-anchor="middle" font-size="11">'
                     f'{100 * v:+.0f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def fidelity_svg(result: dict, *, width: int = 520, height: int = 240) -> str:
    """NLL difference (candidate - baseline, nats/token; above 0 = candidate worse) by position,
    with its 95% band across documents, the +-margin band and the bucket edges."""
    curve = result.get("curve") or []
    if not curve:
        return ""
    left, right, top, bottom = 56, 12, 14, 34
    xmax = max(p["position"] for p in curve) + CURVE_HALF_BIN
    ys = [-p["lo"] for p in curve] + [-p["hi"] for p in curve] + [result["margin"], -result["margin"]]
    span = max(abs(v) for v in ys) * 1.15 or 0.01

    def sx(x: float) -> float:
        return left + x / xmax * (width - left - right)

    def sy(y: float) -> float:
        return top + (span - y) / (2 * span) * (height - top - bottom)

    m = result["margin"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="NLL difference by position">',
             f'<rect x="{left}" y="{sy(m):.1f}" width="{width - left - right}" '
             f'height="{sy(-m) - sy(m):.1f}" fill="#e6f4ea"/>',
             f'<line x1="{left}" y1="{sy(0):.1f}" x2="{width - right}" y2="{sy(0):.1f}" stroke="#888" '
             f'stroke-dasharray="3,3"/>']
    for edge in result.get("edges") or []:
        if edge < xmax:
            parts.append(f'<line x1="{sx(edge):.1f}" y1="{top}" x2="{sx(edge):.1f}" y2="{height - bottom}" '
                         f'stroke="#d0d7de"/><text x="{sx(edge) + 2:.1f}" y="{top + 10}" font-size="10" '
                         f'fill="#57606a">{edge}</text>')
    band = [(sx(p["position"]), sy(-p["lo"])) for p in curve] + \
        [(sx(p["position"]), sy(-p["hi"])) for p in reversed(curve)]
    parts.append('<polygon fill="#cf222e" fill-opacity="0.15" points="'
                 + " ".join(f"{x:.1f},{y:.1f}" for x, y in band) + '"/>')
    parts.append('<polyline fill="none" stroke="#cf222e" stroke-width="1.5" points="'
                 + " ".join(f"{sx(p['position']):.1f},{sy(-p['diff']):.1f}" for p in curve) + '"/>')
    for v in (-span, 0.0, span):
        parts.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="10">'
                     f'{v:+.3f}</text>')
    parts.append(f'<text x="{(left + width) / 2:.0f}" y="{height - 4}" text-anchor="middle" '
                 f'font-size="11">tokens of context (position)</text>')
    parts.append(f'<text x="{left - 4}" y="{height - bottom + 14}" text-anchor="end" font-size="10">0</text>'
                 f'<text x="{width - right}" y="{height - bottom + 14}" text-anchor="end" '
                 f'font-size="10">{int(xmax)}</text></svg>')
    return "".join(parts)


def flops_per_token(shape: dict, position: int, topk: int | None, *, indexer: bool = True) -> float:
    """Forward FLOPs for one token that sees `position` keys: the linear layers (2 per weight) plus
    attention over every key (dense) or over min(k, position) keys plus the lightning indexer's
    projections and its scores over every key (DSA, dsa.md §3)."""
    h, n_layers = shape["hidden"], shape["layers"]
    heads, kv, d, inter = shape["heads"], shape["kv_heads"], shape["head_dim"], shape["intermediate"]
    linear = 2 * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * inter)
    if topk is None:
        attention = 4 * position * heads * d
    else:
        hi, di = shape.get("index_heads", 4), shape.get("index_dim", 64)
        scoring = 2 * (h * hi * di + h * di + h * hi) + 2 * position * hi * di if indexer else 0
        attention = scoring + 4 * min(position, topk) * heads * d
    return n_layers * (linear + attention) + 2 * h * shape["vocab"]


def cost_svg(shape: dict, topk: int, max_position: int, *, indexer: bool = True, width: int = 520,
             height: int = 240) -> str:
    """Sparse / dense FLOPs per token by position for the candidate's shape (analytic, not
    timed); `indexer`: the lightning indexer's cost counts (DSA), else a positional rule."""
    left, right, top, bottom = 56, 12, 14, 34
    steps = 60
    points = []
    for i in range(1, steps + 1):
        p = max(1, int(max_position * i / steps))
        points.append((p, flops_per_token(shape, p, topk, indexer=indexer) / flops_per_token(shape, p, None)))
    ymax = max(1.05, max(r for _, r in points) * 1.05)
    ymin = min(0.0, min(r for _, r in points))

    def sx(x: float) -> float:
        return left + x / max_position * (width - left - right)

    def sy(y: float) -> float:
        return top + (ymax - y) / (ymax - ymin) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="cost per token by position">',
             f'<line x1="{left}" y1="{sy(1):.1f}" x2="{width - right}" y2="{sy(1):.1f}" stroke="#888" '
             f'stroke-dasharray="3,3"/>',
             f'<line x1="{sx(topk):.1f}" y1="{top}" x2="{sx(topk):.1f}" y2="{height - bottom}" '
             f'stroke="#d0d7de"/><text x="{sx(topk) + 2:.1f}" y="{top + 10}" font-size="10" '
             f'fill="#57606a">k={topk}</text>',
             '<polyline fill="none" stroke="#0969da" stroke-width="1.5" points="'
             + " ".join(f"{sx(p):.1f},{sy(r):.1f}" for p, r in points) + '"/>']
    for v in (ymin, 1.0, ymax):
        parts.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="10">'
                     f'{v:.2f}x</text>')
    parts.append(f'<text x="{(left + width) / 2:.0f}" y="{height - 4}" text-anchor="middle" '
                 f'font-size="11">tokens of context (position)</text>')
    parts.append(f'<text x="{width - right}" y="{height - bottom + 14}" text-anchor="end" '
                 f'font-size="10">{max_position}</text></svg>')
    return "".join(parts)
