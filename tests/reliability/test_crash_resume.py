"""Crash and resume: `kill -9` at random points of a run, restart, and end exactly where an
uninterrupted run ends (same keys, same answers, same grades), with no recorded answer ever
requested again."""

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from loopback import ServerThread, scripted_app
from task_folders import make_suite

KILLS = 10
ITEMS = 60


def _run_cmd(base_url: str, db: Path, tasks_dir: Path) -> list[str]:
    return [sys.executable, "-m", "dsparity.cli", "run", "--model",
            f"openai:scripted@{base_url}?concurrency=2", "--tasks", "bulk", "--include", str(tasks_dir),
            "--db", f"sqlite:///{db}"]


def _state(db: Path) -> tuple[list, list]:
    with sqlite3.connect(db) as c:
        samples = c.execute("select task, doc_id, repeat, text, error from samples "
                            "order by task, doc_id, repeat").fetchall()
        grades = c.execute("select task, doc_id, repeat, grader, score from grades "
                           "order by task, doc_id, repeat").fetchall()
    return samples, grades


def _recorded_prompts(db: Path) -> set[str]:
    if not db.exists():
        return set()
    try:
        with sqlite3.connect(db) as c:
            rows = c.execute("select request from samples where error is null").fetchall()
    except sqlite3.OperationalError:  # killed before the schema existed
        return set()
    return {json.loads(r[0])["messages"][-1]["content"] for r in rows}


def test_ten_kill_9s_then_resume_equals_an_uninterrupted_run(tmp_path):
    tasks_dir = make_suite(tmp_path / "t" / "bulk", ITEMS).parent
    rng = random.Random(2026)
    with ServerThread(scripted_app(delay_s=0.03)) as reference_server:
        ref_db = tmp_path / "reference.db"
        done = subprocess.run(_run_cmd(reference_server.base_url, ref_db, tasks_dir),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    app = scripted_app(delay_s=0.03)
    db = tmp_path / "crashy.db"
    kill_log = []
    with ServerThread(app) as server:
        cmd = _run_cmd(server.base_url, db, tasks_dir)
        for i in range(KILLS):
            before = sum(app.state.requests.values())
            # Kill after a random number of new requests (generation), or a random moment after
            # the last answer (grading and finishing): the 10 points spread over the whole run.
            target = before + rng.randint(1, 8)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while (sum(app.state.requests.values()) < target and proc.poll() is None
                   and time.time() < deadline):
                time.sleep(0.005)
            time.sleep(rng.random() * 0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            recorded = _recorded_prompts(db)
            kill_log.append((i, len(recorded), {p: app.state.requests[p] for p in recorded}))
        final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
        counts = dict(app.state.requests)
    samples, grades = _state(db)
    ref_samples, ref_grades = _state(ref_db)
    assert samples == ref_samples and grades == ref_grades
    assert len(samples) == ITEMS and all(s[4] is None for s in samples)
    # Once an answer was recorded, its request was never sent again.
    for _, _, seen in kill_log:
        for prompt, n in seen.items():
            assert counts[prompt] == n, prompt
    # Re-sent at all: only requests in flight at a kill (at most the concurrency, 2, per kill).
    assert sum(counts.values()) - ITEMS <= 2 * KILLS
    progress = [n for _, n, _ in kill_log]
    print(f"\nfigures crash_resume: {KILLS} kills, answers stored at each kill {progress}, "
          f"requests sent {sum(counts.values())} for {ITEMS} items")
    assert progress == sorted(progress) and progress[-1] > 0
