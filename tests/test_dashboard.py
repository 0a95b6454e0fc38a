"""The dashboard over a real store: pages in Chromium (quiet, offline), the disagreement filter,
a trend chart with a planted drift, and hostile URL parameters and model output."""

from __future__ import annotations

import asyncio
import http.client
import re
import time

import httpx
import pytest
from loopback import ServerThread, scripted_app
from task_folders import make_suite

from dsparity.evals.comparison.pairing import compare_runs
from dsparity.evals.dashboard import create_app, pair_samples, trend_svg
from dsparity.evals.jobs import JobSpec, run_job
from dsparity.evals.runner import RunSettings, execute_run
from dsparity.evals.specs import parse_spec
from dsparity.evals.storage.store import Store
from dsparity.evals.tasks import load_tasks

N_ITEMS = 12
HOSTILE = '41 <script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _item(prompt: str) -> int:
    return int(prompt.split()[1].rstrip(":"))


def right(prompt: str) -> str:
    return "42"


def wrong_every_third(prompt: str) -> str:
    i = _item(prompt)
    if i == 0:
        return HOSTILE
    return "41" if i % 3 == 0 else "42"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A store with one comparison (candidate wrong on items 0, 3, 6, 9) and a job with three
    runs, the third one drifting (its candidate wrong on half the items)."""
    tmp = tmp_path_factory.mktemp("dash")
    folder = make_suite(tmp / "tasks" / "bulk", N_ITEMS)
    tasks = load_tasks(names=["bulk"], include=[folder])
    store = Store(f"sqlite:///{tmp / 'r.db'}")

    def one_run(answer, label):
        async def go():
            with ServerThread(scripted_app(answer)) as server:
                spec = parse_spec(f"openai:scripted@{server.base_url}?label={label}")
                return await execute_run(spec, tasks, RunSettings(suite="bulk"), store, show_progress=False)

        return asyncio.run(go()).run_id

    cand, base = one_run(wrong_every_third, "cand"), one_run(right, "base")
    comparison = compare_runs(store, cand, base, margin=0.05)
    cid = store.put_comparison(cand, base, 0.05, comparison["alpha"], comparison)

    behaviour = {"answer": right}
    with ServerThread(scripted_app(lambda p: behaviour["answer"](p))) as cand_server, \
            ServerThread(scripted_app(right)) as base_server:
        job = JobSpec(name="nightly", candidate=f"openai:scripted@{cand_server.base_url}?label=api",
                      baseline=f"openai:scripted@{base_server.base_url}?label=ref", suites=None,
                      tasks=["bulk"], include=[folder], schedule="0 3 * * *")
        outcomes = []
        for answer in (right, right, lambda p: "41" if _item(p) % 2 else "42"):
            behaviour["answer"] = answer
            outcomes.append(run_job(store, job, log=lambda *_: None, show_progress=False))
            time.sleep(0.01)
    assert [o.status for o in outcomes] == ["complete"] * 3
    assert [bool(o.drift) for o in outcomes] == [False, False, True]
    return {"store": store, "cid": cid, "comparison": comparison, "drift_run": outcomes[2].job_run,
            "disagreeing": {f"bulk#{i}#0" for i in (0, 3, 6, 9)}}


@pytest.fixture(scope="module")
def dashboard(seeded):
    with ServerThread(create_app(seeded["store"])) as server:
        yield f"http://127.0.0.1:{server.port}"


def test_pairing_matches_the_comparison(seeded):
    c = seeded["comparison"]
    rows = pair_samples(seeded["store"], c["candidate"]["id"], c["baseline"]["id"])
    assert len(rows) == N_ITEMS
    assert {f"{r['task']}#{r['doc_id']}#{r['repeat']}" for r in rows if r["disagreement"]} \
        == {f"{d['task']}#{d['doc_id']}#{d['repeat']}" for d in c["disagreements"]} == seeded["disagreeing"]


def test_trend_chart_marks_the_planted_drift_only(seeded):
    history = seeded["store"].job_runs("nightly")
    svg = trend_svg(history)
    marked = re.findall(r'class="drift-marker" data-run="(\w+)"', svg)
    assert marked == [seeded["drift_run"]]
    assert svg.count('class="point"') == 3  # one task, three runs


@pytest.mark.parametrize("path", [
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/store.py",
    "/static/..%5c..%5cstore.py",
    "/comparisons/..%2f..%2fetc%2fpasswd",
    "/comparisons/..%2f..%2fetc%2fpasswd/samples",
    "/runs/%2e%2e",
    "/runs/%2e%2e/samples",
    "/runs/..%2f..%2fetc%2fpasswd/samples",
    "/jobs/..",
    "/jobs/../../etc/passwd",
    "/static/../../store.py",
    "/jobs/%2e%2e%2f%2e%2e%2fetc",
    "/comparisons/{cid}/samples?filter=<script>",
    "/comparisons/{cid}/samples?page=-1",
    "/comparisons/{cid}/shot?side=candidate&task=../../etc/passwd&doc=0&repeat=0&i=0",
    "/comparisons/{cid}/shot?side=../x&task=bulk&doc=0&repeat=0&i=0",
])
def test_path_traversal_and_bad_parameters_are_rejected(seeded, dashboard, path):
    conn = http.client.HTTPConnection(dashboard.removeprefix("http://"), timeout=10)
    conn.request("GET", path.format(cid=seeded["cid"]))  # sent as written: no client-side clean-up
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    assert r.status in (400, 404), body
    assert "root:" not in body and "import " not in body and "<script>" not in body.split("</head>")[1]


def test_script_injection_through_parameters_is_escaped(seeded, dashboard):
    evil = '"><script>alert(1)</script>'
    for path in (f"/comparisons/{seeded['cid']}/samples", "/"):
        r = httpx.get(dashboard + path, params={"q": evil, "model": evil, "task": evil})
        assert r.status_code == 200
        assert "<script>alert(1)" not in r.text and "&lt;script&gt;alert(1)" in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert httpx.get(dashboard + "/", params={"since": evil}).status_code == 400
    assert httpx.post(dashboard + "/").status_code == 405  # read-only


def test_host_and_token_checks(seeded):
    with ServerThread(create_app(seeded["store"])) as server:
        url = f"http://127.0.0.1:{server.port}/"
        assert httpx.get(url).status_code == 200
        assert httpx.get(url, headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    with ServerThread(create_app(seeded["store"], token="s3cret")) as server:
        url = f"http://127.0.0.1:{server.port}/"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with httpx.Client() as client:
            r = client.get(url + "jobs?token=s3cret", follow_redirects=True)
            assert r.status_code == 200 and str(r.url).endswith("/jobs") and "s3cret" not in r.text


@pytest.mark.browser
def test_pages_in_chromium_are_quiet_offline_and_filters_work(seeded, dashboard):
    playwright = pytest.importorskip("playwright.sync_api")
    cid, drift_run = seeded["cid"], seeded["drift_run"]
    errors, outside, pwned = [], [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(dashboard) else None)
        page.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
        cand_run = seeded["comparison"]["candidate"]["id"]  # its item 0 answered HOSTILE
        for path in ("/", "/jobs", "/jobs/nightly", f"/comparisons/{cid}", f"/comparisons/{cid}/samples",
                     f"/runs/{cand_run}", f"/runs/{cand_run}/samples"):
            response = page.goto(dashboard + path)
            assert response.status == 200, path
            for summary in page.locator("summary").all()[:20]:
                summary.click()
            pwned.append(page.evaluate("window.__pwned === undefined ? null : window.__pwned"))
        # the disagreement filter, chosen in the page (the select submits itself)
        page.goto(f"{dashboard}/comparisons/{cid}/samples")
        assert page.locator("section.sample").count() == N_ITEMS
        page.select_option("select[name=filter]", "disagreements")
        page.wait_for_url(re.compile(r"filter=disagreements"))
        shown = set(page.locator("section.sample").evaluate_all("els => els.map(e => e.dataset.key)"))
        assert shown == seeded["disagreeing"]
        assert page.locator("section.sample del, section.sample ins").count() > 0  # text diff
        page.fill("input[name=q]", "Item 3:")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"q=Item"))
        assert page.locator("section.sample").evaluate_all("els => els.map(e => e.dataset.key)") \
            == ["bulk#3#0"]
        # the trend chart marks the planted drift
        page.goto(f"{dashboard}/jobs/nightly")
        markers = page.locator("#trend svg .drift-marker")
        assert markers.count() == 1 and markers.first.get_attribute("data-run") == drift_run
        assert page.locator(f'#history tr.drifted[data-run="{drift_run}"]').count() == 1
        browser.close()
    assert errors == [], errors
    assert outside == [], outside
    assert set(pwned) == {None}, pwned



def test_trend_marks_revision_changes_and_failed_runs():
    def run(jid, t, rev, status="complete", drift=None):
        summary = None if status == "failed" else {
            "margin": 0.05, "overall": {"verdict": "equivalent", "diff": 0.0, "n": 10},
            "tasks": {"t": {"verdict": "equivalent", "diff": 0.0, "candidate": 1.0, "baseline": 1.0}},
            "candidate": {"revision": rev, "dsparity": "0.1.0"},
            "baseline": {"revision": "b", "dsparity": "0.1.0"}}
        return {"id": jid, "started_at": t, "status": status, "summary": summary, "drift": drift or [],
                "cause": "baseline down <b>" if status == "failed" else None}

    svg = trend_svg([run("r1", 1.0, "a"), run("r2", 2.0, "a"), run("r3", 3.0, None, "failed"),
                     run("r4", 4.0, "c")])
    assert re.findall(r'class="revision-change" data-run="(\w+)"', svg) == ["r4"]
    assert re.findall(r'class="failed-marker" data-run="(\w+)"', svg) == ["r3"]
    assert "baseline down &lt;b&gt;" in svg and "drift-marker" not in svg


def test_judge_reasoning_and_screenshots_come_from_the_grade(tmp_path):
    from dsparity.evals.backends.base import Completion
    from dsparity.evals.storage.store import SampleKey

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    shot = tmp_path / "page.png"
    shot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    ids = []
    for label, score in (("cand", 0.0), ("base", 1.0)):
        rid, _ = store.find_or_create_run(
            label, model_spec=f"openai:m@http://x/v1?label={label}", label=label, identity={}, suite="web",
            tasks={"web_t": {"grader": "web", "n_items": 1}}, settings={}, provenance={})
        store.record(rid, SampleKey("web_t", 0, 0), dict(doc_hash="d", prompt_hash="p", target="", doc={},
                                                         request={"messages": [{"content": "Draw."}]}),
                     Completion(text=f"<html>{label}</html>"), None)
        store.put_grades(rid, [dict(task="web_t", doc_id=0, repeat=0, grader="web", score=score, passed=None,
                                    details={"screenshots": [str(shot), "/etc/passwd"],
                                             "verdict": {"reason": f"{label}: <i>balls bounce</i>"}})],
                         replace=False)
        ids.append(rid)
    comparison = compare_runs(store, ids[0], ids[1])
    cid = store.put_comparison(ids[0], ids[1], 0.05, 0.05, comparison)
    with ServerThread(create_app(store)) as server:
        base = f"http://127.0.0.1:{server.port}/comparisons/{cid}"
        page = httpx.get(base + "/samples", params={"filter": "regressions", "grader": "web"})
        assert page.status_code == 200 and page.text.count('class="sample') == 1
        assert "cand: &lt;i&gt;balls bounce&lt;/i&gt;" in page.text and '<img class="shot"' in page.text
        where = {"side": "candidate", "task": "web_t", "doc": 0, "repeat": 0}
        img = httpx.get(base + "/shot", params=where | {"i": 0})
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        other = httpx.get(base + "/shot", params=where | {"i": 1})
        assert other.status_code == 404 and "root:" not in other.text  # only image files, even if recorded
