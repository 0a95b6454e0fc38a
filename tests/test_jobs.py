"""Scheduled jobs: job files, due slots, exactly-once under concurrency, failures that alert and
do not block the next run, drift against the previous run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from loopback import ServerThread, free_port, scripted_app
from task_folders import make_suite
from test_store_pg import pg_url  # noqa: F401 - a fresh PostgreSQL database per test
from typer.testing import CliRunner

from dsparity.cli import app
from dsparity.errors import DsparityError
from dsparity.evals.jobs import (
    EXIT_ALERT,
    EXIT_FAILED,
    detect_drift,
    is_due,
    latest_slot,
    load_dir,
    load_job,
    run_due,
)
from dsparity.evals.stats.drift import RunScores
from dsparity.evals.storage.store import Store

PG_URL = os.environ.get("DSPARITY_TEST_PG_URL")
ROOT = Path(__file__).resolve().parents[1]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def right(prompt: str) -> str:
    return "42"


class ServerOnPort(ServerThread):
    """A loopback server on a port chosen beforehand (an endpoint that comes back up)."""

    def __init__(self, asgi_app, port: int):
        super().__init__(asgi_app)
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port,
                                                    log_level="error", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def webhook_app() -> FastAPI:
    hook = FastAPI()
    hook.state.posts = []

    @hook.post("/hook")
    async def receive(request: Request):
        hook.state.posts.append(await request.json())
        return {"ok": True}

    return hook


def write_job(folder: Path, name: str, *, candidate: str, baseline: str, tasks_dir: Path,
              schedule: str = "0 3 * * *", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"""name: {name}
