"""Web artifact grader: the page in the answer, rendered in the system Chromium (see
`dsparity.evals.graders.browser`), a deterministic gate plus task checklist items by cheap pixel heuristics;
items no heuristic covers are listed as needing a judge."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from dsparity.evals.graders.base import Grade, GradeInput, GradeUnavailable, register
from dsparity.evals.graders.browser import PageReport, render

ARTIFACTS_ENV = "DSPARITY_ARTIFACTS"
DEFAULT_ARTIFACTS = "results/artifacts"
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_HTML_TAGS = {"html", "htm", "xhtml", "svg"}
_JS_TAGS = {"javascript", "js", "jsx", "mjs"}
_P5_CDN = "https://cdn.jsdelivr.net/npm/p5@1.11.13/lib/p5.min.js"


def _looks_html(text: str) -> bool:
    return bool(
        re.search(r"<!doctype html|<html[\s>]|<body[\s>]|<canvas[\s>]|<script[\s>]", text, re.IGNORECASE)
    )


def extract_page(answer: str) -> tuple[str, str]:
    """(html, how). The last HTML block (fenced or bare); CSS and JS blocks given separately are
    stitched in (local `<script src>`/`<link href>` to them removed); a lone p5 sketch gets a page.
    `answer` is the final answer (`GradeInput.text`: reasoning already cut away)."""
    text = answer
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    html_blocks = [b for t, b in blocks if t in _HTML_TAGS] or [
        b for t, b in blocks if not t and _looks_html(b)
    ]
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
        html = '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body></body></html>'
        how.append("page shell for js blocks")
    else:
        return "", "no page found"
    if css:
        html = re.sub(
            r"<link[^>]+href=[\"'](?!https?:|//)[^\"']+\.css[\"'][^>]*>", "", html, flags=re.IGNORECASE
        )
        style = "<style>\n" + "\n".join(css) + "\n</style>"
        html = _insert(html, "</head>", style, at_start=True)
        how.append(f"{len(css)} css block(s) stitched")
    if js:
        html = re.sub(
            r"<script[^>]+src=[\"'](?!https?:|//)[^\"']+\.js[\"'][^>]*>\s*</script>",
            "",
            html,
            flags=re.IGNORECASE,
        )
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


# (pattern, check, params from the match, strength). "full": the check decides the item both ways;
# "sufficient": a pass decides it, a failure leaves it to the judge (other ways to satisfy it exist)
_RULES: list[tuple[str, str, Any, str]] = [
    (
        r"(\d+)\s+(?:\w+\s+)?(?:balls?|circles?|dots?)\b",
        "ball_count",
        lambda m: {"expected": int(m.group(1))},
        "full",
    ),
    (
        r"without (?:any )?(?:uncaught |console |js |javascript )?errors?|no (?:uncaught |console )?errors?",
        "no_errors",
        None,
        "full",
    ),
    (r"gravity|\bfalls?\b|falling", "gravity", None, "full"),
    (r"\bfps\b|frame rate|smooth", "fps", None, "full"),
    (r"animat|\bmov(?:es|ing)\b|\bmotion\b", "animated", None, "full"),
    (r"\bcanvas\b|webgl", "canvas", None, "full"),
    (r"\bp5(?:\.?js)?\b", "library", lambda m: {"name": "p5"}, "full"),
    (r"three\.?js", "library", lambda m: {"name": "three"}, "full"),
    (r"tone\.js", "library", lambda m: {"name": "tone"}, "full"),
    (r"self-contained|single (?:html )?file", "no_network", None, "full"),
    (r"fills? the (?:whole|entire) (?:window|screen)|full-?screen", "fills_window", None, "full"),
    (r"page (?:loads|opens|renders)", "loads", None, "full"),
    (r"audio file|file input", "file_input", None, "sufficient"),
    (r"frequency data|analy[sz]er", "audio_peak", None, "sufficient"),
]
# words that say an item asks for more than any pixel heuristic sees: a passing check cannot
# decide such an item (a failing necessary one still can)
_SEMANTIC = re.compile(
    r"rotat|spin|inside|escape|bounce|elastic|friction|damp|collid|overlap|react|beat|pause|stop|calm|depth|"
    r"\b3d\b|perspective|parallax|glow|twinkl|drift|grid|lattice|galax|futuristic|\blook|style|beautiful|"
    r"layout|readab|control|button|mood|energy|transparent|colou?r|number|label|text|sound|music|volume",
    re.IGNORECASE,
)


def infer_checks(item: str) -> list[tuple[str, dict[str, Any], str]]:
    """The cheap checks a checklist item's wording asks for: [(check, params, strength)]."""
    found = []
    for pattern, check, params, strength in _RULES:
        if m := re.search(pattern, item, re.IGNORECASE):
            found.append((check, params(m) if params else {}, strength))
    return found


