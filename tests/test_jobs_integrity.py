"""Holes in jobs and the store that an adversarial review found: a malformed webhook URL must not
leave a run stuck at `running`; a job that lost its lease must not record results as if it held
it; a run-id prefix is a prefix, not a LIKE pattern."""

from __future__ import annotations

import pytest
from loopback import ServerThread, free_port, scripted_app
from task_folders import make_suite
from test_store_pg import pg_url, url  # noqa: F401 - fixtures: SQLite, and PostgreSQL when set

from dsparity.errors import DsparityError
from dsparity.evals.jobs import load_job, run_job
from dsparity.evals.storage.store import Store, leases, runs


def right(prompt: str) -> str:
    return "42"


def add_run(store: Store, rid: str) -> None:
    with store.engine.begin() as c:
        c.execute(runs.insert().values(id=rid, key=rid, model_spec="m", label=rid, identity={},
                                       suite="s", tasks={}, settings={}, provenance={}, status="complete",
                                       created_at=1.0))


def scripted(base_url: str) -> str:
    return f"openai:scripted@{base_url}"


def job_file(tmp_path, candidate: str, baseline: str, alerts: str = "") -> object:
    tasks = make_suite(tmp_path / "tasks" / "bulk", 3)
    path = tmp_path / "job.yaml"
    path.write_text(f"""name: nightly
candidate: "{candidate}"
baseline: "{baseline}"
tasks: [bulk]
include: [{tasks}]
{alerts}""")
    return path


@pytest.mark.parametrize("bad", ["http://[::1", "http://", "mailto:ops@example.com", "[1, 2]", "42"])
def test_a_malformed_webhook_in_a_job_file_is_refused_with_one_line(tmp_path, bad):
    path = job_file(tmp_path, "local:m", "local:m", f"alerts:\n  webhook: {bad}\n")
    with pytest.raises(DsparityError) as err:
        load_job(path)
    line = err.value.line()
    assert str(path) in line and "alerts.webhook" in line and "\n" not in line


@pytest.mark.parametrize("bad", ["http://[::1", "http://127.0.0.1:port/hook", "ftp://x/hook", "not a url"])
def test_a_malformed_webhook_from_the_environment_still_records_the_run(tmp_path, monkeypatch, bad):
    monkeypatch.setenv("DSP_TEST_HOOK", bad)
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with ServerThread(scripted_app(right)) as cand:
        down = f"openai:scripted@http://127.0.0.1:{free_port()}/v1?retries=0"  # a failure: an alert is due
        job = load_job(job_file(tmp_path, f"openai:scripted@{cand.base_url}", down,
                                "alerts:\n  webhook_env: DSP_TEST_HOOK\n"))
        outcome = run_job(store, job, log=lambda *_: None, show_progress=False)
    (run,) = store.job_runs("nightly")
    assert outcome.status == run["status"] == "failed" and "cannot connect" in run["cause"]
    assert run["finished_at"] is not None
    (alert,) = run["alerts"]
    assert alert["events"] == ["failure"] and alert["sent"] is False and "webhook URL" in alert["reason"]
    assert bad not in alert["reason"]  # a webhook URL is a secret: not quoted back


def test_a_job_that_lost_its_lease_records_no_results(tmp_path):
    """The lease expired while this process stalled and another process took the job: what this
    process computed afterwards is not recorded as the job's result."""
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    stolen = []

    def steal_then_answer(prompt: str) -> str:
        if not stolen:  # mid-run: another holder takes the lease (as after an expiry)
            with store.engine.begin() as c:
                c.execute(leases.update().where(leases.c.name == "job:nightly").values(
                    holder="other-host:1:abc", expires_at=4_000_000_000.0))
            stolen.append(True)
        return "42"

    with ServerThread(scripted_app(steal_then_answer)) as cand, ServerThread(scripted_app(right)) as base:
        job = load_job(job_file(tmp_path, scripted(cand.base_url), scripted(base.base_url)))
        outcome = run_job(store, job, log=lambda *_: None, show_progress=False)
    assert stolen
    (run,) = store.job_runs("nightly")
    assert outcome.status == run["status"] == "failed" and "lost the job's lease" in run["cause"]
    assert "other-host" in run["cause"] and run["comparison_id"] is None and run["summary"] is None
    assert store.list_comparisons() == []
    assert store.lease("job:nightly")["holder"] == "other-host:1:abc"  # the new holder keeps it


def test_a_job_that_keeps_its_lease_records_as_before(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with ServerThread(scripted_app(right)) as cand, ServerThread(scripted_app(right)) as base:
        job = load_job(job_file(tmp_path, scripted(cand.base_url), scripted(base.base_url)))
        outcome = run_job(store, job, log=lambda *_: None, show_progress=False, lease_ttl_s=0.4)  # many beats
    (run,) = store.job_runs("nightly")
    assert outcome.status == run["status"] == "complete" and run["comparison_id"]
    assert store.lease("job:nightly") is None  # released


def test_a_run_id_prefix_is_a_prefix_not_a_like_pattern(url):  # noqa: F811 - the fixture
    store = Store(url)
    rid = "0123456789ab"
    add_run(store, rid)
    assert store.run(rid)["id"] == rid and store.run(rid[:4])["id"] == rid  # prefixes still work
    for pattern in ("%", "_", "_" * len(rid), rid[:3] + "%", rid[:-1] + "_", "", "%%"):
        with pytest.raises(DsparityError) as err:
            store.run(pattern)
        assert "no such run" in err.value.line(), pattern
    other = next(f"{c}{rid[1:]}" for c in "0123456789abcdef" if c != rid[0])
    add_run(store, other)  # a second run that shares the first one's tail, not its start
    assert store.run(other[:6])["id"] == other and store.run(rid[:6])["id"] == rid


def test_an_ambiguous_prefix_says_so(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    for rid in ("abc111111111", "abc222222222"):
        add_run(store, rid)
    with pytest.raises(DsparityError) as err:
        store.run("abc")
    assert "several runs" in err.value.line()
    assert store.run("abc1")["id"] == "abc111111111"
