"""The openai backend under faults, rate limits, replicas, prices and budgets (loopback only)."""

import asyncio
import subprocess
import sys

import pytest
from faults import FAULTS, FaultServer
from task_folders import make_suite

from dsparity.evals.runner import RunSettings, execute_run
from dsparity.evals.specs import parse_spec
from dsparity.evals.storage.store import Store
from dsparity.evals.tasks import load_tasks


def run(spec_text: str, tasks, store: Store, **settings):
    spec = parse_spec(spec_text)
    return asyncio.run(execute_run(spec, tasks, RunSettings(suite="bulk", **settings), store,
                                   show_progress=False))


@pytest.mark.parametrize("stream", ["false", "true"])
def test_500_requests_under_faults_each_answered_or_recorded_once(tmp_path, stream):
    tasks = load_tasks(names=["bulk"], include=[make_suite(tmp_path / "t" / "bulk", 500)])
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with FaultServer(fault_rate=0.3, seed=1, hang_s=1.5) as server:
        spec = (f"openai:m@{server.base_url}?concurrency=32&retries=1&timeout=0.5&stream={stream}")
        first = run(spec, tasks, store)
        rows = store.samples(first.run_id)
        assert len(rows) == len({(r["task"], r["doc_id"]) for r in rows}) == 500
        errors = [r for r in rows if r["error"]]
        assert first.errors == len(errors) > 0  # with one retry, some faults survive
        assert {r["error_class"] for r in errors} <= {"rate_limit", "server_error", "timeout",
                                                      "connection", "protocol"}
        answered = [r for r in rows if not r["error"]]
        reasoning_only = [r for r in answered if r["reasoning"] and not r["text"]]
        assert all(r["finish_reason"] == "length" for r in reasoning_only)  # an answer, not an error
        assert all(r["text"] == "42" and r["finish_reason"] == "stop" for r in answered
                   if r not in reasoning_only)
        # An infrastructure error is never graded as a wrong answer.
        assert len(store.grades(first.run_id)) == 500 - len(errors)
        assert set(server.injected) == set(FAULTS)
        # Re-running retries only the errors; nothing answered is asked again.
        answered_before = {r["request"]["messages"][0]["content"] for r in answered
                           if r not in reasoning_only}
        again = run(spec.replace("retries=1", "retries=6"), tasks, store)
    assert again.run_id == first.run_id and again.skipped == 500 - len(errors)
    final = store.samples(first.run_id)
    assert len(final) == 500 and not [r for r in final if r["error"]]
    assert max(server.answered.values()) == 1  # no prompt answered twice
    assert all(server.answered[p] == 1 for p in answered_before)


def test_replicas_share_the_load(tmp_path):
    tasks = load_tasks(names=["bulk"], include=[make_suite(tmp_path / "t" / "bulk", 60)])
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with FaultServer(fault_rate=0.0) as a, FaultServer(fault_rate=0.0) as b:
        result = run(f"openai:m@{a.base_url},{b.base_url}?concurrency=8", tasks, store)
    assert result.sent == 60 and a.requests + b.requests == 60
    assert min(a.requests, b.requests) >= 15


def test_non_retryable_4xx_is_not_retried(tmp_path):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from loopback import ServerThread

    app = FastAPI()
    app.state.n = 0

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "m", "object": "model"}], "object": "list"}

    @app.post("/v1/chat/completions")
    async def chat():
        app.state.n += 1
        return JSONResponse({"error": {"message": "bad request"}}, status_code=400)

    tasks = load_tasks(names=["bulk"], include=[make_suite(tmp_path / "t" / "bulk", 3)])
    with ServerThread(app) as server:
        result = run(f"openai:m@{server.base_url}?retries=5", tasks, Store(f"sqlite:///{tmp_path / 'r.db'}"))
    assert app.state.n == 3 and result.error_classes == {"client_error": 3}


def test_cost_is_accounted_and_budget_stops_cleanly(tmp_path):
    tasks = load_tasks(names=["bulk"], include=[make_suite(tmp_path / "t" / "bulk", 40)])
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with FaultServer(fault_rate=0.0) as server:
        spec = f"openai:m@{server.base_url}?price=deepseek-v3.2-exp&concurrency=1"
        # Each answer: 4 cache-hit + 6 miss prompt tokens, 2 output tokens (see faults.py).
        per_sample = (4 * 0.028 + 6 * 0.28 + 2 * 0.42) / 1e6
        stopped = run(spec, tasks, store, budget=per_sample * 10.5)
        assert stopped.stopped_by_budget and stopped.sent == 11
        assert store.run(stopped.run_id)["status"] == "stopped_budget"
        assert store.run_cost(stopped.run_id) == pytest.approx(per_sample * 11)
        done = run(spec, tasks, store, budget=1.0)
    assert done.run_id == stopped.run_id and done.sent == 29 and not done.stopped_by_budget
    assert store.run_cost(done.run_id) == pytest.approx(per_sample * 40)
    assert store.run(done.run_id)["settings"]["price"]["currency"] == "USD"


def test_api_key_never_reaches_store_logs_or_reports(tmp_path):
    key = "sk-dsparity-test-RECOGNISABLE-9f8e7d"
    make_suite(tmp_path / "t" / "bulk", 5)
    db = tmp_path / "r.db"
    env = {"MY_KEY": key, "PATH": "/usr/bin:/bin"}
    with FaultServer(fault_rate=0.5, seed=3) as server:
        spec = f"openai:m@{server.base_url}?api_key_env=MY_KEY&retries=0"
        args = ["--db", f"sqlite:///{db}", "--include", str(tmp_path / "t")]
        runs = [subprocess.run([sys.executable, "-m", "dsparity.cli", *cmd, *args], env=env,
                               capture_output=True, text=True, timeout=120, cwd=tmp_path)
                for cmd in (["run", "--model", spec, "--tasks", "bulk"],
                            ["compare", "--candidate", spec, "--baseline", spec, "--tasks", "bulk",
                             "--out", str(tmp_path / "reports")])]
    assert runs[1].returncode == 0, runs[1].stderr
    outputs = "".join(r.stdout + r.stderr for r in runs)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".html" for p in files)
    assert key not in outputs
    for p in files:
        assert key.encode() not in p.read_bytes(), p