def decide_item(item: str, results: list[tuple[str, bool | None, str]]) -> bool | None:
    """Combine the item's check results (check, ok, strength): a failed full check fails the item;
    passes decide it only when the wording asks for nothing the heuristics cannot see."""
    if any(ok is False and strength == "full" for _, ok, strength in results):
        return False
    if _SEMANTIC.search(item) or not results:
        return None
    full = [ok for _, ok, strength in results if strength == "full"]
    if full and all(ok is True for ok in full):
        return True
    if any(ok is True and strength == "sufficient" for _, ok, strength in results) and not full:
        return True
    return None


def _checklist(value: Any) -> list[Any]:
    """A checklist as a list, also when a data file stored it as a JSON or Python list literal."""
    if isinstance(value, str):
        import ast
        import json

        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
                return list(parsed) if isinstance(parsed, list | tuple) else [value]
            except (ValueError, SyntaxError):
                continue
        return [value]
    return list(value or [])


def evaluate_check(
    check: str, params: dict[str, Any], report: PageReport, settings: dict[str, Any]
) -> tuple[bool | None, Any]:
    """(ok, evidence); ok None = no cheap heuristic (needs a judge)."""
    shots = [s["path"] for s in report.screenshots if s.get("path")]
    if check == "loads":
        return report.loaded and not report.hung, {"loaded": report.loaded, "hung": report.hung}
    if check == "no_errors":
        return not report.errors, report.errors[:5]
    if check == "no_network":
        missing = {m["url"] for m in report.missing_libraries}
        blocked = [u for u in report.blocked_requests if u not in missing]
        return not report.blocked_requests, blocked[:10] + [m["hint"] for m in report.missing_libraries[:3]]
    if check == "canvas":
        return report.canvas is not None, report.canvas
    if check == "library":
        # served and compiled as a script: a library only fetched (or a fake global) does not count
        hits = [u for u in report.served_libraries if params["name"] in u.lower() and u in report.scripts]
        missing = [
            m["hint"] for m in report.missing_libraries if m["library"].startswith(params["name"] + "@")
        ]
        return bool(hits), hits[:3] or missing[:1]
    if check == "fills_window":
        c = report.canvas or {}
        w, h = settings.get("viewport", (800, 600))
        return bool(c) and c["shown_w"] >= 0.95 * int(w) and c["shown_h"] >= 0.95 * int(h), c
    if check == "file_input":
        fed = report.audio.get("fed", [])
        return ("file input" in fed) or None, fed
    if check == "non_blank":
        colours = report.screenshots[-1]["distinct_colours"] if report.screenshots else 0
        return colours >= int(params.get("min_colours", 2)), colours
    if check == "animated":
        return report.animated, [s.get("changed_vs_previous") for s in report.screenshots[1:]]
    if check == "fps":
        # a page that does not visibly change over the whole window has no frame rate to speak of
        min_fps = float(params.get("min", settings.get("min_fps", 20)))
        ok = report.animated and report.fps is not None and report.fps >= min_fps
        return ok, {"fps": report.fps, "animated": report.animated, **report.frames}
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
        return _audio_peak(report, params)
    return None, "no heuristic"


