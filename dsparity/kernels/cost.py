"""Cost per token vs token position, dense vs DSA: the V3.2-Exp report's Figure 3 in miniature.

One pass over a long input per variant (dense; DSA with the same weights), in chunks with a KV
cache: the time of the chunk that starts at position p, divided by its length, is the prefill
cost per token at p; at regular positions a few single-token steps on that cache give the decode
cost per token at p. Times become money through one stated price: ``price_per_hour`` for the
machine the measurement ran on (default $2/hour, the figure DeepSeek uses per H800 GPU-hour,
applied to this machine as a stand-in; the ratios do not depend on it).

The DSA variant is `convert_to_dsa` with untrained indexers unless warmed-up ones are given:
cost does not depend on the indexer's weights, only on its shapes and on k.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path

import torch


@dataclass
class CostCurve:
    model: str
    machine: str
    threads: int
    topk: int
    chunk: int
    price_per_hour: float
    kernels: str
    # rows: {"variant", "phase", "position", "s_per_token", "usd_per_mtok"}
    rows: list[dict] = field(default_factory=list)

    def series(self, variant: str, phase: str) -> list[tuple[int, float]]:
        return [(r["position"], r["usd_per_mtok"]) for r in self.rows
                if r["variant"] == variant and r["phase"] == phase]

    def crossing(self, phase: str) -> int | None:
        """First position from which DSA stays cheaper than dense (None if it never does)."""
        dense = dict(self.series("dense", phase))
        dsa = dict(self.series("dsa", phase))
        pos = sorted(set(dense) & set(dsa))
        for i, p in enumerate(pos):
            if all(dsa[x] < dense[x] for x in pos[i:]):
                return p
        return None


def usd_per_mtok(seconds_per_token: float, price_per_hour: float) -> float:
    return seconds_per_token * 1e6 * price_per_hour / 3600.0


def _walk(model, ids: torch.Tensor, chunk: int, decode_every: int, decode_steps: int):
    """Yields (phase, position, seconds per token) over one pass of `ids` [1, L] with a KV cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    pos, length, next_decode = 0, ids.shape[1], decode_every

    def step(x):
        # Grad mode is switched per call, never across a `yield`: a generator suspended inside a
        # no_grad block would leave the caller's grad mode changed.
        with torch.no_grad():
            model(x, cache=cache, use_cache=True, logits_to_keep=1)

    while pos + chunk <= length:
        t0 = time.perf_counter()
        step(ids[:, pos:pos + chunk])
        yield ("prefill", pos, (time.perf_counter() - t0) / chunk)
        pos += chunk
        if pos >= next_decode and pos + decode_steps <= length:
            next_decode += decode_every
            steps = []
            for _ in range(decode_steps):
                t0 = time.perf_counter()
                step(ids[:, pos:pos + 1])
                steps.append(time.perf_counter() - t0)
                pos += 1
            yield ("decode", pos - decode_steps, statistics.median(steps))


def measure(model, *, name: str, length: int = 8192, chunk: int = 512, topk: int = 256,
            decode_every: int = 1024, decode_steps: int = 4, price_per_hour: float = 2.0,
            dsa_model=None, seed: int = 0, progress=None) -> CostCurve:
    """Measure dense `model` against `dsa_model` (default: a copy of `model` converted with
    untrained indexers). Input: random token ids (cost ignores content). The two variants advance
    in lockstep, chunk by chunk, so a change in machine load hits both alike."""
    from dsparity.kernels import dispatch, native
    from dsparity.model import DSAConfig, convert_to_dsa, set_dsa

    if dsa_model is None:
        dsa_model = convert_to_dsa(copy.deepcopy(model), DSAConfig(index_topk=topk), seed=seed)
    else:
        set_dsa(dsa_model, topk=topk, enabled=True)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, length), generator=g)
    curve = CostCurve(model=name, machine=machine_description(), threads=torch.get_num_threads(), topk=topk,
                      chunk=chunk, price_per_hour=price_per_hour,
                      kernels=f"{dispatch.config.mode}; CPU: {native.describe()}")
    if progress:
        progress(f"dense and DSA (k={topk}): {length} tokens in chunks of {chunk}, in lockstep")
    walks = [_walk(m, ids, chunk, decode_every, decode_steps) for m in (model, dsa_model)]
    for steps in zip(*walks, strict=True):
        for variant, (phase, pos, sec) in zip(("dense", "dsa"), steps, strict=True):
            curve.rows.append(dict(variant=variant, phase=phase, position=pos, s_per_token=sec,
                                   usd_per_mtok=usd_per_mtok(sec, price_per_hour)))
    return curve


def machine_description() -> str:
    """CPU model (or GPU name) and core count, for benchmark and cost-curve headers."""
    import os

    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    if torch.cuda.is_available():
        model = torch.cuda.get_device_name()
    return f"{model}, {os.cpu_count()} cores"