candidate: "{candidate}"
baseline: "{baseline}"
tasks: [bulk]
include: [{tasks_dir}]
schedule: "{schedule}"
settings:
  margin: 0.05
{extra}""")
    return path


@pytest.fixture
def tasks_dir(tmp_path):
    return make_suite(tmp_path / "tasks" / "bulk", 6)


def test_job_file_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    cases = {
        "name: x\ncandidate: local:m\nschedule: '61 * * * *'\n": "schedule",
        "name: x\ncandidate: local:m\nsettings: {limit: many}\n": "settings.limit",
        "name: x\ncandidate: local:m\ncolour: blue\n": "colour",
        "candidate: local:m\n": "name",
        "name: x\ncandidate: nonsense\n": "candidate",
        "name: x\ncandidate: local:m\nalerts: {on: [sometimes]}\n": "alerts.on",
        "name: ../x\ncandidate: local:m\n": "name",
        "name: x\ncandidate: local:m\nsettings: {margin: 0}\n": "settings.margin",
        "name: x\ncandidate: local:m\nsettings: {margin: 1.5}\n": "settings.margin",
    }
    for body, field in cases.items():
        bad.write_text(body)
        with pytest.raises(DsparityError) as err:
            load_job(bad)
        assert str(bad) in err.value.line() and field in err.value.line(), err.value.line()
    good = tmp_path / "jobs"
    good.mkdir()
    (good / "a.yaml").write_text("name: a\ncandidate: local:m\nschedule: '0 3 * * *'\n"
                                 "settings: {limit: 5, margin: 0.1}\nalerts: {webhook_env: HOOK}\n")
    (good / "b.yml").write_text("name: a\ncandidate: local:m\n")  # duplicate name
    jobs, problems = load_dir(good)
    assert [j.name for j in jobs] == ["a"] and jobs[0].limit == 5 and jobs[0].margin == 0.1
    assert len(problems) == 1 and "unique" in problems[0].line()
    assert jobs[0].public()["webhook"] is None and jobs[0].webhook_env == "HOOK"


def test_due_slots_follow_the_cron_schedule(tmp_path):
    job = load_job(write_job(tmp_path, "j", candidate="local:m", baseline="local:m", tasks_dir=tmp_path,
                             schedule="0 3 * * *"))
    assert latest_slot(job, at("2026-01-02T03:00:00")) == at("2026-01-02T03:00:00")
    assert latest_slot(job, at("2026-01-02T02:59:00")) == at("2026-01-01T03:00:00")
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    assert is_due(store, job, at("2026-01-02T04:00:00")) == at("2026-01-02T03:00:00")
    store.start_job_run("j", at("2026-01-02T03:00:00"), "schedule", "me")
    assert is_due(store, job, at("2026-01-02T23:00:00")) is None
    assert is_due(store, job, at("2026-01-03T03:00:01")) == at("2026-01-03T03:00:00")


def _summary(verdict="equivalent", task_verdict=None, margin=0.05):
    return {"overall": {"verdict": verdict},
            "tasks": {"t": {"verdict": task_verdict or verdict, "margin": margin, "unit": "points"}}}


def _items(n: int, wrong: int = 0, value: float = 1.0) -> dict:
    """n documents of task t, the first `wrong` scored 0, the rest `value`."""
    return {("t", i, f"d{i}", f"p{i}"): 0.0 if i < wrong else value for i in range(n)}


def test_drift_is_a_verdict_change_or_a_significant_shift_beyond_the_margin():
    same = _summary()
    before = RunScores(_items(50), _items(50))
    # three changed answers of fifty: a 6-point drop, past the 5-point margin, but noise (p = 0.08)
    assert detect_drift(same, same, 0.05, now=RunScores(_items(50, wrong=3), _items(50)), before=before) == []
    # twenty of fifty: significant and far past the margin
    events = detect_drift(same, same, 0.05, now=RunScores(_items(50, wrong=20), _items(50)), before=before)
    shifts = {e["measure"]: e for e in events if e["kind"] == "shift"}
    assert set(shifts) == {"candidate", "diff"}  # the baseline did not move
    assert shifts["candidate"]["shift"] == pytest.approx(-0.4) and shifts["candidate"]["p"] < 0.001
    assert shifts["candidate"]["n"] == 50 and "Tango" in shifts["candidate"]["method"]
    # significant but within the margin: 20 of 1,000 answers (2 points) is no drift at 5 points
    big = RunScores(_items(1000), _items(1000))
    drop = RunScores(_items(1000, wrong=20), _items(1000))
    assert detect_drift(same, same, 0.05, now=drop, before=big) == []
    # both models dropped together (a silent change of a shared endpoint): each side shifted, the
    # difference did not
    both = detect_drift(same, same, 0.05, now=RunScores(_items(50, wrong=25), _items(50, wrong=25)),
                        before=before)
    assert {e["measure"] for e in both if e["kind"] == "shift"} == {"candidate", "baseline"}
    # a verdict change is an event of its own; without per-item scores no shift is claimed
    worse = detect_drift(_summary("worse"), same, 0.05)
    assert {e["kind"] for e in worse} == {"verdict", "task_verdict"}
    assert detect_drift(same, None, 0.05, now=before, before=before) == []


def test_drift_in_continuous_scores_uses_the_paired_t_test():
    rng = np.random.default_rng(0)
    quality = rng.uniform(0.4, 0.9, 60)

    def scored(values) -> RunScores:
        return RunScores({("t", i, f"d{i}", f"p{i}"): float(v) for i, v in enumerate(values)},
                         _items(60, value=0.5))

    before = scored(quality)
    noisy = scored(np.clip(quality + rng.normal(0, 0.05, 60), 0, 1))  # re-graded, say, by a judge
    assert detect_drift(_summary(), _summary(), 0.05, now=noisy, before=before) == []
    shifts = [e for e in detect_drift(_summary(), _summary(), 0.05, now=scored(quality - 0.2), before=before)
              if e["kind"] == "shift"]
    assert sorted(e["measure"] for e in shifts) == ["candidate", "diff"]
    assert all(e["shift"] == pytest.approx(-0.2) and "bootstrap" in e["method"] for e in shifts)


def _run_due_process(folder: Path, db: str, now: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsparity.cli", "jobs", "run-due", str(folder), "--db", db,
                             "--now", now, "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ | {"COLUMNS": "200"})


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not PG_URL, reason="DSPARITY_TEST_PG_URL is not set: no PostgreSQL server"))])
def test_two_run_due_processes_started_together_run_a_due_job_once(tmp_path, tasks_dir, backend, request):
    db = f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    Store(db)  # created up front, as a team's shared store would be
    cand_app, base_app = scripted_app(right), scripted_app(right, delay_s=0.05)
    with ServerThread(cand_app) as cand, ServerThread(base_app) as base:
        folder = tmp_path / "jobs"
        write_job(folder, "nightly", candidate=f"openai:scripted@{cand.base_url}?label=cand",
                  baseline=f"openai:scripted@{base.base_url}?label=base", tasks_dir=tasks_dir)
        procs = [_run_due_process(folder, db, "2026-01-02T03:00:30+00:00") for _ in range(2)]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    history = Store(db).job_runs("nightly")
    assert len(history) == 1 and history[0]["status"] == "complete", outputs
    assert history[0]["slot"] == at("2026-01-02T03:00:00")
    # every item was asked once of each model: nobody ran the job a second time
    assert sum(cand_app.state.requests.values()) == 6 and set(cand_app.state.requests.values()) == {1}
    assert sum(base_app.state.requests.values()) == 6 and set(base_app.state.requests.values()) == {1}
    assert sum("no job due" in o for o in outputs) == 1


def test_baseline_down_records_a_failure_alerts_and_the_next_run_proceeds(tmp_path, tasks_dir):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    hook = webhook_app()
    base_port = free_port()  # nothing listens here yet: the baseline endpoint is down
    cand_app = scripted_app(right)
    runner = CliRunner()
    with ServerThread(cand_app) as cand, ServerThread(hook) as hook_server:
        folder = tmp_path / "jobs"
        write_job(folder, "nightly", candidate=f"openai:scripted@{cand.base_url}?label=cand",
                  baseline=f"openai:scripted@http://127.0.0.1:{base_port}/v1?label=base&retries=0",
                  tasks_dir=tasks_dir,
                  extra="alerts:\n  webhook_env: TEST_DSPARITY_HOOK\n")
        env = {"TEST_DSPARITY_HOOK": f"http://127.0.0.1:{hook_server.port}/hook"}
        failed = runner.invoke(app, ["jobs", "run-due", str(folder), "--db", db, "--quiet",
                                     "--now", "2026-01-02T03:05:00+00:00"], env=env)
        assert failed.exit_code == EXIT_FAILED, failed.output
        (run,) = Store(db).job_runs("nightly")
        assert run["status"] == "failed" and "cannot connect" in run["cause"]
        assert f"127.0.0.1:{base_port}" in run["cause"]
        assert run["alerts"][0]["sent"] is True and run["alerts"][0]["status_code"] == 200
        (post,) = hook.state.posts
        assert post["events"] == ["failure"] and post["job"] == "nightly"
        assert "failed" in post["text"] and "cannot connect" in post["text"]  # Slack shows `text`
        assert env["TEST_DSPARITY_HOOK"] not in str(Store(db).list_jobs())  # the URL is not stored

        # the same slot is not retried by every later cron tick...
        again = runner.invoke(app, ["jobs", "run-due", str(folder), "--db", db, "--quiet",
                                    "--now", "2026-01-02T03:10:00+00:00"], env=env)
        assert again.exit_code == 0 and "no job due" in again.output
        # ...and the next slot runs normally once the baseline is back
        with ServerOnPort(scripted_app(right), base_port):
            ok = runner.invoke(app, ["jobs", "run-due", str(folder), "--db", db, "--quiet",
                                     "--now", "2026-01-03T03:00:10+00:00"], env=env)
        assert ok.exit_code == 0, ok.output
    first, second = Store(db).job_runs("nightly")
    assert first["status"] == "failed" and second["status"] == "complete"
    assert second["verdict"] in ("equivalent", "inconclusive") and second["cause"] is None
    assert second["drift"] == []  # no completed run before it to drift from
    assert len(hook.state.posts) == 1  # nothing to say about a good run


def test_a_drifting_run_alerts_and_exits_1(tmp_path, tasks_dir):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    behaviour = {"answer": right}
    hook = webhook_app()
    with ServerThread(scripted_app(lambda p: behaviour["answer"](p))) as cand, \
            ServerThread(scripted_app(right)) as base, ServerThread(hook) as hook_server:
        job = write_job(tmp_path / "jobs", "j", candidate=f"openai:scripted@{cand.base_url}?label=cand",
                        baseline=f"openai:scripted@{base.base_url}?label=base", tasks_dir=tasks_dir,
                        extra=f"alerts:\n  webhook: http://127.0.0.1:{hook_server.port}/hook\n")
        runner = CliRunner()
        assert runner.invoke(app, ["jobs", "run", str(job), "--db", db, "--quiet"]).exit_code == 0
        behaviour["answer"] = lambda p: "41"  # the endpoint silently changed
        drifted = runner.invoke(app, ["jobs", "run", str(job), "--db", db, "--quiet"])
    assert drifted.exit_code in (EXIT_ALERT,), drifted.output
    last = Store(db).job_runs("j")[-1]
    assert last["status"] == "complete" and last["verdict"] in ("worse", "materially_worse")
    assert any(e["kind"] == "shift" and e["measure"] == "candidate" for e in last["drift"])
    (post,) = hook.state.posts
    assert set(post["events"]) == {"drift", "regression"} and "candidate" in post["text"]


def test_run_due_skips_broken_files_and_runs_the_rest(tmp_path, tasks_dir):
    db = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with ServerThread(scripted_app(right)) as cand, ServerThread(scripted_app(right)) as base:
        folder = tmp_path / "jobs"
        write_job(folder, "good", candidate=f"openai:scripted@{cand.base_url}",
                  baseline=f"openai:scripted@{base.base_url}", tasks_dir=tasks_dir)
        (folder / "broken.yaml").write_text("name: broken\ncandidate: local:m\nschedule: nope\n")
        outcomes, problems = run_due(db, folder, now=at("2026-01-02T03:00:00"), log=lambda *_: None,
                                     show_progress=False)
    assert [(o.job, o.status) for o in outcomes] == [("good", "complete")]
    assert len(problems) == 1 and "schedule" in problems[0].line()


def test_daemon_runs_a_due_job_and_stops_on_request(tmp_path, tasks_dir):
    from dsparity.evals.jobs import daemon

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    stop = threading.Event()
    lines = []

    def log(line: str) -> None:
        lines.append(line)
        if "drift" in line or "failed" in line:
            stop.set()

    with ServerThread(scripted_app(right)) as cand, ServerThread(scripted_app(right)) as base:
        write_job(tmp_path / "jobs", "every-minute", candidate=f"openai:scripted@{cand.base_url}",
                  baseline=f"openai:scripted@{base.base_url}", tasks_dir=tasks_dir, schedule="* * * * *")
        worker = threading.Thread(target=daemon, args=(store, tmp_path / "jobs"),
                                  kwargs={"log": log, "stop": stop}, daemon=True)
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive(), lines
    (run,) = store.job_runs("every-minute")
    assert run["status"] == "complete" and run["trigger"] == "schedule"
