"""Reports: JSON for machines, Markdown for pull requests and chat, one self-contained HTML file.

All three render the same comparison dict (see `dsparity.evals.comparison.pairing.compare_runs`) through
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

from dsparity.evals.report.charts import cost_svg, fidelity_svg, forest_plot_svg
from dsparity.evals.specs import SERVED_DEFAULT_LABEL
from dsparity.redact import redact

VERDICT_WORDS = {
    "equivalent": "equivalent within the margin",
    "better": "candidate better",
    "worse": "candidate worse",
    "materially_worse": "candidate materially worse (beyond the margin)",
    "inconclusive": "inconclusive (the items cannot decide yet)",
}


def _env() -> Environment:
    env = Environment(loader=PackageLoader("dsparity.evals.report", "templates"),
                      autoescape=select_autoescape(["html", "j2.html", "css"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * v:+.1f}"
    env.filters["pct0"] = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
    env.filters["score"] = score_text
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
    env.filters["nat"] = lambda v, signed=False: "n/a" if v is None else f"{v:{'+' if signed else ''}.4f}"
    env.filters["natci"] = lambda c: "n/a" if not c or c[0] is None else f"[{c[0]:+.4f}, {c[1]:+.4f}]"
    env.filters["power_text"] = power_text
    env.filters["fidelity_chart"] = fidelity_svg
    env.filters["cost_chart"] = _cost_chart
    env.globals["verdict_words"] = VERDICT_WORDS
    return env


def power_text(row: dict[str, Any]) -> str:
    """What an inconclusive row can resolve at its size (shown next to its verdict)."""
    power = row.get("power") or {}
    nats = row.get("unit", "points") != "points"
    fmt = (lambda v: f"{v:.4f} nats") if nats else (lambda v: f"{100 * v:.1f} pts")  # noqa: E731
    parts = []
    if power.get("resolution") is not None:
        parts.append(f"resolves ±{fmt(power['resolution'])} at n={row.get('n')}")
    if power.get("mde") is not None:
        parts.append(f"finds a loss of {fmt(power['mde'])} with 80% power")
    if power.get("items_for_equivalence") and not power.get("can_show_equivalence"):
        parts.append(f"≥{power['items_for_equivalence']} agreeing items show ±{fmt(row['margin'])}")
    elif row.get("more_items_needed"):
        parts.append(f"~{row['more_items_needed']} more items")
    return f" ({'; '.join(parts)})" if parts else ""


def _cost_chart(fidelity_result: dict[str, Any], comparison: dict[str, Any]) -> str:
    identity = comparison["candidate"].get("identity") or {}
    shape, options = identity.get("shape"), identity.get("options") or {}
    curve = fidelity_result.get("curve") or []
    mode = options.get("attention", "dense")
    if not shape or mode not in ("dsa", "window") or not curve:
        return ""  # block and oracle selections have costs of their own, not modelled here
    return cost_svg(shape, int(options.get("topk", 256)), int(max(p["position"] for p in curve)),
                    indexer=mode == "dsa")


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


def score_text(v: float | None, unit: str = "points", *, signed: bool = False) -> str:
    """A task row's score as the report shows it: percent for scores, nats for fidelity rows."""
    if v is None:
        return "n/a"
    if unit != "points":
        return f"{v:+.3f}" if signed else f"{v:.3f}"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def reproduce_command(comparison: dict[str, Any]) -> str:
    """The `dsparity compare` command that makes this comparison again: every setting the runs
    recorded, as flags (model specs with any secret masked). Where to write (--db, --out) and the
    CI gate (--fail-on) are the reader's own choice."""
    c, b = comparison["candidate"], comparison["baseline"]
    settings = c["settings"]
    command = settings.get("command") or {}
    parts = ["dsparity", "compare", "--candidate", redact(c["model_spec"])]
    if b["label"] != SERVED_DEFAULT_LABEL:  # else the command serves the baseline itself
        parts += ["--baseline", redact(b["model_spec"])]
    if command:
        if command.get("suite") or not command.get("tasks"):
            parts += ["--suite", command.get("suite") or settings["suite"]]
        if command.get("tasks"):
            parts += ["--tasks", command["tasks"]]
        for folder in command.get("include") or []:
            parts += ["--include", folder]
    else:  # a run recorded before its command was: the suite names what ran
        parts += ["--suite", settings["suite"]]
    flags = [("--size", command.get("size")), ("--limit", settings.get("limit")),
             ("--repeats", settings.get("repeats") if settings.get("repeats", 1) != 1 else None),
             ("--seed", settings.get("seed") or None), ("--temperature", settings.get("temperature")),
             ("--top-p", settings.get("top_p")),
             ("--judge", redact(settings["judge"]) if settings.get("judge") else None),
             ("--margin", None if comparison.get("margins_from_tasks") else comparison["margin"]),
             ("--budget", command.get("budget")), ("--prices", command.get("prices"))]
    for flag, value in flags:
        if value is not None:
            parts += [flag, str(value)]
    if settings.get("cache") is False:  # asked the models again; --fresh (a new run or the
        parts.append("--no-cache")       # stored one) is the reader's choice, like --db
    return shlex.join(parts)


def render(comparison: dict[str, Any], out_dir: Path, *, name: str) -> dict[str, Path]:
    """Write name.json, name.md and name.html under out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _env()
    scores = [t for t in comparison["tasks"] if t.get("unit", "points") == "points"]
    context = {"c": comparison, "reproduce": reproduce_command(comparison),
               "forest_svg": forest_plot_svg(scores, comparison["margin"])}
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md",
             "html": out_dir / f"{name}.html"}
    paths["json"].write_text(json.dumps(comparison, indent=2, default=str), encoding="utf-8")
    paths["md"].write_text(env.get_template("report.md.j2").render(**context), encoding="utf-8")
    paths["html"].write_text(env.get_template("report.j2.html").render(**context), encoding="utf-8")
    return paths