def table(curve: CostCurve) -> str:
    """Markdown table: position x (prefill, decode) x (dense, DSA) in $ per million tokens."""
    lines = ["| position | prefill dense | prefill DSA | DSA/dense | decode dense | decode DSA | DSA/dense |",
             "|---|---|---|---|---|---|---|"]
    pre_d, pre_s = dict(curve.series("dense", "prefill")), dict(curve.series("dsa", "prefill"))
    dec_d, dec_s = dict(curve.series("dense", "decode")), dict(curve.series("dsa", "decode"))
    for p in sorted(set(pre_d) | set(dec_d)):
        def cell(d, p=p):
            return f"{d[p]:.3f}" if p in d else ""

        def ratio(a, b, p=p):
            return f"{b[p] / a[p]:.2f}" if p in a and p in b and a[p] > 0 else ""

        lines.append(f"| {p} | {cell(pre_d)} | {cell(pre_s)} | {ratio(pre_d, pre_s)} | "
                     f"{cell(dec_d)} | {cell(dec_s)} | {ratio(dec_d, dec_s)} |")
    return "\n".join(lines)


def svg(curve: CostCurve) -> str:
    """Two panels (prefill, decode): $/M tokens vs position, dense and DSA. Self-contained SVG."""
    w, h, pad = 440, 280, 52
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 30}" '
             f'viewBox="0 0 {2 * w} {h + 30}" font-family="sans-serif" font-size="11">']
    colors = {"dense": "#d62728", "dsa": "#1f77b4"}
    for i, phase in enumerate(("prefill", "decode")):
        x0 = i * w
        series = {v: curve.series(v, phase) for v in ("dense", "dsa")}
        pts = [p for s in series.values() for p in s]
        if not pts:
            continue
        xmax = max(p for p, _ in pts) or 1
        ymax = max(c for _, c in pts) * 1.1 or 1

        def sx(x, x0=x0, xmax=xmax):
            return x0 + pad + (w - 2 * pad) * x / xmax

        def sy(y, ymax=ymax):
            return h - pad + 20 - (h - 2 * pad) * y / ymax

        parts.append(f'<text x="{x0 + w / 2}" y="16" text-anchor="middle" font-weight="bold">'
                     f'{escape(phase)}: $ per million tokens vs token position</text>')
        parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="#333"/>')
        parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="#333"/>')
        for k in range(5):
            yv = ymax * k / 4
            parts.append(f'<text x="{sx(0) - 4}" y="{sy(yv) + 4}" text-anchor="end">{yv:.3g}</text>')
            xv = xmax * k / 4
            parts.append(f'<text x="{sx(xv)}" y="{sy(0) + 14}" text-anchor="middle">{xv / 1024:.3g}K'
                         f'</text>')
        for v, s in series.items():
            if not s:
                continue
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
            parts.append(f'<polyline fill="none" stroke="{colors[v]}" stroke-width="2" points="{path}"/>')
        for j, v in enumerate(("dense", "dsa")):
            ly = 30 + 14 * j
            parts.append(f'<line x1="{x0 + pad + 8}" y1="{ly}" x2="{x0 + pad + 28}" y2="{ly}" '
                         f'stroke="{colors[v]}" stroke-width="2"/>')
            label = "dense" if v == "dense" else f"DSA (k={curve.topk})"
            parts.append(f'<text x="{x0 + pad + 32}" y="{ly + 4}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def summary(curve: CostCurve) -> str:
    pre, dec = curve.crossing("prefill"), curve.crossing("decode")

    def at_end(phase):
        d, s = curve.series("dense", phase), curve.series("dsa", phase)
        if not d or not s:
            return ""
        return f"at position {d[-1][0]} DSA costs {s[-1][1] / d[-1][1]:.2f}x dense"

    return (f"DSA cheaper than dense from position {pre if pre is not None else 'never (in range)'} "
            f"in prefill ({at_end('prefill')}) and from {dec if dec is not None else 'never'} in "
            f"decode ({at_end('decode')}).")


def write(curve: CostCurve, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    price = (f"Price assumption: ${curve.price_per_hour:g} per hour of this machine ({curve.machine}, "
             f"{curve.threads} torch thread(s)): DeepSeek's $2 per H800 GPU-hour, applied to the "
             f"machine that ran the measurement. Ratios do not depend on the price.")
    head = (f"Cost per token vs position: {curve.model}, dense vs DSA (k = {curve.topk}), "
            f"chunked prefill ({curve.chunk} tokens) with a KV cache; decode = median of single-token "
            f"steps at that position; kernels: {curve.kernels}.")
    md = "\n\n".join([f"# Cost curve: {curve.model}", head, price, summary(curve), table(curve),
                      svg(curve)]) + "\n"
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>Cost curve</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
            "text-align:right}</style></head><body>"
            f"<h1>Cost curve: {escape(curve.model)}</h1><p>{escape(head)}</p><p>{escape(price)}</p>"
            f"<p><b>{escape(summary(curve))}</b></p>{svg(curve)}{_html_table(curve)}</body></html>")
    paths = {"markdown": out_dir / "cost_curve.md", "html": out_dir / "cost_curve.html",
             "json": out_dir / "cost_curve.json"}
    paths["markdown"].write_text(md, encoding="utf-8")
    paths["html"].write_text(html, encoding="utf-8")
    paths["json"].write_text(json.dumps(asdict(curve), indent=1), encoding="utf-8")
    return paths


def _html_table(curve: CostCurve) -> str:
    rows = table(curve).splitlines()
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    body = [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]
    th = "".join(f"<th>{escape(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{th}</tr>{trs}</table>"
