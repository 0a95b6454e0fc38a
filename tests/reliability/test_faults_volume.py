"""API faults at volume: 2,000 requests, 20% of them faulted in every way we know of."""

import asyncio

from faults import FAULTS, FaultServer
from task_folders import make_suite

from dsparity.evals.comparison.pairing import compare_runs
from dsparity.evals.runner import RunSettings, execute_run
from dsparity.evals.specs import parse_spec
from dsparity.evals.storage.store import Store
from dsparity.evals.tasks import load_tasks

N = 2000


def test_2000_requests_with_20_percent_faults_lose_nothing(tmp_path):
    tasks = load_tasks(names=["bulk"], include=[make_suite(tmp_path / "t" / "bulk", N)])
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    runs = {}
    with FaultServer(fault_rate=0.2, seed=7, hang_s=1.0) as faulty, FaultServer(fault_rate=0.0) as clean:
        for name, server, retries in (("faulty", faulty, 2), ("clean", clean, 0)):
            spec = parse_spec(f"openai:m@{server.base_url}?concurrency=48&retries={retries}&timeout=0.5"
                              f"&label={name}")
            runs[name] = asyncio.run(execute_run(spec, tasks, RunSettings(suite="bulk"), store,
                                                 show_progress=False))
        assert set(faulty.injected) == set(FAULTS) and sum(faulty.injected.values()) >= 0.18 * N
        # Retries are bounded: at most 1 + retries attempts per item.
        assert faulty.requests <= 3 * N
        assert max(faulty.answered.values()) == 1  # nothing answered was asked again
    rows = store.samples(runs["faulty"].run_id)
    assert len(rows) == len({(r["task"], r["doc_id"]) for r in rows}) == N
    errors = [r for r in rows if r["error"]]
    assert all(r["error_class"] in {"rate_limit", "server_error", "timeout", "connection", "protocol"}
               for r in errors)
    reasoning_only = [r for r in rows if r["reasoning"] and not r["text"]]
    assert reasoning_only and all(r["finish_reason"] == "length" and not r["error"] for r in reasoning_only)
    # The comparison counts the errors per model and never scores them as wrong answers.
    result = compare_runs(store, runs["faulty"].run_id, runs["clean"].run_id)
    assert result["usage"]["candidate"]["overall"]["errors"] == len(errors)
    assert result["usage"]["baseline"]["overall"]["errors"] == 0
    task = result["tasks"][0]
    assert task["n"] == N - len(errors)
    # Every answered item was right except the reasoning-only ones (an empty answer is a wrong
    # answer, not an error): the difference is exactly their share, errors excluded.
    assert task["mean_a"] == (task["n"] - len(reasoning_only)) / task["n"]
    print(f"\nfigures faults_volume: {N} items, {faulty.requests} attempts, "
          f"injected {dict(faulty.injected)}, errors left {len(errors)} ({_classes(errors)}), "
          f"reasoning-only answers {len(reasoning_only)}")


def _classes(rows) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["error_class"]] = out.get(r["error_class"], 0) + 1
    return out
