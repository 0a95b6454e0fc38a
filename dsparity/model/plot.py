"""The warm-up plot: held-out recall (with the oracle and window+sink references) and KL by step.

matplotlib is not a dependency: when it is missing we write a small SVG by hand, which every
browser shows. `write_warmup_plot` returns the path it actually wrote (.png or .svg).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

W, H, PAD = 420, 280, 48  # one panel, in SVG user units


def _series(history: list[dict], key: str) -> list[tuple[float, float]]:
    return [(h["step"], h[key]) for h in history if h.get(key) is not None]


def write_warmup_plot(history: list[dict], path: str | Path, title: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        path = path.with_suffix(".svg")
        path.write_text(_svg(history, title), encoding="utf-8")
        return path
    return _png(history, path.with_suffix(".png"), title)


def _png(history: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (("recall", "indexer top-k", "-o"), ("oracle", "oracle top-k", "--"),
                              ("window_sink", "window + sink", ":")):
        pts = _series(history, key)
        a.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    a.set(xlabel="step", ylabel="held-out attention-mass recall", title="recall")
    a.legend()
    pts = _series(history, "kl")
    b.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label="held-out KL")
    b.set(xlabel="step", ylabel="KL(p || softmax(I))", title="KL")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _panel(x0: float, lines: list[tuple[str, str, str, list[tuple[float, float]]]],
           ylabel: str, steps: float) -> str:
    ys = [y for *_, pts in lines for _, y in pts] or [0.0, 1.0]
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)

    def sx(v: float) -> float:
        return x0 + PAD + (W - 1.5 * PAD) * (v / max(steps, 1))

    def sy(v: float) -> float:
        return H - PAD + (v - lo) / (hi - lo) * -(H - 1.6 * PAD)

    out = [f'<rect x="{x0 + PAD}" y="{0.6 * PAD}" width="{W - 1.5 * PAD}" '
           f'height="{H - 1.6 * PAD}" fill="none" stroke="#999"/>']
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        out.append(f'<text x="{x0 + PAD - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" '
                   f'font-size="10">{v:.3f}</text>')
    for v in (0, steps):
        out.append(f'<text x="{sx(v):.1f}" y="{H - PAD + 14}" text-anchor="middle" '
                   f'font-size="10">{v:g}</text>')
    out.append(f'<text x="{x0 + W / 2}" y="{H - 8}" text-anchor="middle" font-size="11">step'
               f'</text><text x="{x0 + 12}" y="{H / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 {x0 + 12} {H / 2})">{escape(ylabel)}</text>')
    for i, (label, color, dash, pts) in enumerate(lines):
        if not pts:
            continue
        d = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2" '
                   f'stroke-dasharray="{dash}"/>')
        out.append(f'<text x="{x0 + PAD + 8}" y="{0.6 * PAD + 14 + 13 * i}" font-size="11" '
                   f'fill="{color}">{escape(label)}: {pts[-1][1]:.3f}</text>')
    return "\n".join(out)


def _svg(history: list[dict], title: str) -> str:
    steps = max((h["step"] for h in history), default=1)
    recall = [("indexer top-k", "#1f77b4", "", _series(history, "recall")),
              ("oracle top-k", "#2ca02c", "6 4", _series(history, "oracle")),
              ("window + sink", "#d62728", "2 3", _series(history, "window_sink"))]
    kl = [("held-out KL", "#9467bd", "", _series(history, "kl"))]
    body = _panel(0, recall, "held-out attention-mass recall", steps) + "\n" + \
        _panel(W, kl, "KL(p || softmax(I))", steps)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 20}" '
            f'font-family="sans-serif"><text x="{W}" y="16" text-anchor="middle" '
            f'font-size="13">{escape(title)}</text><g transform="translate(0,16)">{body}</g></svg>\n')
