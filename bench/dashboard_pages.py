"""Seconds per dashboard page over a store built to be hard on it.

The store: one comparison whose two runs have `--samples` items each, every answer
`--answer-kb` KB of repetitive text that disagrees with the other side ('a b ' repeated against
'b a ', 'c d ', digits mod 5 against mod 7: the inputs that took difflib 13-87 s per row), plus
`--comparisons` more comparisons for the overview and a job with `--job-runs` runs for the trend
page. Each page is fetched `--repeat` times one after another (median printed), then the
samples page three times at once (the case that took 85 s each before pages were bounded).

    .venv/bin/python bench/dashboard_pages.py [--samples 100] [--answer-kb 200] [--comparisons 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PAIRS = (("a b ", "b a "), ("a b ", "c d "), ("0 1 2 3 4 ", "0 1 2 3 4 5 6 "))


def two_runs(store, name: str, samples: int, answer_kb: float) -> tuple[str, str]:
    from dsparity.evals import provenance
    from dsparity.evals.backends.base import Completion
    from dsparity.evals.storage.store import SampleKey

    ids = []
    for side, score in ((0, 0.0), (1, 1.0)):
        rid, _ = store.find_or_create_run(
            f"{name}{side}", model_spec=f"openai:m@http://x/v1?label={name}{side}", label=f"{name}{side}",
            identity={}, suite="bench", tasks={"t": {"grader": "exact", "n_items": samples}},
            settings={"suite": "bench"}, provenance=provenance.collect())
        for i in range(samples):
            unit = PAIRS[i % len(PAIRS)][side]
            text = (unit * (int(answer_kb * 1024) // len(unit) + 1))[:int(answer_kb * 1024)]
            fields = dict(doc_hash="d", prompt_hash=f"p{i}", target="42", doc={},
                          request={"messages": [{"content": f"Item {i}: go"}]})
            store.record(rid, SampleKey("t", i, 0), fields, Completion(text=text), None)
        store.put_grades(rid, [dict(task="t", doc_id=i, repeat=0, grader="exact", score=score, passed=None,
                                    details={}) for i in range(samples)], replace=False)
        ids.append(rid)
    return ids[0], ids[1]


def seed(store, samples: int, answer_kb: int, n_comparisons: int, job_runs: int) -> str:
    """One comparison of long hostile answers (its result carries up to 200 disagreements with
    their full texts), and many ordinary ones (short answers) for the overview."""
    import uuid

    from dsparity.evals.comparison.pairing import compare_runs
    from dsparity.evals.storage.store import comparisons

    cand, base = two_runs(store, "big", samples, answer_kb)
    big = store.put_comparison(cand, base, 0.05, 0.05, compare_runs(store, cand, base))
    cand, base = two_runs(store, "small", 50, 0.2)
    result = compare_runs(store, cand, base)
    with store.engine.begin() as c:
        c.execute(comparisons.insert(), [dict(id=uuid.uuid4().hex[:12], candidate_run=cand, baseline_run=base,
                                              margin=0.05, alpha=0.05, result=result, created_at=time.time())
                                         for _ in range(n_comparisons)])
    summary = {"margin": 0.05, "overall": {"verdict": "equivalent", "diff": 0.0, "n": samples},
               "tasks": {"t": {"verdict": "equivalent", "diff": 0.01, "candidate": 0.5, "baseline": 0.49}},
               "candidate": {"revision": "a", "dsparity": "0.1.0"},
               "baseline": {"revision": "b", "dsparity": "0.1.0"}}
    store.put_job("nightly", {"name": "nightly", "candidate": "x", "baseline": "y", "schedule": "0 3 * * *",
                              "timezone": "UTC", "margin": 0.05}, None)
    for slot in range(job_runs):
        jid = store.start_job_run("nightly", float(slot), "schedule", "bench")
        store.finish_job_run(jid, status="complete", verdict="equivalent", comparison_id=big, summary=summary,
                             drift=[])
    return big


def timed(client: httpx.Client, url: str) -> float:
    start = time.perf_counter()
    response = client.get(url, timeout=600)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, (url, response.status_code)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--answer-kb", type=int, default=200)
    parser.add_argument("--comparisons", type=int, default=2000)
    parser.add_argument("--job-runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from loopback import ServerThread

    from dsparity.evals.dashboard import create_app
    from dsparity.evals.storage.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        t0 = time.perf_counter()
        cid = seed(store, args.samples, args.answer_kb, args.comparisons, args.job_runs)
        print(f"seeded in {time.perf_counter() - t0:.1f} s: {args.samples} x 2 answers of "
              f"{args.answer_kb} KB, {args.comparisons + 1} comparisons, {args.job_runs} job runs")
        run_id = store.list_runs()[0]["id"]
        paths = ["/", "/?cpage=3", "/?model=small", "/jobs", "/jobs/nightly", f"/runs/{run_id}",
                 f"/comparisons/{cid}", f"/comparisons/{cid}/samples",
                 f"/comparisons/{cid}/samples?filter=disagreements&page=2",
                 f"/comparisons/{cid}/samples?q=item%207"]
        with ServerThread(create_app(store)) as server, httpx.Client() as client:
            base = f"http://127.0.0.1:{server.port}"
            print(f"{'page':<60} {'median s':>9} {'max s':>7}")
            for path in paths:
                times = [timed(client, base + path) for _ in range(args.repeat)]
                print(f"{path:<60} {statistics.median(times):9.3f} {max(times):7.3f}")
            url = base + f"/comparisons/{cid}/samples?filter=disagreements"
            with ThreadPoolExecutor(3) as pool:
                clients = [httpx.Client() for _ in range(3)]
                times = list(pool.map(lambda c: timed(c, url), clients))
                for c in clients:
                    c.close()
            label = "samples page, three at once (each)"
            print(f"{label:<60} {statistics.median(times):9.3f} {max(times):7.3f}")


if __name__ == "__main__":
    main()
