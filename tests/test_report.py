"""The report: long-context maps, usage and cost, a stable Markdown snapshot, and the HTML in a
real browser (no console errors, no network, hostile model output inert)."""

import copy
import json
from pathlib import Path

import pytest

from dsparity.evals.comparison.pairing import depth_length_maps
from dsparity.evals.report import render

FIXTURE = Path(__file__).parent / "fixtures" / "comparison.json"
HOSTILE = ('<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
           '<a href="javascript:window.__pwned=3" id="evil">click</a><svg onload="window.__pwned=4"></svg>')


def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def test_depth_length_maps_average_both_models_per_cell():
    from dsparity.evals.comparison.pairing import PairKey

    keys, cand, base = [], {}, {}
    for i, (length, depth, a, b) in enumerate([(1024, 0.1, 1, 1), (1024, 0.12, 0, 1), (4096, 0.9, 1, 0)]):
        k = PairKey("longctx_niah", i, "h", "p", 0)
        keys.append(k)
        cand[k] = {"doc": {"target_tokens": length, "depth": depth}, "score": a}
        base[k] = {"doc": {"target_tokens": length, "depth": depth}, "score": b}
    (m,) = depth_length_maps(keys, cand, base)
    assert m["lengths"] == [1024, 4096] and m["depths"] == [0.1, 0.9]
    cell = next(c for c in m["cells"] if c["length"] == 1024)
    assert (cell["n"], cell["candidate"], cell["baseline"]) == (2, 0.5, 1.0)


def test_markdown_snapshot(tmp_path):
    paths = render(fixture(), tmp_path, name="r")
    expected = (Path(__file__).parent / "fixtures" / "comparison.md").read_text()
    assert paths["md"].read_text() == expected


def _hostile_comparison() -> dict:
    c = copy.deepcopy(fixture())
    for d in c["disagreements"]:
        d["candidate"]["text"] = HOSTILE
        d["prompt"] = HOSTILE
    c["tasks"][0]["task"] = HOSTILE
    c["candidate"]["label"] = HOSTILE
    return c


@pytest.mark.browser
def test_html_report_in_chromium_is_offline_quiet_and_inert(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    html = render(_hostile_comparison(), tmp_path, name="r")["html"]
    errors, requests = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith("file:") else None)
        page.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
        page.goto(html.as_uri())
        page.wait_for_timeout(300)
        for summary in page.locator("summary").all():
            summary.click()
        if page.locator("#evil").count():
            page.locator("#evil").first.click()
        page.wait_for_timeout(200)
        pwned = page.evaluate("window.__pwned === undefined ? null : window.__pwned")
        shown = page.inner_text("body")
        browser.close()
    assert errors == [] and requests == [] and pwned is None
    assert "<script>window.__pwned = 1</script>" in shown  # shown as text, not run


def test_web_screenshots_are_embedded_not_linked(tmp_path):
    import base64

    png = tmp_path / "shot.png"
    png.write_bytes(base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="))
    c = fixture()
    c["disagreements"][0]["candidate"]["details"] = {"screenshots": [str(png)], "reason": "balls escape"}
    html = render(c, tmp_path / "out", name="r")["html"].read_text()
    assert 'src="data:image/png;base64,iVBOR' in html and str(png) not in html
    assert "judge: balls escape" in html
