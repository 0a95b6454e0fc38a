"""Runs through the CLI against loopback servers: store contents, resume after kill -9, errors."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback import ServerThread, scripted_app

DSPARITY = [sys.executable, "-m", "dsparity.cli"]


def dsparity(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*DSPARITY, *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})}, **kw)


def db_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def test_run_stores_every_sample_once_and_rerun_sends_nothing(tmp_path):
    db = tmp_path / "r.db"
    with ServerThread(scripted_app()) as server:
        spec = f"openai:scripted@{server.base_url}"
        first = dsparity("run", "--model", spec, "--suite", "smoke", "--db", f"sqlite:///{db}")
        assert first.returncode == 0, first.stderr
        sent = sum(server.server.config.app.state.requests.values())
        again = dsparity("run", "--model", spec, "--suite", "smoke", "--db", f"sqlite:///{db}")
        assert again.returncode == 0, again.stderr
        assert sum(server.server.config.app.state.requests.values()) == sent
    rows = db_rows(db, "select task, doc_id, repeat, text, error from samples")
    assert len(rows) == sent == 14
    assert len({r[:3] for r in rows}) == 14 and all(r[4] is None for r in rows)
    # The scripted model is right on every item, and the grades say so.
    assert db_rows(db, "select min(score), count(*) from grades") == [(1.0, 14)]
    assert "resumed" in again.stdout and "0 requests sent" in again.stdout


def test_kill_9_halfway_then_rerun_completes_without_resending(tmp_path):
    db = tmp_path / "r.db"
    app = scripted_app(delay_s=0.25)
    with ServerThread(app) as server:
        args = ["run", "--model", f"openai:scripted@{server.base_url}?concurrency=1", "--suite",
                "smoke", "--db", f"sqlite:///{db}"]
        proc = subprocess.Popen([*DSPARITY, *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while sum(app.state.requests.values()) < 6 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = db_rows(db, "select request from samples where error is null")
        assert 0 < len(before) < 14
        answered_prompts = {__import__("json").loads(r[0])["messages"][-1]["content"]
                            for r in before}
        counts_at_kill = dict(app.state.requests)
        done = dsparity(*args)
        assert done.returncode == 0, done.stderr
        after = dict(app.state.requests)
    rows = db_rows(db, "select task, doc_id, repeat from samples")
    assert len(rows) == len(set(rows)) == 14
    for prompt in answered_prompts:  # nothing that had finished was sent again
        assert after[prompt] == counts_at_kill[prompt] == 1
    assert len(db_rows(db, "select 1 from grades")) == 14
    assert len(db_rows(db, "select id from runs")) == 1


def _db_state(db: Path):
    if not db.exists():
        return None
    with sqlite3.connect(db) as c:
        return list(c.iterdump())


def test_failed_command_creates_no_database(tmp_path):
    db = tmp_path / "r.db"
    result = dsparity("run", "--model", "openai:m@http://127.0.0.1:9/v1", "--db", f"sqlite:///{db}")
    assert result.returncode == 2 and not db.exists()


@pytest.mark.parametrize("args, words", [
    (["run", "--model", "local:no-such-model-anywhere"], "not a built-in model"),
    (["run", "--model", "openai:m@http://127.0.0.1:9/v1"], "cannot connect to"),
    (["run", "--model", "local:x?topk=0"], "topk"),
    (["run", "--model", "local:x", "--suite", "nosuch"], "no such suite"),
    (["run", "--model", "local:x", "--tasks", "nosuch_task"], "no such task"),
    (["compare", "--baseline", "openai:m@http://127.0.0.1:9/v1"], "cannot connect to"),
    (["report", "aaaa", "bbbb"], "no such run"),
])
def test_bad_input_one_line_nonzero_and_store_untouched(tmp_path, args, words):
    from dsparity.evals.storage.store import Store

    db = tmp_path / "r.db"
    Store(f"sqlite:///{db}")  # an existing store, which the failed command must leave as it was
    before = _db_state(db)
    result = dsparity(*args, "--db", f"sqlite:///{db}")
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) <= 2 and lines[0].startswith("error:") and words in result.stderr
    assert "Traceback" not in result.stderr
    assert _db_state(db) == before
