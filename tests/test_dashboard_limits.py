"""The dashboard's work per page is bounded whatever the answers and however big the store:
the word diff stops at a budget (repetitive 200 KB answers used to take 13-87 s per row), sample
lists and the overview come one page at a time. Work and output are asserted, never timings
(bench/dashboard_pages.py prints those)."""

from __future__ import annotations

import re

import httpx
import pytest
from loopback import ServerThread
from test_store_pg import pg_url, url  # noqa: F401 - fixtures: SQLite, and PostgreSQL when set

from dsparity.evals.backends.base import Completion
from dsparity.evals.comparison.pairing import compare_runs
from dsparity.evals.dashboard import create_app
from dsparity.evals.dashboard.queries import PAGE_ROWS, SAMPLE_ROWS
from dsparity.evals.dashboard.views import DIFF_CHARS, DIFF_WORK, PAGE_DIFF_WORK, word_diff
from dsparity.evals.storage.store import SampleKey, Store

LONG = 200_000  # characters per adversarial answer

ADVERSARIAL = {
    "shifted": ("a b " * 50_000, "b a " * 50_000),  # repetitive, one token apart
    "disjoint": ("a b " * 50_000, "c d " * 50_000),  # nothing in common
    "one word": ("x" * LONG, "y" * LONG),
    "near repeats": (" ".join(str(i % 7) for i in range(LONG // 2)),
                     " ".join(str(i % 5) for i in range(LONG // 2))),
}


def sides(diff) -> tuple[str, str]:
    return ("".join(t for op, t in diff.segments if op != "del"),
            "".join(t for op, t in diff.segments if op != "ins"))


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_the_word_diff_of_adversarial_answers_does_bounded_work(name):
    a, b = ADVERSARIAL[name]
    diff = word_diff(a, b)
    # one diagonal past the budget at most (a snake is one side's tokens at most)
    assert diff.work <= DIFF_WORK + DIFF_CHARS
    assert diff.clipped and sum(len(t) for _, t in diff.segments) <= 2 * DIFF_CHARS
    shown_a, shown_b = sides(diff)
    assert a.startswith(shown_a) and b.startswith(shown_b)  # a faithful account of both starts
    assert 0 < len(shown_a) <= DIFF_CHARS and 0 < len(shown_b) <= DIFF_CHARS
    if name == "shifted":  # a cheap edit for a linear-time diff: found exactly
        assert diff.exact and sum(op != "same" for op, _ in diff.segments) <= 4
    if name == "disjoint":  # no short edit exists: the budget stops the search
        assert not diff.exact and [op for op, _ in diff.segments] == ["del", "ins", "same"]  # a trailing " "


def test_the_word_diff_is_minimal_where_the_budget_allows():
    a = "the quick brown fox jumps over the lazy dog"
    b = "the quick red fox jumped over the dog"
    diff = word_diff(a, b)
    assert diff.exact and not diff.clipped and sides(diff) == (a, b)
    changed = [t for op, t in diff.segments if op != "same"]
    assert sum(len(re.findall(r"\s+|\S+", t)) for t in changed) == 6  # red/brown, jumped/jumps, "lazy "
    assert {"red", "brown", "jumped", "jumps"} <= set(changed)
    starved = word_diff(a, b, budget=0)
    assert not starved.exact and sides(starved) == (a, b)
    assert starved.segments[0] == ("same", "the quick ")  # the common start is kept
    assert starved.segments[-1] == ("same", " dog")  # and the common end


def _seed(store: Store, answers: dict[str, list[tuple[str, float]]]) -> str:
    """Two runs with the given (answer, score) per item, and their comparison."""
    ids = []
    for label, rows in answers.items():
        rid, _ = store.find_or_create_run(
            label, model_spec=f"openai:m@http://x/v1?label={label}", label=label, identity={}, suite="s",
            tasks={"t": {"grader": "exact", "n_items": len(rows)}}, settings={}, provenance={})
        for i, (text, _) in enumerate(rows):
            fields = dict(doc_hash="d", prompt_hash=f"p{i}", target="42", doc={},
                          request={"messages": [{"content": f"Item {i}: go"}]})
            store.record(rid, SampleKey("t", i, 0), fields, Completion(text=text), None)
        store.put_grades(rid, [dict(task="t", doc_id=i, repeat=0, grader="exact", score=score, passed=None,
                                    details={}) for i, (_, score) in enumerate(rows)], replace=False)
        ids.append(rid)
    return store.put_comparison(ids[0], ids[1], 0.05, 0.05, compare_runs(store, ids[0], ids[1]))


def test_a_samples_page_of_adversarial_answers_renders_with_bounded_diff_work(url):  # noqa: F811
    store = Store(url)
    n = SAMPLE_ROWS + 5  # two pages
    pairs = list(ADVERSARIAL.values())
    cid = _seed(store, {"cand": [(pairs[i % len(pairs)][0], 0.0) for i in range(n)],
                        "base": [(pairs[i % len(pairs)][1], 1.0) for i in range(n)]})
    with ServerThread(create_app(store)) as server:
        page = f"http://127.0.0.1:{server.port}/comparisons/{cid}/samples"
        first = httpx.get(page, params={"filter": "disagreements"}, timeout=120)
        second = httpx.get(page, params={"filter": "disagreements", "page": 2}, timeout=120)
        found = httpx.get(page, params={"q": "item 7:"}, timeout=120)
    assert first.status_code == second.status_code == found.status_code == 200
    keys = [re.findall(r'data-key="([^"]+)"', r.text) for r in (first, second)]
    assert len(keys[0]) == SAMPLE_ROWS and len(keys[1]) == n - SAMPLE_ROWS
    assert set(keys[0]) | set(keys[1]) == {f"t#{i}#0" for i in range(n)}
    diffs = first.text.count('<details class="diff">')
    assert diffs == SAMPLE_ROWS  # every disagreeing row has a diff, exact or not...
    assert 'class="note fallback"' in first.text  # ...and the hard pairs fell back within budget
    # the page shows clipped answers and bounded diffs: 50 answers of 200 KB would be 10 MB
    assert len(first.text) < SAMPLE_ROWS * (2 * 4_100 + 2 * DIFF_CHARS + 4_000)
    assert re.findall(r'data-key="([^"]+)"', found.text) == ["t#7#0"]  # search across pages


def test_the_page_budget_bounds_a_page_of_hard_pairs():
    hard = [word_diff(*ADVERSARIAL["disjoint"]) for _ in range(3)]
    assert all(d.work <= DIFF_WORK + DIFF_CHARS for d in hard)
    assert PAGE_DIFF_WORK <= SAMPLE_ROWS * DIFF_WORK  # a page cannot spend a row budget per row
    left = word_diff(*ADVERSARIAL["disjoint"], budget=0)
    assert not left.exact and left.work <= DIFF_CHARS


def test_the_overview_comes_a_page_at_a_time_and_filters_in_the_database(url):  # noqa: F811
    store = Store(url)
    n = PAGE_ROWS + 7
    cids = [_seed(store, {f"cand{i}": [("42", 1.0)], f"base{i}": [("41", 0.0)]}) for i in range(n)]
    with ServerThread(create_app(store)) as server:
        base = f"http://127.0.0.1:{server.port}/"
        first, second = httpx.get(base), httpx.get(base, params={"cpage": 2})
        only = httpx.get(base, params={"model": "cand3"})  # cand3, cand30..cand39: 11
        pct = httpx.get(base, params={"model": "%"})  # a character, not a LIKE wildcard
        runs2 = httpx.get(base, params={"rpage": 2})
    shown = [re.findall(r'href="/comparisons/(\w+)"', r.text) for r in (first, second)]
    assert len(shown[0]) == PAGE_ROWS and len(shown[1]) == n - PAGE_ROWS
    assert set(shown[0]) | set(shown[1]) == set(cids) and shown[0][0] == cids[-1]  # newest first
    assert f"Comparisons ({n})" in first.text and "older" in first.text
    assert f"Comparisons ({n})" in second.text and "newer" in second.text
    assert len(re.findall(r'href="/comparisons/(\w+)"', only.text)) == 11
    assert re.findall(r'href="/comparisons/(\w+)"', pct.text) == []
    run_links = re.findall(r'href="/runs/(\w+)"', runs2.text)
    assert f"Runs ({2 * n})" in runs2.text and len(run_links) == PAGE_ROWS  # 114 runs: page 2 of 3


def test_a_run_s_samples_page_is_paged_bounded_masked_and_linked(url):  # noqa: F811
    from dsparity.redact import secret

    key = secret("sk-dashboard-RECOGNISABLE-4242")  # a key this process read as one
    store = Store(url)
    n = SAMPLE_ROWS + 5  # two pages
    rid, _ = store.find_or_create_run(
        "one", model_spec="openai:m@http://x/v1?label=solo", label="solo", identity={}, suite="s",
        tasks={"t": {"grader": "exact", "n_items": n}}, settings={}, provenance={})
    for i in range(n):
        fields = dict(doc_hash="d", prompt_hash=f"p{i}", target="42", doc={},
                      request={"messages": [{"content": f"Item {i}: go"}]})
        if i == 2:
            answer = Completion(error="cannot reach postgresql://admin:hunter2hunter2@db/x",
                                error_class="connection")
        elif i == 1:
            answer = Completion(text=f"my key is {key}")
        else:
            answer = Completion(text=ADVERSARIAL["shifted"][0] if i % 3 == 0 else "42")
        store.record(rid, SampleKey("t", i, 0), fields, answer, None)
    store.put_grades(rid, [dict(task="t", doc_id=i, repeat=0, grader="exact", score=float(i % 2), passed=None,
                                details={}) for i in range(n) if i != 2], replace=False)
    with ServerThread(create_app(store)) as server:
        base = f"http://127.0.0.1:{server.port}"
        page = f"{base}/runs/{rid}/samples"
        overview, run_page = httpx.get(base + "/"), httpx.get(f"{base}/runs/{rid}")
        first, second = httpx.get(page, timeout=60), httpx.get(page, params={"page": 2}, timeout=60)
        errors = httpx.get(page, params={"filter": "errors"})
        wrong = httpx.get(page, params={"filter": "wrong"})
        found = httpx.get(page, params={"q": "item 7:"})
        bad = httpx.get(page, params={"filter": "<script>"})
    assert f'href="/runs/{rid}/samples"' in overview.text and 'id="samples-link"' in run_page.text
    assert bad.status_code == 400 and "<script>" not in bad.text
    keys = [re.findall(r'data-key="([^"]+)"', r.text) for r in (first, second)]
    assert len(keys[0]) == SAMPLE_ROWS and len(keys[1]) == n - SAMPLE_ROWS
    assert set(keys[0]) | set(keys[1]) == {f"t#{i}#0" for i in range(n)}
    # 200 KB answers are read and shown cut: ten of them on a page would be 2 MB
    assert len(first.text) < SAMPLE_ROWS * (4_100 + 3_000 + 2_000) and "more chars]" in first.text
    everything = "".join(r.text for r in (first, second, errors, wrong, found))
    assert key not in everything and "hunter2hunter2" not in everything
    assert "my key is ***" in first.text and "admin:***@db" in errors.text
    assert re.findall(r'data-key="([^"]+)"', errors.text) == ["t#2#0"]
    below = {f"t#{i}#0" for i in range(0, n, 2) if i != 2}  # score 0; item 2 errored, ungraded
    assert set(re.findall(r'data-key="([^"]+)"', wrong.text)) == below
    assert re.findall(r'data-key="([^"]+)"', found.text) == ["t#7#0"]  # search across pages
