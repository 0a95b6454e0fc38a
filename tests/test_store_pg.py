"""The store on SQLite and on PostgreSQL: migrations (an old database opens with the new code),
job history and leases, the same code through an SQLAlchemy URL.

PostgreSQL tests use the server named by $DSPARITY_TEST_PG_URL (`.ci/run` starts one with
`scripts/test-postgres start`); each test gets a database of its own.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from dsparity.errors import DsparityError
from dsparity.evals.storage.store import SCHEMA_VERSION, V1_TABLES, SampleKey, Store, meta, runs

FIXTURES = Path(__file__).parent / "fixtures"
PG_URL = os.environ.get("DSPARITY_TEST_PG_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="DSPARITY_TEST_PG_URL is not set: no PostgreSQL "
                              "server (.ci/run starts one with scripts/test-postgres)")


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"dsparity_t_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_pg)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    return request.getfixturevalue("pg_url")


def _make_v1(url: str) -> None:
    """A schema-1 database (the tables dsparity 0.1.0 created) with one run in it."""
    engine = create_engine(url)
    with engine.begin() as c:
        for table in V1_TABLES:
            table.create(c)
        c.execute(meta.insert().values(key="schema_version", value="1"))
        c.execute(runs.insert().values(id="0123456789ab", key="k", model_spec="openai:m@http://x/v1",
                                       label="old", identity={"model": "m"}, suite="smoke", tasks={},
                                       settings={}, provenance={}, status="complete", created_at=1.0))
    engine.dispose()


def test_fresh_database_has_the_current_schema(url):
    store = Store(url)
    assert store.schema_version() == SCHEMA_VERSION
    assert {"jobs", "job_runs", "leases", "runs"} <= set(inspect(store.engine).get_table_names())
    Store(url)  # opening again changes nothing
    assert store.schema_version() == SCHEMA_VERSION


def test_old_schema_database_opens_and_is_migrated(url):
    _make_v1(url)
    store = Store(url)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.run("0123456789ab")["label"] == "old"  # old rows intact
    assert store.start_job_run("nightly", 1.0, "schedule", "me") is not None  # new tables usable


def test_a_database_written_by_dsparity_0_1_0_opens(tmp_path):
    """The real thing: a file written by the schema-1 code (dumped in tests/fixtures)."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as con:
        con.executescript((FIXTURES / "store_v1.sql").read_text())
    store = Store(f"sqlite:///{path}")
    assert store.schema_version() == SCHEMA_VERSION
    (run,) = store.list_runs()
    assert run["label"] == "old-model" and run["status"] == "complete"
    assert store.grades(run["id"])[SampleKey("smoke_arithmetic", 0, 0)]["score"] == 1.0
    (comparison,) = store.list_comparisons()
    assert comparison["verdict"] == "equivalent"
    assert store.job_runs() == [] and store.list_jobs() == []


def test_concurrent_openers_migrate_once(url):
    _make_v1(url)
    errors, stores = [], []

    def open_it():
        try:
            stores.append(Store(url))
        except Exception as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 6
    assert stores[0].schema_version() == SCHEMA_VERSION


def test_a_newer_database_is_refused(url):
    store = Store(url)
    with store.engine.begin() as c:
        c.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(DsparityError, match="newer dsparity"):
        Store(url)


def test_job_history_slots_are_unique(url):
    store = Store(url)
    first = store.start_job_run("nightly", 100.0, "schedule", "a")
    assert first is not None
    assert store.start_job_run("nightly", 100.0, "schedule", "b") is None  # same slot: refused
    assert store.start_job_run("other", 100.0, "schedule", "b") is not None
    store.finish_job_run(first, status="failed", cause="baseline down", drift=[], alerts=[{"sent": True}])
    (row,) = store.job_runs("nightly")
    assert (row["status"], row["cause"], row["alerts"]) == ("failed", "baseline down", [{"sent": True}])
    assert store.last_slot("nightly") == 100.0 and store.last_slot("nobody") is None
    store.put_job("nightly", {"schedule": "0 3 * * *"}, None)
    store.put_job("nightly", {"schedule": "0 4 * * *"}, "/x.yaml")
    assert [(j["name"], j["spec"]["schedule"]) for j in store.list_jobs()] == [("nightly", "0 4 * * *")]
    orphan = store.start_job_run("nightly", 200.0, "schedule", "killed-process")
    assert store.fail_orphaned_job_runs("nightly", "stopped") == 1
    assert [r["status"] for r in store.job_runs("nightly") if r["id"] == orphan] == ["failed"]


def test_leases_exclude_other_holders_until_expiry(url):
    store = Store(url)
    assert store.acquire_lease("job:a", "p1", 60)
    assert not store.acquire_lease("job:a", "p2", 60)
    assert store.acquire_lease("job:a", "p1", 60)  # renewal by the holder
    store.release_lease("job:a", "p2")  # not p2's to release
    assert not store.acquire_lease("job:a", "p2", 60)
    store.release_lease("job:a", "p1")
    assert store.acquire_lease("job:a", "p2", -1)  # already expired when taken
    assert store.acquire_lease("job:a", "p3", 60)  # an expired lease is taken over


def test_one_of_many_racing_holders_gets_the_lease(url):
    store = Store(url)
    winners = []
    barrier = threading.Barrier(8)

    def race(i: int):
        barrier.wait()
        if Store(url).acquire_lease("job:race", f"p{i}", 60):
            winners.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.lease("job:race")["holder"] == f"p{winners[0]}"