def _audio_peak(report: PageReport, params: dict[str, Any]) -> tuple[bool | None, Any]:
    """The page's own analysers, read by the grader with the genuine built-ins at each screenshot,
    receive the tone that was fed (its frequency drawn at random near `audio_tone_hz`) at most
    moments: the dominant frequency of what the loudest analyser receives is within 1 % of it (the
    estimate is within 0.3 % for the fixture player at fftSize 256 and 2048)."""
    tone = report.audio.get("tone_hz")
    if not tone:
        return None, "no audio_tone_hz setting"
    peaks = report.audio.get("peaks") or []
    tol = float(params.get("tolerance_hz", 0.01 * tone))
    # an analyser window under 2.5 periods of the tone cannot tell one frequency from another
    short = [p for p in peaks if p["window_s"] * tone < 2.5]
    hits = sum(abs(p["hz"] - tone) <= tol for p in peaks if p not in short)
    readings = report.audio.get("readings", 0)
    evidence = {"tone_hz": tone, "peaks_hz": [p["hz"] for p in peaks], "matching": hits, "readings": readings}
    if short and not hits:
        return None, evidence | {"problem": "the page's analyser window is too short to tell frequencies"}
    return bool(readings > 0 and 2 * hits > readings), evidence


# report fields the page writes itself (messages, dialog texts, URLs it chose)
_PAGE_WRITTEN = ("errors", "dialogs", "blocked_requests", "scripts", "served_libraries", "missing_libraries")


def _measured(value: Any) -> Any:
    """Numbers, booleans and the structure around them; no strings (where a page's words could
    ride into the judge's trusted evidence: an error message, a URL, a dialog)."""
    if isinstance(value, dict):
        return {k: _measured(v) for k, v in value.items() if not isinstance(v, str)}
    if isinstance(value, list | tuple):
        return [_measured(v) for v in value if not isinstance(v, str)]
    return None if isinstance(value, str) else value


def _judge_evidence(report: PageReport, checks: list[dict[str, Any]]) -> tuple[dict, dict]:
    """(measured evidence the judge may trust, text the page wrote: fenced as data by the judge)."""
    page = report.to_dict()
    written = {k: page[k] for k in _PAGE_WRITTEN}
    written["check_evidence"] = [
        {"item": c["item"], "evidence": c["evidence"]} for c in checks if c["ok"] is not None
    ]
    measured = _measured({k: v for k, v in page.items() if k not in ("console", *_PAGE_WRITTEN)})
    measured["checks"] = [
        {"item": c["item"], "ok": c["ok"], "evidence": _measured(c["evidence"])}
        for c in checks
        if c["ok"] is not None
    ]
    return measured, written


def _hints(report: PageReport) -> list[str]:
    """Lines that tell the user why a page failed for reasons of this machine, not of the answer."""
    seen, hints = set(), []
    for missing in report.missing_libraries:
        if missing["library"] not in seen:
            seen.add(missing["library"])
            hints.append(f"the page asked for {missing['url']}: {missing['hint']}")
    return hints


