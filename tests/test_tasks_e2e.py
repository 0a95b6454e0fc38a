"""Every offline suite runs end to end (tasks -> runner -> store -> graders, `--limit 2`) against a
scripted loopback server; the built-in tasks are found from an installed wheel as well as from the
checkout. (The CLI's `--suite a,b --limit` path itself is exercised by test_evals_run_resume.)"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from loopback import ServerThread, scripted_app
from tasks_helpers import OFFLINE_SUITES, REPO, fast_env, oracle_answers, scripted_oracle

from dsparity.evals.graders import sandbox
from dsparity.evals.runner import RunSettings, execute_run
from dsparity.evals.specs import parse_spec
from dsparity.evals.storage.store import Store
from dsparity.evals.tasks import load_tasks

EXACTLY_GRADABLE = {"exact", "math", "needle", "choice", "code", "stdio"}


@pytest.fixture()
def byte_tok(tmp_path):
    from tiny_models import byte_tokenizer

    folder = tmp_path / "bytetok"
    byte_tokenizer().save_pretrained(folder)
    (folder / "config.json").write_text("{}")
    return folder


def test_all_offline_suites_run_with_limit_2(tmp_path, byte_tok, monkeypatch):
    env = fast_env(tmp_path, byte_tok) | {"DSPARITY_ARTIFACTS": str(tmp_path / "artifacts")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    suites = list(OFFLINE_SUITES)
    if sandbox.bwrap_path() is None or shutil.which("chromium") is None:
        pytest.skip("needs bubblewrap and Chromium for the code and web graders (scripts/setup)")
    tasks = load_tasks(suites=suites, limit=2)
    assert {t.suite for t in tasks} == set(suites)
    graders = {t.name: t.grader for t in tasks}
    for t in tasks:  # shorter page renders keep the test quick; the checks are the same
        if t.grader == "web":
            t.settings = {**t.settings, "seconds": 1.2, "shots": 2}
    answers = oracle_answers(tasks)
    db = tmp_path / "r.db"
    with ServerThread(scripted_app(scripted_oracle(answers))) as server:
        monkeypatch.setenv("DSPARITY_JUDGE", f"openai:scripted@{server.base_url}")
        spec = parse_spec(f"openai:scripted@{server.base_url}?concurrency=8")
        settings = RunSettings(suite=",".join(suites), limit=2)
        result = asyncio.run(execute_run(spec, tasks, settings, Store(f"sqlite:///{db}"),
                                         show_progress=False))
    assert result.errors == 0 and result.sent == 2 * len(tasks)
    with sqlite3.connect(db) as c:
        samples = c.execute("select task, doc_id, error, finish_reason from samples").fetchall()
        grades = c.execute("select task, doc_id, grader, score, details from grades").fetchall()
    assert len(samples) == 2 * len(tasks) and all(s[2] is None for s in samples)
    assert {s[0] for s in samples} == set(graders)
    assert len(grades) == len(samples)
    for task, doc_id, grader, score, details in grades:
        assert grader == graders[task]
        if grader in EXACTLY_GRADABLE:  # the scripted reference answers pass their checkers
            assert score == 1.0, (task, doc_id, json.loads(details))
        if grader == "judge":
            assert score == pytest.approx((7 - 1) / 9), (task, json.loads(details))


def _copy_source(dest: Path) -> Path:
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "dsparity", dest / "dsparity", ignore=ignore)
    shutil.copytree(REPO / "tasks", dest / "tasks", ignore=ignore)
    return dest


def test_builtin_tasks_are_found_from_an_installed_wheel(tmp_path):
    """`pip wheel .` then install into a fresh venv (dependencies borrowed from this one)."""
    src = _copy_source(tmp_path / "src")
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), "-q"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("dsparity-*.whl"))
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    py = fresh / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install",
                                "--no-deps", "--no-index", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    site = next((fresh / "lib").glob("python3*/site-packages"))
    # Third-party dependencies come from the test's own environment; dsparity only from the wheel.
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "_deps.pth").write_text("\n".join(deps) + "\n")
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DSPARITY_TASK_CACHE"] = str(tmp_path / "cache")
    where = subprocess.run([str(py), "-c", "import dsparity, dsparity.evals.tasks as t; "
                            "print(dsparity.__file__); print(t.BUILTIN_TASKS)"],
                           capture_output=True, text=True, timeout=120, cwd=run_dir, env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    module, tasks_dir = where.stdout.split()
    assert module.startswith(str(site)) and tasks_dir == str(site / "dsparity" / "builtin_tasks")
    listed = subprocess.run([str(fresh / "bin" / "dsparity"), "tasks", "list"], capture_output=True,
                            text=True, timeout=120, cwd=run_dir, env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for suite in ("smoke", "reasoning", "coding", "writing", "longctx", "article", "hub"):
        assert f"suite {suite}:" in listed.stdout
    # The CPU kernels' C source ships in the wheel and builds from there.
    env["DSPARITY_CACHE"] = str(tmp_path / "dsparity-cache")
    built = subprocess.run([str(py), "-c", "from dsparity.kernels import native; "
                            "print(native.SOURCE); print(native.unavailable_reason())"],
                           capture_output=True, text=True, timeout=120, cwd=run_dir, env=env)
    assert built.stdout.split("\n")[:2] == [str(site / "dsparity/kernels/csrc/dsa_cpu.c"), "None"], \
        built.stdout + built.stderr[-2000:]
    shown = subprocess.run([str(fresh / "bin" / "dsparity"), "tasks", "show", "coding_stdio"],
                           capture_output=True, text=True, timeout=120, cwd=run_dir, env=env)
    assert shown.returncode == 0 and "8 items" in shown.stdout, shown.stderr[-2000:]
