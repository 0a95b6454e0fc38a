"""Disk and memory pressure: a full disk stops a run with one line and a resumable store; a
10 MB answer is stored truncated and flagged, and the report still renders."""

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid

import pytest
from loopback import ServerThread, scripted_app
from task_folders import make_suite

can_mount = os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a store on it fills up part way through a run."""
    if not can_mount:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_stops_cleanly_and_the_run_resumes(tmp_path, small_disk):
    tasks_dir = make_suite(tmp_path / "t" / "bulk", 60).parent
    db = small_disk / "r.db"
    app = scripted_app(lambda prompt: prompt + " " + "x" * 40_000)  # 40 KB answers: ~2.4 MB in all
    with ServerThread(app) as server:
        cmd = [sys.executable, "-m", "dsparity.cli", "run", "--model",
               f"openai:scripted@{server.base_url}?concurrency=2", "--tasks", "bulk", "--include",
               str(tasks_dir), "--db", f"sqlite:///{db}"]
        full = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert full.returncode == 2, full.stdout + full.stderr
        lines = [ln for ln in full.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("error:") and "re-run the same command to resume" in full.stderr
        assert "Traceback" not in full.stderr
        with sqlite3.connect(db) as c:
            assert c.execute("pragma integrity_check").fetchone() == ("ok",)
            stored = c.execute("select count(*) from samples").fetchone()[0]
        assert 0 < stored < 60
        sent_before = sum(app.state.requests.values())
        subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        resent = sum(app.state.requests.values()) - sent_before
    with sqlite3.connect(db) as c:
        rows = c.execute("select task, doc_id, repeat, error from samples").fetchall()
    assert len(rows) == len(set(rows)) == 60 and all(r[3] is None for r in rows)
    assert resent <= 60 - stored + 2  # only what was missing (plus at most the two in flight)
    print(f"\nfigures disk_full: stopped with {stored}/60 stored, resumed sending {resent}")


def test_a_10_mb_answer_is_stored_truncated_and_the_report_renders(tmp_path):
    import asyncio

    from dsparity.evals.comparison.pairing import compare_runs
    from dsparity.evals.report import render
    from dsparity.evals.runner import RunSettings, execute_run
    from dsparity.evals.specs import parse_spec
    from dsparity.evals.storage.store import MAX_TEXT_CHARS, Store
    from dsparity.evals.tasks import load_tasks

    tasks = load_tasks(names=["bulk"], include=[make_suite(tmp_path / "t" / "bulk", 2)])
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    huge = "<b>" + "all work and no play " * 500_000  # ~10.5 MB, with markup
    runs = []
    for answer in (lambda p: huge, lambda p: "42"):
        async def go(answer=answer):
            with ServerThread(scripted_app(answer)) as server:
                spec = parse_spec(f"openai:scripted@{server.base_url}?label=m{len(runs)}&timeout=120")
                return await execute_run(spec, tasks, RunSettings(suite="bulk"), store, show_progress=False)
        runs.append(asyncio.run(go()).run_id)
    rows = store.samples(runs[0])
    assert all(r["truncated"] == 1 and len(r["text"]) == MAX_TEXT_CHARS for r in rows)
    paths = render(compare_runs(store, runs[0], runs[1]), tmp_path / "out", name="r")
    html = paths["html"].read_text()
    assert len(html) < 2_000_000 and "&lt;b&gt;all work" in html