@register("web")
def web(sample: GradeInput, settings: dict) -> Grade:
    """Single-page web artifact, rendered in the system Chromium.

    doc fields: `checklist` (optional; `question`/`prompt` is shown to a judge): items as strings
    (checks inferred from the wording, see `_RULES`: "20 balls", "without errors", "gravity",
    "smooth", "animated", "canvas", "p5.js", "self-contained", "fills the whole window", "audio
    file", "frequency data"; a failed check fails the item, passes decide it only when the item
    asks for nothing a heuristic cannot see, see `_SEMANTIC`) or dicts `{"item": text, "check":
    name, ...params}` with check one of loads, no_errors, no_network, canvas, non_blank, animated,
    fps (`min`), ball_count (`expected`, `tolerance`), gravity, library (`name`), fills_window,
    file_input, audio_peak (`tolerance_hz`). Items no heuristic decides go to the judge when one is
    configured (settings `judge` or env DSPARITY_JUDGE: code + measured evidence, yes/no per item,
    prompt and raw output under `details.judge`), else they are listed under `needs_judge` and not
    scored.
    settings: `seconds` (3.0), `seed` (0), `viewport` ([800, 600]), `shots` (3), `load_timeout_s`
    (5), `min_fps` (20), `require` (gate checks; default ["loads", "no_errors", "non_blank"]),
    `audio_tone_hz` (feed the page a synthesised tone in the octave above it, drawn at random),
    `artifact_dir` (screenshots; default env DSPARITY_ARTIFACTS or results/artifacts).
    Every measurement is taken from outside the page (see `browser`): `animated` and `fps` from
    pixels (screenshots, screencast frames), `canvas` from an isolated world, `audio_peak` from the
    page's analysers read with genuine built-ins; nothing a page script writes is believed.
    score = fraction of gate + checklist checks passed (needs-judge items excluded); passed = all.
    Screenshots are written as `<artifact_dir>/web-<answer hash>-<i>.png`; paths in details.
    `details.hints`: what this machine lacked (e.g. a CDN library that is not vendored, and the
    command that fetches it).
    """
    html, how = extract_page(sample.text)
    base = {"extraction": how, "truncated": sample.finish_reason == "length"}
    if not html:
        return Grade(0.0, False, base | {"error": "no HTML page in the answer"})
    digest = hashlib.sha256(html.encode("utf-8")).hexdigest()[:16]
    artifact_dir = Path(settings.get("artifact_dir") or os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)
    width, height = settings.get("viewport", (800, 600))
    report = render(
        html,
        seconds=float(settings.get("seconds", 3.0)),
        seed=int(settings.get("seed", 0)),
        width=int(width),
        height=int(height),
        shots=int(settings.get("shots", 3)),
        artifact_dir=artifact_dir,
        name=f"web-{digest}",
        load_timeout_s=float(settings.get("load_timeout_s", 5.0)),
        audio_tone_hz=settings.get("audio_tone_hz"),
    )
    checks = []
    for name in settings.get("require", ["loads", "no_errors", "non_blank"]):
        ok, evidence = evaluate_check(name, {}, report, settings)
        ok = None if ok is None else bool(ok)
        checks.append({"item": name, "check": name, "ok": ok, "evidence": evidence, "gate": True})
    needs_judge = []
    for raw in _checklist(sample.doc.get("checklist")):
        item = raw if isinstance(raw, str) else str(raw.get("item", raw.get("check", "")))
        if isinstance(raw, dict) and raw.get("check"):
            params = {k: v for k, v in raw.items() if k not in ("item", "check")}
            ok, evidence = evaluate_check(raw["check"], params, report, settings)
            ok = None if ok is None else bool(ok)
            names: Any = raw["check"]
        else:
            results, evidence = [], {}
            for check, params, strength in infer_checks(item):
                one, ev = evaluate_check(check, params, report, settings)
                results.append((check, None if one is None else bool(one), strength))
                evidence[check] = ev
            ok = decide_item(item, results)
            names = [r[0] for r in results] or None
            evidence = evidence or "no heuristic"
        checks.append({"item": item, "check": names, "ok": ok, "evidence": evidence})
        if ok is None:
            needs_judge.append(item)
    judged = None
    judge = settings.get("judge") or os.environ.get("DSPARITY_JUDGE")
    if needs_judge and judge:
        from dsparity.evals.graders.judge import judge_checklist

        evidence, page_text = _judge_evidence(report, checks)
        question = next((sample.doc[k] for k in ("question", "prompt", "instruction") if k in sample.doc), "")
        judged = judge_checklist(
            str(question),
            html[:60_000],
            evidence,
            needs_judge,
            judge=judge,
            retries=int(settings.get("retries", 2)),
            page_text=page_text,
        )
        if judged["error"]:  # the judge was asked and gave nothing: no grade now, a retry next run
            raise GradeUnavailable(f"checklist judge gave no verdict: {judged['error']}", {"judge": judged})
        by_item = dict(zip(needs_judge, judged["verdicts"], strict=True))
        for c in checks:
            if c["ok"] is None and c["item"] in by_item and by_item[c["item"]] is not None:
                c["ok"], c["by"] = bool(by_item[c["item"]]), "judge"
        needs_judge = [item for item in needs_judge if by_item.get(item) is None]
    scored = [c for c in checks if c["ok"] is not None]
    n_ok = sum(bool(c["ok"]) for c in scored)
    score = n_ok / len(scored) if scored else 0.0
    page = report.to_dict()
    page["console"] = page["console"][:50]
    return Grade(
        score,
        bool(scored) and n_ok == len(scored),
        base
        | {
            "checks": checks,
            "needs_judge": needs_judge,
            "judge": judged,
            "page": page,
            "html_sha": digest,
            "screenshots": [s["path"] for s in report.screenshots],
            "hints": _hints(report),
        },
    )
