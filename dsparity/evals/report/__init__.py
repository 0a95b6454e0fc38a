"""Reports: JSON for machines, Markdown for pull requests and chat, one self-contained HTML file.

All three render the same comparison dict (see `dsparity.evals.compare.compare_runs`) through
one template set; model output is always escaped (jinja2 autoescape) and nothing is loaded from
outside the file.
"""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from dsparity.evals.report.charts import forest_plot_svg
from dsparity.evals.specs import SERVED_DEFAULT_LABEL

VERDICT_WORDS = {
    "equivalent": "equivalent within the margin",
    "better": "candidate better",
    "worse": "candidate worse",
    "materially_worse": "candidate materially worse (beyond the margin)",
    "inconclusive": "inconclusive (too few items to decide)",
}


def _env() -> Environment:
    env = Environment(loader=PackageLoader("dsparity.evals.report", "templates"),
                      autoescape=select_autoescape(["html", "j2.html", "css"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * v:+.1f}"
    env.filters["pct0"] = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
    env.filters["p"] = lambda v: "n/a" if v is None else (f"{v:.3f}" if v >= 0.001 else "<0.001")
    env.filters["ci"] = lambda c: "n/a" if not c or c[0] is None else \
        f"[{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]"
    env.filters["clip"] = lambda s, n=600: s if len(s) <= n else s[:n] + f"… [{len(s) - n} more chars]"
    env.filters["ci0"] = lambda c: "n/a" if not c or c[0] is None else \
        f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"
    env.filters["num"] = lambda v, digits=0: "–" if v is None else f"{v:.{digits}f}"
    env.filters["money"] = lambda v: "–" if v is None else f"{v:.4f}"
    env.filters["heat"] = heat_color
    env.filters["png"] = embed_png
    env.filters["mdcode"] = lambda s: s.replace("\n", " ").replace("`", "'").replace("|", "\\|")
    env.globals["verdict_words"] = VERDICT_WORDS
    return env


def embed_png(path: str, max_bytes: int = 2_000_000) -> str:
    """A screenshot as a data: URL, so the HTML stays one self-contained file ("" if unreadable)."""
    p = Path(path)
    if p.suffix.lower() != ".png" or not p.is_file() or p.stat().st_size > max_bytes:
        return ""
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()


def heat_color(value: float, diverging: bool = False) -> str:
    """Cell colour: red-to-green for accuracy, blue/red around zero for a difference."""
    if diverging:
        v = max(-1.0, min(1.0, value))
        return f"hsl({210 if v >= 0 else 0}, 70%, {100 - 45 * abs(v):.0f}%)"
    return f"hsl({120 * max(0.0, min(1.0, value)):.0f}, 65%, 78%)"


def reproduce_command(comparison: dict[str, Any]) -> str:
    c, b = comparison["candidate"], comparison["baseline"]
    settings = c["settings"]
    parts = ["dsparity", "compare", "--candidate", c["model_spec"]]
    if b["label"] != SERVED_DEFAULT_LABEL:  # else the command serves the baseline itself
        parts += ["--baseline", b["model_spec"]]
    parts += ["--suite", settings["suite"], "--margin", str(comparison["margin"])]
    if settings.get("limit"):
        parts += ["--limit", str(settings["limit"])]
    if settings.get("repeats", 1) != 1:
        parts += ["--repeats", str(settings["repeats"])]
    return shlex.join(parts)


def render(comparison: dict[str, Any], out_dir: Path, *, name: str) -> dict[str, Path]:
    """Write name.json, name.md and name.html under out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _env()
    context = {"c": comparison, "reproduce": reproduce_command(comparison),
               "forest_svg": forest_plot_svg(comparison["tasks"], comparison["margin"])}
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md",
             "html": out_dir / f"{name}.html"}
    paths["json"].write_text(json.dumps(comparison, indent=2, default=str), encoding="utf-8")
    paths["md"].write_text(env.get_template("report.md.j2").render(**context), encoding="utf-8")
    paths["html"].write_text(env.get_template("report.j2.html").render(**context), encoding="utf-8")
    return paths
