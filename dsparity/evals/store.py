"""The results store: SQLAlchemy Core over SQLite (default, WAL) or PostgreSQL (by URL).

Samples are append-only rows with a unique key (run, task, doc, repeat), written as soon as each
answer arrives, so a killed run resumes where it stopped and never duplicates. The response cache
is keyed by the model's identity *and* the request, so two models never share answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterable
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
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Completion

SCHEMA_VERSION = 1
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


def default_url() -> str:
    return os.environ.get("DSPARITY_DB") or f"sqlite:///{Path('results') / 'dsparity.db'}"


@dataclass(frozen=True)
class SampleKey:
    task: str
    doc_id: int
    repeat: int


class Store:
    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        self.engine = _connect(self.url)
        try:
            metadata.create_all(self.engine)
            self._check_version()
        except OperationalError as exc:
            raise DsparityError(f"database {self.url}", "", f"cannot open ({exc.orig})",
                                "check the --db URL and that its folder is writable") from None

    def _check_version(self) -> None:
        with self.engine.begin() as c:
            row = c.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
            if row is None:
                with contextlib.suppress(IntegrityError):  # another process may have won the race
                    c.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(row[0]) > SCHEMA_VERSION:
                raise DsparityError(f"database {self.url}", "schema_version",
                                    f"was written by a newer dsparity (schema {row[0]})",
                                    "upgrade dsparity")

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

    def finish_run(self, run_id: str, status: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(runs).where(runs.c.id == run_id)
                      .values(status=status, finished_at=time.time()))

    def run(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            if row is None:  # accept a unique prefix, as people copy short ids
                rows = c.execute(select(runs).where(runs.c.id.like(f"{run_id}%"))).mappings().all()
                row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise DsparityError(f"database {self.url}", f"run {run_id!r}", "no such run",
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
        text, truncated = _cap(completion.text)
        reasoning, truncated_r = _cap(completion.reasoning)
        row = dict(run_id=run_id, task=key.task, doc_id=key.doc_id, repeat=key.repeat,
                   text=text, reasoning=reasoning, truncated=int(truncated or truncated_r),
                   finish_reason=completion.finish_reason,
                   prompt_tokens=completion.usage.prompt_tokens,
                   completion_tokens=completion.usage.completion_tokens,
                   reasoning_tokens=completion.usage.reasoning_tokens,
                   usage=completion.to_dict()["usage"], latency_s=completion.latency_s,
                   error=completion.error, error_class=completion.error_class,
                   created_at=time.time(), **fields)
        where = (samples.c.run_id == run_id, samples.c.task == key.task,
                 samples.c.doc_id == key.doc_id, samples.c.repeat == key.repeat)
        with self.engine.begin() as c:
            existing = c.execute(select(samples.c.error).where(*where)).first()
            if existing is not None and existing[0] is None:
                return  # already answered: never overwrite an answer
            if existing is not None:
                c.execute(samples.delete().where(*where))
            c.execute(samples.insert().values(**row))
            if cache_key and completion.ok:
                stored = completion.to_dict() | {"text": text, "reasoning": reasoning}
                if c.execute(select(responses.c.key).where(responses.c.key == cache_key)).first() \
                        is None:
                    c.execute(responses.insert().values(key=cache_key, completion=stored,
                                                        created_at=time.time()))

    def run_cost(self, run_id: str) -> float:
        with self.engine.connect() as c:
            total = c.execute(select(func.sum(samples.c.cost)).where(samples.c.run_id == run_id)).scalar()
        return float(total or 0.0)

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

    def put_grades(self, run_id: str, rows: Iterable[dict[str, Any]], *, replace: bool) -> None:
        rows = list(rows)
        if not rows:
            return
        with self.engine.begin() as c:
            if replace:
                c.execute(grades.delete().where(grades.c.run_id == run_id))
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
