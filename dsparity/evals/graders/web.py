"""Web artifact grader: the page in the answer, rendered in the system Chromium (see
`dsparity.evals.browser`), a deterministic gate plus task checklist items by cheap pixel heuristics;
items no heuristic covers are listed as needing a judge."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from dsparity.evals.browser import PageReport, render
from dsparity.evals.graders.base import Grade, GradeInput, register
from dsparity.evals.graders.text import strip_reasoning

ARTIFACTS_ENV = "DSPARITY_ARTIFACTS"
DEFAULT_ARTIFACTS = "results/artifacts"
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_HTML_TAGS = {"html", "htm", "xhtml", "svg"}
_JS_TAGS = {"javascript", "js", "jsx", "mjs"}
_P5_CDN = "https://cdn.jsdelivr.net/npm/p5@1.11.13/lib/p5.min.js"


def _looks_html(text: str) -> bool:
    return bool(re.search(r"<!doctype html|<html[\s>]|<body[\s>]|<canvas[\s>]|<script[\s>]", text, re.IGNORECASE))


def extract_page(answer: str) -> tuple[str, str]:
    """(html, how). The last HTML block (fenced or bare); CSS and JS blocks given separately are
    stitched in (local `<script src>`/`<link href>` to them removed); a lone p5 sketch gets a page."""
    text = strip_reasoning(answer)
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    html_blocks = [b for t, b in blocks if t in _HTML_TAGS] or [b for t, b in blocks if not t and _looks_html(b)]
    css = [b for t, b in blocks if t == "css"]
    js = [b for t, b in blocks if t in _JS_TAGS]
    how = []
    if html_blocks:
        html = html_blocks[-1]
        how.append("last html block")
    elif _looks_html(text) and not blocks:
        m = re.search(r"(<!doctype html.*?</html>|<html.*?</html>)", text, re.IGNORECASE | re.DOTALL)
        html = m.group(1) if m else text
        how.append("bare html")
    elif js:
        html = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body></body></html>"
        how.append("page shell for js blocks")
    else:
        return "", "no page found"
    if css:
        html = re.sub(r"<link[^>]+href=[\"'](?!https?:|//)[^\"']+\.css[\"'][^>]*>", "", html, flags=re.IGNORECASE)
        style = "<style>\n" + "\n".join(css) + "\n</style>"
        html = _insert(html, "</head>", style, at_start=True)
        how.append(f"{len(css)} css block(s) stitched")
    if js:
        html = re.sub(r"<script[^>]+src=[\"'](?!https?:|//)[^\"']+\.js[\"'][^>]*>\s*</script>", "", html,
                      flags=re.IGNORECASE)
        code = "\n".join(js)
        if re.search(r"function\s+(setup|draw)\s*\(", code) and "p5" not in html.lower():
            html = _insert(html, "</head>", f'<script src="{_P5_CDN}"></script>', at_start=True)
            how.append("p5 added for a bare sketch")
        html = _insert(html, "</body>", "<script>\n" + code + "\n</script>", at_start=False)
        how.append(f"{len(js)} js block(s) stitched")
    return html, ", ".join(how)


def _insert(html: str, before: str, snippet: str, *, at_start: bool) -> str:
    i = html.lower().rfind(before)
    if i >= 0:
        return html[:i] + snippet + "\n" + html[i:]
    return snippet + "\n" + html if at_start else html + "\n" + snippet


# ------------------------------------------------------------------------------------------------
# pixel heuristics on saved screenshots


def _load(path: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def find_blobs(path: str, *, min_area: int = 20, max_area: int = 20_000) -> list[dict[str, float]]:
    """Compact, roughly round blobs that differ from the background (the most common colour):
    a cheap ball detector. Thin outlines (polygons, text strokes) fail the fill-ratio test."""
    import numpy as np
    from scipy import ndimage

    px = _load(path)
    flat = px.reshape(-1, 3).astype(np.int32)
    keys = flat[:, 0] * 65536 + flat[:, 1] * 256 + flat[:, 2]
    values, counts = np.unique(keys, return_counts=True)
    bg = values[counts.argmax()]
    bg_rgb = np.array([bg // 65536, (bg // 256) % 256, bg % 256])
    mask = np.abs(px - bg_rgb).max(axis=2) > 40
    labels, n = ndimage.label(mask)
    blobs = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        area = int((labels[sl] == i).sum())
        if not (min_area <= area <= max_area) or not (0.6 <= w / max(h, 1) <= 1.6):
            continue
        if area / (w * h) < 0.6:  # a filled circle covers ~0.785 of its box
            continue
        cy, cx = ndimage.center_of_mass(labels[sl] == i)
        blobs.append({"x": round(sl[1].start + cx, 1), "y": round(sl[0].start + cy, 1), "area": area})
    return blobs


def _infer_check(item: str) -> tuple[str | None, dict[str, Any]]:
    low = item.lower()
    if m := re.search(r"(\d+)\s+(?:\w+\s+)?(?:balls?|circles?|dots?|particles?)", low):
        return "ball_count", {"expected": int(m.group(1))}
    if re.search(r"no (?:console )?errors?|without errors?|runs? without", low):
        return "no_errors", {}
    if re.search(r"gravity|falls?\b|falling", low):
        return "gravity", {}
    if re.search(r"fps|frame rate|smooth", low):
        return "fps", {}
    if re.search(r"animat|moves?\b|moving|motion", low):
        return "animated", {}
    if re.search(r"\bcanvas\b", low):
        return "canvas", {}
    if re.search(r"peak|spectrum|analy[sz]er|frequency|visuali[sz]", low):
        return "audio_peak", {}
    if re.search(r"loads?\b|opens?\b|renders?\b", low):
        return "loads", {}
    return None, {}


def evaluate_check(check: str, params: dict[str, Any], report: PageReport, settings: dict[str, Any]
                   ) -> tuple[bool | None, Any]:
    """(ok, evidence); ok None = no cheap heuristic (needs a judge)."""
    shots = [s["path"] for s in report.screenshots if s.get("path")]
    if check == "loads":
        return report.loaded and not report.hung, {"loaded": report.loaded, "hung": report.hung}
    if check == "no_errors":
        return not report.errors, report.errors[:5]
    if check == "no_network":
        return not report.blocked_requests, report.blocked_requests[:10]
    if check == "canvas":
        return report.canvas is not None, report.canvas
    if check == "non_blank":
        colours = report.screenshots[-1]["distinct_colours"] if report.screenshots else 0
        return colours >= int(params.get("min_colours", 2)), colours
    if check == "animated":
        return report.animated, [s.get("changed_vs_previous") for s in report.screenshots[1:]]
    if check == "fps":
        min_fps = float(params.get("min", settings.get("min_fps", 20)))
        return report.fps is not None and report.fps >= min_fps, report.fps
    if check == "ball_count":
        if not shots:
            return False, "no screenshot"
        counts = [len(find_blobs(p)) for p in shots]
        expected, tol = int(params["expected"]), int(params.get("tolerance", 0))
        return abs(counts[-1] - expected) <= tol, {"counts": counts, "expected": expected}
    if check == "gravity":
        if len(shots) < 2:
            return False, "fewer than two screenshots"
        first, last = find_blobs(shots[0]), find_blobs(shots[-1])
        if not first or not last:
            return None, "no balls detected"
        y0 = sum(b["y"] for b in first) / len(first)
        y1 = sum(b["y"] for b in last) / len(last)
        return y1 > y0 + 2, {"mean_y_first": round(y0, 1), "mean_y_last": round(y1, 1)}
    if check == "audio_peak":
        tone = settings.get("audio_tone_hz")
        peak = report.audio.get("peakHz")
        if not tone:
            return None, "no audio_tone_hz setting"
        rate = report.audio.get("sampleRate") or 44100
        tol = float(params.get("tolerance_hz", max(2 * rate / 2048, 0.03 * tone)))
        return peak is not None and abs(peak - float(tone)) <= tol, {"peak_hz": peak, "tone_hz": tone}
    return None, "no heuristic"


@register("web")
def web(sample: GradeInput, settings: dict) -> Grade:
    """Single-page web artifact, rendered in the system Chromium.

    doc fields: `checklist` (optional): items as strings (a check is inferred from words like
    "20 balls", "animated", "gravity", "no errors", "canvas", "fps", "spectrum peak") or dicts
    `{"item": text, "check": name, ...params}` with check one of loads, no_errors, no_network,
    canvas, non_blank, animated, fps (`min`), ball_count (`expected`, `tolerance`), gravity,
    audio_peak (`tolerance_hz`). Items no heuristic covers are listed under `needs_judge`.
    settings: `seconds` (3.0), `seed` (0), `viewport` ([800, 600]), `shots` (3), `load_timeout_s`
    (5), `min_fps` (20), `require` (gate checks; default ["loads", "no_errors", "non_blank"]),
    `audio_tone_hz` (feed a synthesised tone to the page), `artifact_dir` (screenshots; default
    env DSPARITY_ARTIFACTS or results/artifacts).
    score = fraction of gate + checklist checks passed (needs-judge items excluded); passed = all.
    Screenshots are written as `<artifact_dir>/web-<answer hash>-<i>.png`; paths in details.
    """
    html, how = extract_page(sample.text)
    base = {"extraction": how, "truncated": sample.finish_reason == "length"}
    if not html:
        return Grade(0.0, False, base | {"error": "no HTML page in the answer"})
    digest = hashlib.sha256(html.encode("utf-8")).hexdigest()[:16]
    artifact_dir = Path(settings.get("artifact_dir") or os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)
    width, height = settings.get("viewport", (800, 600))
    report = render(html, seconds=float(settings.get("seconds", 3.0)), seed=int(settings.get("seed", 0)),
                    width=int(width), height=int(height), shots=int(settings.get("shots", 3)),
                    artifact_dir=artifact_dir, name=f"web-{digest}",
                    load_timeout_s=float(settings.get("load_timeout_s", 5.0)),
                    audio_tone_hz=settings.get("audio_tone_hz"))
    checks = []
    for name in settings.get("require", ["loads", "no_errors", "non_blank"]):
        ok, evidence = evaluate_check(name, {}, report, settings)
        ok = None if ok is None else bool(ok)
        checks.append({"item": name, "check": name, "ok": ok, "evidence": evidence, "gate": True})
    needs_judge = []
    for raw in sample.doc.get("checklist") or []:
        item = raw if isinstance(raw, str) else str(raw.get("item", raw.get("check", "")))
        if isinstance(raw, dict) and raw.get("check"):
            check, params = raw["check"], {k: v for k, v in raw.items() if k not in ("item", "check")}
        else:
            check, params = _infer_check(item)
        ok, evidence = evaluate_check(check, params, report, settings) if check else (None, "no heuristic")
        ok = None if ok is None else bool(ok)
        checks.append({"item": item, "check": check, "ok": ok, "evidence": evidence})
        if ok is None:
            needs_judge.append(item)
    scored = [c for c in checks if c["ok"] is not None]
    n_ok = sum(bool(c["ok"]) for c in scored)
    score = n_ok / len(scored) if scored else 0.0
    page = report.to_dict()
    page["console"] = page["console"][:50]
    return Grade(score, bool(scored) and n_ok == len(scored),
                 base | {"checks": checks, "needs_judge": needs_judge, "page": page, "html_sha": digest,
                         "screenshots": [s["path"] for s in report.screenshots]})
