"""Inline SVG charts: no JavaScript, no external assets, so the HTML report works offline."""

from __future__ import annotations

from html import escape


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
