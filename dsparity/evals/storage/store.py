"""The results store: SQLAlchemy Core over SQLite (default, WAL) or PostgreSQL (by URL).

Samples are append-only rows with a unique key (run, task, doc, repeat), written as soon as each
answer arrives, so a killed run resumes where it stopped and never duplicates. The response cache
is keyed by the model's identity *and* the request, so two models never share answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Completion
from dsparity.redact import mask_registered, redact, secret_url

# Bump with a function in MIGRATIONS: an older database is brought up to date when it is opened.
SCHEMA_VERSION = 4
MAX_TEXT_CHARS = 2_000_000  # a runaway answer is kept truncated and flagged, not stored whole

metadata = MetaData()

meta = Table("dsparity_meta", metadata, Column("key", String(64), primary_key=True),
             Column("value", Text))

runs = Table(
    "runs", metadata,
    Column("id", String(32), primary_key=True),
    Column("key", String(64), nullable=False, unique=True),  # same config -> same run (resume)
    Column("model_spec", Text, nullable=False),
    Column("label", Text, nullable=False),
    Column("identity", JSON, nullable=False),
    Column("suite", Text, nullable=False),
    Column("tasks", JSON, nullable=False),  # {task: {task_hash, n_items, grader}}
    Column("settings", JSON, nullable=False),
    Column("provenance", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # running | complete | failed
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
)

samples = Table(
    "samples", metadata,
    Column("run_id", String(32), nullable=False),
    Column("task", String(200), nullable=False),
    Column("doc_id", Integer, nullable=False),
    Column("repeat", Integer, nullable=False),
    Column("doc_hash", String(32), nullable=False),
    Column("prompt_hash", String(32), nullable=False),
    Column("target", Text, nullable=False),
    Column("doc", JSON, nullable=False),
    Column("request", JSON, nullable=False),
    Column("text", Text, nullable=False),
    Column("reasoning", Text, nullable=False),
    Column("truncated", Integer, nullable=False, default=0),
    Column("finish_reason", String(32)),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("usage", JSON, nullable=False),
    Column("latency_s", Float, nullable=False, default=0.0),
    Column("cost", Float),  # in the run's price currency; NULL when the model has no price
    Column("error", Text),
    Column("error_class", String(32)),
    Column("cached", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("scores", JSON),  # log-likelihood answers: one packed SpanScores per span
    UniqueConstraint("run_id", "task", "doc_id", "repeat", name="uq_sample"),
)

grades = Table(
    "grades", metadata,
    Column("run_id", String(32), nullable=False),
    Column("task", String(200), nullable=False),
    Column("doc_id", Integer, nullable=False),
    Column("repeat", Integer, nullable=False),
    Column("grader", String(64), nullable=False),
    Column("score", Float, nullable=False),
    Column("passed", Integer),
    Column("details", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("run_id", "task", "doc_id", "repeat", "grader", name="uq_grade"),
)

# A sample the grader could not grade for reasons outside the answer (a judge outage, an
# unparsable verdict): kept apart from grades, so it is never read as a score, and cleared when
# a later pass grades the sample.
grade_errors = Table(
    "grade_errors", metadata,
    Column("run_id", String(32), nullable=False),
    Column("task", String(200), nullable=False),
    Column("doc_id", Integer, nullable=False),
    Column("repeat", Integer, nullable=False),
    Column("grader", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("details", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("run_id", "task", "doc_id", "repeat", name="uq_grade_error"),
)

responses = Table(
    "responses", metadata,
    Column("key", String(64), primary_key=True),  # sha256(model identity) + sha256(request)
    Column("completion", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

comparisons = Table(
    "comparisons", metadata,
    Column("id", String(32), primary_key=True),
    Column("candidate_run", String(32), nullable=False),
    Column("baseline_run", String(32), nullable=False),
    Column("margin", Float, nullable=False),
    Column("alpha", Float, nullable=False),
    Column("result", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)


jobs = Table(
    "jobs", metadata,
    Column("name", String(200), primary_key=True),
    Column("spec", JSON, nullable=False),  # the job file as loaded (no secrets: webhook URLs stay in env)
    Column("path", Text),
    Column("updated_at", Float, nullable=False),
)

job_runs = Table(
    "job_runs", metadata,
    Column("id", String(32), primary_key=True),
    Column("job", String(200), nullable=False),
    # The schedule slot (epoch seconds) this run is for; a manual run's slot is its start time.
    # Unique with the job: two processes can never both record one slot.
    Column("slot", Float, nullable=False),
    Column("trigger", String(16), nullable=False),  # schedule | manual
    Column("status", String(16), nullable=False),  # running | complete | failed
    Column("holder", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("candidate_run", String(32)),
    Column("baseline_run", String(32)),
    Column("comparison_id", String(32)),
    Column("verdict", String(32)),
    Column("cause", Text),  # why a failed run failed, one readable line
    Column("summary", JSON),  # per-task figures, model revisions, dsparity version (for trends)
    Column("drift", JSON),  # drift events against the job's previous run
    Column("alerts", JSON),  # what was posted and how it went
    UniqueConstraint("job", "slot", name="uq_job_slot"),
)

leases = Table(
    "leases", metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

V1_TABLES = (meta, runs, samples, grades, responses, comparisons)


def _migrate_to_2(c: Connection) -> None:
    """Scheduled jobs: job definitions, their run history, and leases."""
    for table in (jobs, job_runs, leases):
        table.create(c, checkfirst=True)


def _migrate_to_3(c: Connection) -> None:
    """Log-likelihood tasks: a sample keeps its per-token scores."""
    if "scores" not in {col["name"] for col in inspect(c).get_columns("samples")}:
        c.exec_driver_sql("ALTER TABLE samples ADD COLUMN scores JSON")


def _migrate_to_4(c: Connection) -> None:
    """Grading errors (judge outages) are stored apart from grades."""
    grade_errors.create(c, checkfirst=True)


# version -> step from version - 1; idempotent
MIGRATIONS = {2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4}


def default_url() -> str:
    return os.environ.get("DSPARITY_DB") or f"sqlite:///{Path('results') / 'dsparity.db'}"


@dataclass(frozen=True)
class SampleKey:
    task: str
    doc_id: int
    repeat: int


class Store:
    def __init__(self, url: str | None = None):
        self.url = secret_url(url or default_url())  # its password is masked wherever it shows
        self.engine = _connect(self.url)
        try:
            self._open_schema()
        except OperationalError as exc:
            raise DsparityError(f"database {self.url}", "", f"cannot open ({exc.orig})",
                                "check the --db URL and that its folder is writable") from None

    def _open_schema(self) -> None:
        """Create a new database, or migrate an older one step by step (MIGRATIONS).

        Several processes may open one database at once: the steps run under a write lock
        (PostgreSQL advisory lock; SQLite's write lock) and are idempotent, and a lost race on
        DDL is retried.
        """
        for attempt in range(5):
            try:
                with self.engine.begin() as c:
                    self._migrate(c)
                return
            except DBAPIError:  # e.g. two processes creating one table; the loser sees it next time
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _migrate(self, c: Connection) -> None:
        if c.dialect.name == "postgresql":
            c.exec_driver_sql("SELECT pg_advisory_xact_lock(7209331)")
        meta.create(c, checkfirst=True)
        # A write first: on SQLite it takes the write lock, so concurrent openers queue here.
        c.execute(update(meta).where(meta.c.key == "schema_version").values(value=meta.c.value))
        row = c.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
        if row is None:
            has_runs = inspect(c).has_table("runs")
            metadata.create_all(c)
            # A pre-versioning database (tables, no version row) is version 1.
            version = 1 if has_runs else SCHEMA_VERSION
            c.execute(meta.insert().values(key="schema_version", value=str(version)))
        else:
            version = int(row[0])
        if version > SCHEMA_VERSION:
            raise DsparityError(f"database {self.url}", "schema_version",
                                f"was written by a newer dsparity (schema {version})",
                                "upgrade dsparity")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            logging.getLogger("dsparity.store").info("migrating %s to schema %d", redact(self.url), step)
            MIGRATIONS[step](c)
            c.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(step)))

    def schema_version(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar_one())

    # -- runs -------------------------------------------------------------------------------
    def find_or_create_run(self, key: str, **fields: Any) -> tuple[str, bool]:
        """The run for this configuration key: (id, resumed). Creating is race-safe."""
        with self.engine.begin() as c:
            row = c.execute(select(runs.c.id).where(runs.c.key == key)).first()
            if row:
                c.execute(update(runs).where(runs.c.id == row[0]).values(status="running"))
                return row[0], True
        run_id = uuid.uuid4().hex[:12]
        try:
            with self.engine.begin() as c:
                c.execute(runs.insert().values(id=run_id, key=key, status="running",
                                               created_at=time.time(), **fields))
        except IntegrityError:
            return self.find_or_create_run(key, **fields)
        return run_id, False

    def existing_run_keys(self, keys: list[str]) -> set[str]:
        """Which of these run keys have a run."""
        with self.engine.connect() as c:
            return {k for (k,) in c.execute(select(runs.c.key).where(runs.c.key.in_(keys)))}

    def finish_run(self, run_id: str, status: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(runs).where(runs.c.id == run_id)
                      .values(status=status, finished_at=time.time()))

    def run(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            rows = []
            if row is None and run_id:  # accept a unique prefix, as people copy short ids
                # autoescape: '%' and '_' in what was typed are characters, not LIKE wildcards
                rows = c.execute(select(runs).where(runs.c.id.startswith(run_id, autoescape=True))
                                 .limit(2)).mappings().all()
                row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise DsparityError(f"database {self.url}", f"run {run_id!r}",
                                "is the prefix of several runs" if rows else "no such run",
                                "list runs with `dsparity runs`")
        return dict(row)

    def list_runs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(select(runs).order_by(runs.c.created_at))
                    .mappings()]

    # -- samples ----------------------------------------------------------------------------
    def answered(self, run_id: str) -> set[SampleKey]:
        """Samples that have an answer (errors are retried on resume)."""
        q = select(samples.c.task, samples.c.doc_id, samples.c.repeat).where(
            samples.c.run_id == run_id, samples.c.error.is_(None))
        with self.engine.connect() as c:
            return {SampleKey(*r) for r in c.execute(q)}

    def cached_many(self, keys: list[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        with self.engine.connect() as c:
            for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                q = select(responses.c.key, responses.c.completion).where(
                    responses.c.key.in_(keys[i:i + 500]))
                found.update({k: Completion.from_dict(v) for k, v in c.execute(q)})
        return found

    def record(self, run_id: str, key: SampleKey, fields: dict[str, Any], completion: Completion,
               cache_key: str | None) -> None:
        """Write one sample (and its cache entry) in one transaction; replaces an errored row."""
        self.record_many([SampleRecord(run_id, key, fields, completion, cache_key)])

    def record_many(self, records: list[SampleRecord]) -> None:
        """Write samples in one transaction (a group commit): all of them or none."""
        with self._storage_errors(), self.engine.begin() as c:
            _write_samples(c, records)

    @contextlib.contextmanager
    def _storage_errors(self):
        """A full disk or a read-only file stops the run with one line; the transaction that
        failed is rolled back, so the store stays consistent and the run resumable."""
        try:
            yield
        except OperationalError as exc:
            message = str(exc.orig).lower()
            if "full" in message or "no space" in message or "readonly" in message or \
                    "read-only" in message or "disk i/o" in message:
                raise DsparityError(f"database {self.url}", "storage",
                                    f"cannot write ({exc.orig}); every answer stored so far is kept",
                                    "free disk space (or fix permissions), then re-run the same "
                                    "command to resume") from None
            raise

    def run_cost(self, run_id: str) -> float:
        with self.engine.connect() as c:
            total = c.execute(select(func.sum(samples.c.cost)).where(samples.c.run_id == run_id)).scalar()
        return float(total or 0.0)

    def sample_counts(self) -> dict[str, tuple[int, int]]:
        """Per run: (samples stored, of which errors), counted inside the database."""
        errors = func.sum(case((samples.c.error.is_not(None), 1), else_=0))
        q = select(samples.c.run_id, func.count(), errors).group_by(samples.c.run_id)
        with self.engine.connect() as c:
            return {run_id: (int(n), int(e or 0)) for run_id, n, e in c.execute(q)}

    def item_scores(self, run_id: str) -> list[tuple[str, int, str, str, float]]:
        """(task, doc_id, doc_hash, prompt_hash, score) of every answered, graded sample: what
        pairing a run with another needs, without texts."""
        q = select(samples.c.task, samples.c.doc_id, samples.c.doc_hash, samples.c.prompt_hash,
                   grades.c.score).select_from(samples.join(grades, and_(
                       grades.c.run_id == samples.c.run_id, grades.c.task == samples.c.task,
                       grades.c.doc_id == samples.c.doc_id, grades.c.repeat == samples.c.repeat))).where(
            samples.c.run_id == run_id, samples.c.error.is_(None))
        with self.engine.connect() as c:
            return [tuple(r) for r in c.execute(q)]

    def iter_samples(self, run_id: str, batch: int = 200) -> Iterator[dict[str, Any]]:
        """Every sample of a run with its grade (`grader`, `score`, `passed`, `grade_details`;
        None when it has none), in key order, a batch at a time rather than all at once."""
        graded = samples.outerjoin(grades, and_(
            grades.c.run_id == samples.c.run_id, grades.c.task == samples.c.task,
            grades.c.doc_id == samples.c.doc_id, grades.c.repeat == samples.c.repeat))
        q = select(samples, grades.c.grader, grades.c.score, grades.c.passed,
                   grades.c.details.label("grade_details")).select_from(graded).where(
            samples.c.run_id == run_id).order_by(samples.c.task, samples.c.doc_id, samples.c.repeat)
        with self.engine.connect() as c:
            for row in c.execution_options(yield_per=batch).execute(q).mappings():
                yield dict(row)

    def samples(self, run_id: str) -> list[dict[str, Any]]:
        q = select(samples).where(samples.c.run_id == run_id).order_by(
            samples.c.task, samples.c.doc_id, samples.c.repeat)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    # -- grades -----------------------------------------------------------------------------
    def grades(self, run_id: str) -> dict[SampleKey, dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(select(grades).where(grades.c.run_id == run_id)).mappings()
            return {SampleKey(r["task"], r["doc_id"], r["repeat"]): dict(r) for r in rows}

    def grade_errors(self, run_id: str) -> dict[SampleKey, dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(select(grade_errors).where(grade_errors.c.run_id == run_id)).mappings()
            return {SampleKey(r["task"], r["doc_id"], r["repeat"]): dict(r) for r in rows}

    def put_grades(self, run_id: str, rows: Iterable[dict[str, Any]], *, replace: bool,
                   errors: Iterable[dict[str, Any]] = ()) -> None:
        """Grades, and the samples that could not be graded this time, in one transaction: a
        graded sample's earlier grading error is cleared, an ungraded one's is replaced."""
        rows, errors = list(rows), list(errors)
        if not rows and not errors and not replace:
            return
        with self.engine.begin() as c:
            if replace:
                c.execute(grades.delete().where(grades.c.run_id == run_id))
                c.execute(grade_errors.delete().where(grade_errors.c.run_id == run_id))
            for r in [*rows, *errors]:
                c.execute(grade_errors.delete().where(
                    grade_errors.c.run_id == run_id, grade_errors.c.task == r["task"],
                    grade_errors.c.doc_id == r["doc_id"], grade_errors.c.repeat == r["repeat"]))
            if errors:
                c.execute(grade_errors.insert(), [r | {"run_id": run_id, "created_at": time.time()}
                                                  for r in errors])
            if not rows:
                return
            have = {(r.task, r.doc_id, r.repeat, r.grader) for r in c.execute(
                select(grades.c.task, grades.c.doc_id, grades.c.repeat, grades.c.grader)
                .where(grades.c.run_id == run_id))}
            fresh = [r | {"run_id": run_id, "created_at": time.time()} for r in rows
                     if (r["task"], r["doc_id"], r["repeat"], r["grader"]) not in have]
            if fresh:
                c.execute(grades.insert(), fresh)

    # -- comparisons ------------------------------------------------------------------------
    def put_comparison(self, candidate_run: str, baseline_run: str, margin: float, alpha: float,
                       result: dict[str, Any]) -> str:
        cid = uuid.uuid4().hex[:12]
        with self.engine.begin() as c:
            c.execute(comparisons.insert().values(
                id=cid, candidate_run=candidate_run, baseline_run=baseline_run, margin=margin,
                alpha=alpha, result=json.loads(json.dumps(result, default=str)),
                created_at=time.time()))
        return cid

    def comparison(self, cid: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(select(comparisons).where(comparisons.c.id == cid)).mappings().first()
        return dict(row) if row else None

    def list_comparisons(self) -> list[dict[str, Any]]:
        """Every comparison without its (large) result, newest first, with verdict and labels."""
        q = select(comparisons).order_by(comparisons.c.created_at.desc())
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(q).mappings()]
        for r in rows:
            result = r.pop("result")
            r["verdict"] = result.get("overall", {}).get("verdict")
            r["candidate_label"] = result.get("candidate", {}).get("label")
            r["baseline_label"] = result.get("baseline", {}).get("label")
            r["suite"] = result.get("candidate", {}).get("suite")
        return rows

    # -- jobs -------------------------------------------------------------------------------
    def put_job(self, name: str, spec: dict[str, Any], path: str | None) -> None:
        values = dict(spec=json.loads(json.dumps(spec, default=str)), path=path, updated_at=time.time())
        with self.engine.begin() as c:
            if c.execute(update(jobs).where(jobs.c.name == name).values(**values)).rowcount:
                return
        with contextlib.suppress(IntegrityError), self.engine.begin() as c:  # lost a race: fine
            c.execute(jobs.insert().values(name=name, **values))

    def list_jobs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(select(jobs).order_by(jobs.c.name)).mappings()]

    def start_job_run(self, job: str, slot: float, trigger: str, holder: str) -> str | None:
        """Record a job run for this slot; None when the slot already has one (ran elsewhere)."""
        jid = uuid.uuid4().hex[:12]
        try:
            with self.engine.begin() as c:
                c.execute(job_runs.insert().values(id=jid, job=job, slot=slot, trigger=trigger,
                                                   status="running", holder=holder,
                                                   started_at=time.time()))
        except IntegrityError:
            return None
        return jid

    def finish_job_run(self, jid: str, **fields: Any) -> None:
        fields.setdefault("finished_at", time.time())
        for key in ("summary", "drift", "alerts"):
            if fields.get(key) is not None:
                fields[key] = json.loads(json.dumps(fields[key], default=str))
        with self.engine.begin() as c:
            c.execute(update(job_runs).where(job_runs.c.id == jid).values(**fields))

    def fail_orphaned_job_runs(self, job: str, cause: str) -> int:
        """Mark the job's 'running' rows failed: called by the lease holder, so whoever wrote
        them is gone (killed mid-run)."""
        with self.engine.begin() as c:
            return c.execute(update(job_runs).where(job_runs.c.job == job, job_runs.c.status == "running")
                             .values(status="failed", cause=cause, finished_at=time.time())).rowcount

    def job_runs(self, job: str | None = None) -> list[dict[str, Any]]:
        """Job history, oldest first."""
        q = select(job_runs).order_by(job_runs.c.started_at)
        if job is not None:
            q = q.where(job_runs.c.job == job)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def last_slot(self, job: str) -> float | None:
        """The latest scheduled slot that has a run (of any outcome)."""
        q = select(func.max(job_runs.c.slot)).where(job_runs.c.job == job,
                                                    job_runs.c.trigger == "schedule")
        with self.engine.connect() as c:
            return c.execute(q).scalar()

    # -- leases -----------------------------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take (or extend our own) lease; False while another holder's lease is unexpired."""
        now = time.time()
        with self.engine.begin() as c:
            got = c.execute(update(leases).where(
                leases.c.name == name, or_(leases.c.expires_at < now, leases.c.holder == holder))
                .values(holder=holder, acquired_at=now, expires_at=now + ttl_s)).rowcount
        if got == 1:
            return True
        try:
            with self.engine.begin() as c:
                c.execute(leases.insert().values(name=name, holder=holder, acquired_at=now,
                                                 expires_at=now + ttl_s))
        except IntegrityError:
            return False
        return True

    def release_lease(self, name: str, holder: str) -> None:
        with self.engine.begin() as c:
            c.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def lease(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(select(leases).where(leases.c.name == name)).mappings().first()
        return dict(row) if row else None


@dataclass(frozen=True)
class SampleRecord:
    run_id: str
    key: SampleKey
    fields: dict[str, Any]  # doc_hash, prompt_hash, target, doc, request, cached, cost
    completion: Completion
    cache_key: str | None
    refresh_cache: bool = False  # --no-cache: the fresh answer replaces a cached one


def _write_samples(c, records: list[SampleRecord]) -> None:
    """Insert samples and their cache entries; never overwrite an answer, replace an error.

    Two statements per batch, not several per sample (each costs about a millisecond at the rate
    a fast endpoint answers; bench/harness_overhead.py): the samples go in as one upsert that
    replaces a stored row only where it holds an error, the cache entries as one insert that
    skips keys already cached (by a racing process too: same model, same request)."""
    rows, cache = {}, {}
    for r in records:
        row = _sample_row(r)
        before = rows.get((r.run_id, r.key))
        if before is None or before["error"] is not None:  # as if written one by one
            rows[(r.run_id, r.key)] = row
        if r.cache_key and r.completion.ok and r.cache_key not in cache:
            stored = r.completion.to_dict() | {"text": row["text"], "reasoning": row["reasoning"]}
            cache[r.cache_key] = dict(key=r.cache_key, completion=stored, created_at=row["created_at"])
    _upsert(c, samples, list(rows.values()))
    _upsert(c, responses, list(cache.values()))
    for r in records:  # --no-cache: the fresh answer replaces the cached one
        if r.refresh_cache and r.cache_key in cache:
            c.execute(update(responses).where(responses.c.key == r.cache_key)
                      .values(completion=cache[r.cache_key]["completion"], created_at=time.time()))


def _sample_row(r: SampleRecord) -> dict[str, Any]:
    # an endpoint that echoes the key it was sent into its answer must not get it stored
    text, truncated = _cap(mask_registered(r.completion.text))
    reasoning, truncated_r = _cap(mask_registered(r.completion.reasoning))
    usage = r.completion.usage
    # Every column, so that one statement fits every row of a batch (a caller may leave some out).
    return SAMPLE_DEFAULTS | dict(run_id=r.run_id, task=r.key.task, doc_id=r.key.doc_id, repeat=r.key.repeat,
                text=text, reasoning=reasoning, truncated=int(truncated or truncated_r),
                finish_reason=r.completion.finish_reason, prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens, reasoning_tokens=usage.reasoning_tokens,
                usage=usage.to_dict(), latency_s=r.completion.latency_s,
                error=r.completion.error, error_class=r.completion.error_class,
                scores=r.completion.scores, created_at=time.time(), **r.fields)


SAMPLE_DEFAULTS = {col.name: col.default.arg if col.default is not None else None for col in samples.c}
# How a batch of rows goes into a table whose unique key may be taken: (the key's columns, the
# condition under which a stored row is replaced; None: a stored row is always kept).
UPSERTS = {"samples": (("run_id", "task", "doc_id", "repeat"), samples.c.error.is_not(None)),
           "responses": (("key",), None)}
_upsert_statements: dict[tuple[str, str], Any] = {}  # built once: building one costs more than a row


def _upsert(c, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows; where the unique key is taken, replace the stored row if UPSERTS' condition
    holds for it, else keep it. One statement on SQLite and PostgreSQL (INSERT ... ON CONFLICT),
    a look-up per row elsewhere."""
    if not rows:
        return
    unique, replace_where = UPSERTS[table.name]
    dialect = c.dialect.name
    if dialect in ("sqlite", "postgresql"):
        stmt = _upsert_statements.get((dialect, table.name))
        if stmt is None:
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(table)
            if replace_where is None:
                stmt = stmt.on_conflict_do_nothing(index_elements=list(unique))
            else:
                stmt = stmt.on_conflict_do_update(
                    index_elements=list(unique), where=replace_where,
                    set_={col.name: stmt.excluded[col.name] for col in table.c if col.name not in unique})
            _upsert_statements[(dialect, table.name)] = stmt
        c.execute(stmt, rows)
        return
    for row in rows:
        match = [table.c[k] == row[k] for k in unique]
        found = c.execute(select(*(table.c[k] for k in unique)).where(*match)).first()
        if found is not None and replace_where is not None and \
                c.execute(select(table.c[unique[0]]).where(*match, replace_where)).first():
            c.execute(table.delete().where(*match))
            found = None
        if found is None:
            c.execute(table.insert().values(**row))


def _cap(text: str) -> tuple[str, bool]:
    return (text[:MAX_TEXT_CHARS], True) if len(text) > MAX_TEXT_CHARS else (text, False)


def _connect(url: str) -> Engine:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, future=True)
    except Exception as exc:  # bad URL or missing driver
        raise DsparityError("--db", url, f"not a usable database URL ({exc})",
                            "use sqlite:///path/to.db or postgresql+psycopg://user@host/db") \
            from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    return engine
