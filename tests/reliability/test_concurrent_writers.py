"""Concurrent writers: two runs and a grading pass on one store at once, with no lost or
corrupted rows and no "database is locked" reaching the user. SQLite always; PostgreSQL when
DSPARITY_TEST_PG_URL names a server (CI starts one)."""

import os
import subprocess
import sys

import pytest
from loopback import ServerThread, scripted_app
from sqlalchemy import create_engine, text
from task_folders import make_suite

ITEMS = 80


def _stores(tmp_path):
    yield "sqlite", f"sqlite:///{tmp_path / 'shared.db'}"
    if url := os.environ.get("DSPARITY_TEST_PG_URL"):
        yield "postgresql", url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    urls = dict(_stores(tmp_path))
    if request.param not in urls:
        pytest.skip("set DSPARITY_TEST_PG_URL to a PostgreSQL database (CI does)")
    url = urls[request.param]
    if request.param == "postgresql":  # a clean schema for this test
        engine = create_engine(url)
        with engine.begin() as c:
            for table in ("grades", "samples", "responses", "comparisons", "runs", "dsparity_meta"):
                c.execute(text(f"drop table if exists {table} cascade"))
        engine.dispose()
    return url


def _cmd(*args, url):
    return [sys.executable, "-m", "dsparity.cli", *args, "--db", url]


def test_two_runs_and_a_regrade_at_once(tmp_path, store_url):
    tasks_dir = make_suite(tmp_path / "t" / "bulk", ITEMS).parent
    with ServerThread(scripted_app(lambda p: "42", delay_s=0.005)) as server:
        def run(label: str) -> list[str]:
            return _cmd("run", "--model", f"openai:scripted@{server.base_url}?concurrency=8&label={label}",
                        "--tasks", "bulk", "--include", str(tasks_dir), url=store_url)

        first = subprocess.run(run("c"), capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        run_c = first.stdout.split()[1]
        procs = [subprocess.Popen(run(label), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for label in ("a", "b")]
        procs += [subprocess.Popen(_cmd("grade", run_c, url=store_url), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err.lower()
    engine = create_engine(store_url)
    with engine.connect() as c:
        per_run = dict(c.execute(text("select run_id, count(*) from samples group by run_id")).all())
        graded = dict(c.execute(text("select run_id, count(*) from grades group by run_id")).all())
        dupes = c.execute(text("select count(*) from (select run_id, task, doc_id, repeat from samples "
                               "group by run_id, task, doc_id, repeat having count(*) > 1) d")).scalar()
        bad = c.execute(text("select count(*) from samples where text <> '42' or error is not null")).scalar()
    engine.dispose()
    assert sorted(per_run.values()) == [ITEMS] * 3 and dupes == 0 and bad == 0
    assert graded == per_run
