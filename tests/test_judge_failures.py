"""A judge that fails is never a score: outages and unparsable verdicts are stored as grading
errors and graded again on the next run; a judge that cannot be reached fails the command before
anything is generated; one --judge flag on run, compare, grade and report, over the task's own."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from loopback import ServerThread, scripted_app
from task_folders import write_task
from tasks_helpers import cli

from dsparity.errors import DsparityError
from dsparity.evals.graders.judge import close_judges
from dsparity.evals.storage.store import Store

UNREACHABLE = "openai:judge@http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def _fresh_judges(monkeypatch):
    monkeypatch.delenv("DSPARITY_JUDGE", raising=False)
    yield
    close_judges()


class Judge:
    """A scripted judge: 6/10 for every answer, unless told to be down (HTTP 500) or to babble
    for some items; pairwise requests get a tie. Counts the single-answer requests per item."""

    def __init__(self):
        self.down: set[int] = set()
        self.babble: set[int] = set()
        self.asked: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, prompt: str) -> str:
        if '"verdict"' in prompt:
            return json.dumps({"verdict": "tie", "reason": "scripted"})
        found = re.search(r"Item (\d+):", prompt)
        if found is None:  # "your reply was rejected": only a babbled verdict is asked again
            return "Still 6 out of 10, honestly."
        item = int(found.group(1))
        with self.lock:
            self.asked.append(item)
        if item in self.down:
            raise RuntimeError("judge outage")  # the server answers HTTP 500
        if item in self.babble:
            return "A fine answer, I would say 6 out of 10."
        return json.dumps({"score": 6, "reason": "scripted"})


def _essay_task(root: Path, extra_settings: str = "") -> Path:
    rows = "".join(json.dumps({"question": f"Item {i}: describe parity in a few words.", "answer": ""})
                   + "\n" for i in range(3))
    write_task(root, "essay", rows=rows, grader="judge")
    if extra_settings:
        yaml_file = root / "essay" / "essay.yaml"
        yaml_file.write_text(yaml_file.read_text().replace("grader: judge", "grader: judge" + extra_settings))
    return root


def _judge_spec(server) -> str:
    return f"openai:judge@{server.base_url}?retries=0"


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def test_an_outage_or_a_babbling_judge_is_a_grading_error_graded_again_next_run(tmp_path):
    tasks = _essay_task(tmp_path / "tasks")
    judge = Judge()
    judge.down, judge.babble = {1}, {2}
    db = tmp_path / "r.db"
    model = scripted_app(lambda p: "Parity means the same quality.", model="m")
    with ServerThread(model) as served, ServerThread(scripted_app(judge, model="judge")) as judged:
        args = ["run", "--model", f"openai:m@{served.base_url}", "--tasks", "essay", "--include",
                str(tasks), "--db", f"sqlite:///{db}", "--judge", _judge_spec(judged)]
        code, out, err = cli(*args)
        assert code == 0, err
        assert "not graded: 2 answers" in " ".join(err.split())
        assert sorted(r[0] for r in _rows(db, "select doc_id from grades")) == [0]
        errors = dict(_rows(db, "select doc_id, error from grade_errors"))
        assert sorted(errors) == [1, 2]
        assert "HTTP 500" in errors[1] and "unparsable" in errors[2]
        assert "essay: 55.6% of 1" in " ".join(out.split())  # 6 on 1..10 is 5/9; the errors are not zeros
        assert sum(model.state.requests.values()) == 3

        judge.down, judge.babble, judge.asked = set(), set(), []
        code, out, err = cli(*args)  # the same command: nothing generated, the two graded now
        assert code == 0, err
    assert sum(model.state.requests.values()) == 3
    assert sorted(judge.asked) == [1, 2]
    assert sorted(r[0] for r in _rows(db, "select doc_id from grades")) == [0, 1, 2]
    assert _rows(db, "select count(*) from grade_errors") == [(0,)]
    assert "not graded" not in err


def _db_dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return list(c.iterdump())


@pytest.mark.parametrize("command", ["run", "compare"])
def test_an_unreachable_judge_fails_in_one_line_before_anything_is_generated(tmp_path, command):
    tasks = _essay_task(tmp_path / "tasks")
    db = tmp_path / "r.db"
    Store(f"sqlite:///{db}")
    before = _db_dump(db)
    model = scripted_app(lambda p: "Parity.", model="m")
    with ServerThread(model) as served:
        spec = f"openai:m@{served.base_url}"
        target = ["--model", spec] if command == "run" else \
            ["--candidate", spec, "--baseline", spec, "--out", str(tmp_path / "o")]
        result = subprocess.run(
            [sys.executable, "-m", "dsparity.cli", command, *target, "--tasks", "essay", "--include",
             str(tasks), "--db", f"sqlite:///{db}", "--judge", UNREACHABLE],
            capture_output=True, text=True, timeout=240, env={**os.environ, "DSPARITY_JUDGE": ""})
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    joined = " ".join(result.stderr.split())
    assert lines[0].startswith("error: judge (the judge of essay)") and "cannot connect to" in joined
    assert len(lines) <= 2 and "Traceback" not in result.stderr
    assert sum(model.state.requests.values()) == 0
    assert _db_dump(db) == before


@pytest.mark.parametrize("command", ["run", "compare"])
def test_no_judge_anywhere_says_pass_judge_which_both_commands_accept(tmp_path, command):
    tasks = _essay_task(tmp_path / "tasks")
    model = scripted_app(lambda p: "Parity.", model="m")
    with ServerThread(model) as served:
        spec = f"openai:m@{served.base_url}"
        target = ["--model", spec] if command == "run" else \
            ["--candidate", f"{spec}?label=c", "--baseline", f"{spec}?label=b", "--out", str(tmp_path / "o")]
        with pytest.raises(DsparityError, match=r"no judge model configured \(fix: pass --judge SPEC"):
            cli(command, *target, "--tasks", "essay", "--include", str(tasks),
                "--db", f"sqlite:///{tmp_path / 'r.db'}")
        assert not (tmp_path / "r.db").exists() and sum(model.state.requests.values()) == 0
        judge = Judge()
        with ServerThread(scripted_app(judge, model="judge")) as judged:
            code, out, err = cli(command, *target, "--tasks", "essay", "--include", str(tasks),
                                 "--db", f"sqlite:///{tmp_path / 'r.db'}", "--judge", _judge_spec(judged))
    assert code == 0, err
    assert sorted(judge.asked) == ([0, 1, 2] if command == "run" else [0, 0, 1, 1, 2, 2])


def test_compare_judge_flag_overrides_the_tasks_judge_for_grading_and_pairwise(tmp_path):
    tasks = _essay_task(tmp_path / "tasks", f"\n    judge: {UNREACHABLE}\n    pairwise: true")
    judge = Judge()
    judge.babble = {2}
    with ServerThread(scripted_app(lambda p: "Parity holds.", model="m")) as cand, \
            ServerThread(scripted_app(lambda p: "Parity holds, mostly.", model="m")) as base, \
            ServerThread(scripted_app(judge, model="judge")) as judged:
        code, out, err = cli("compare", "--candidate", f"openai:m@{cand.base_url}?label=c",
                             "--baseline", f"openai:m@{base.base_url}?label=b", "--tasks", "essay",
                             "--include", str(tasks), "--db", f"sqlite:///{tmp_path / 'r.db'}",
                             "--out", str(tmp_path / "out"), "--judge", _judge_spec(judged))
    assert code == 0, err
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    row = report["tasks"][0]
    assert row["pairwise"]["judge"] == _judge_spec(judged) and row["pairwise"]["n"] == 2
    assert row["n"] == 2  # the item the judge could not grade is not paired, not a zero
    assert report["grade_errors"] == {"candidate": {"essay": 1}, "baseline": {"essay": 1}}
    assert "not graded (no judge verdict; graded again on the next run): candidate 1, baseline 1" \
        in " ".join(out.split())
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    grades = store.grades(report["candidate"]["id"])
    assert {g["details"]["judge"] for g in grades.values()} == {_judge_spec(judged)}
    assert report["candidate"]["settings"]["judge"] == _judge_spec(judged)
