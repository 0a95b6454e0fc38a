"""What the dashboard's pages read: the columns and rows a page shows, one page at a time.

The store's list methods load whole rows (a comparison's full result, every sample's text);
a page built on them grows with the store. These queries keep a page's cost to its own rows
plus light columns of the rest (ids, hashes, scores), so it stays well under a second with ten
comparisons or ten thousand (bench/dashboard_pages.py measures it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, case, cast, func, or_, select, tuple_

from dsparity.evals.logprobs import prompt_of
from dsparity.evals.storage.store import Store, comparisons, grades, job_runs, jobs, runs, samples

PAGE_ROWS = 50  # comparisons, runs and job runs per page
SAMPLE_ROWS = 25  # samples per page (each shows two answers, their grades and a word diff)


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    number: int  # 1-based
    size: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))


def _window(q, number: int, size: int):
    return q.limit(size).offset((number - 1) * size)


def _in_time(column, lo: float | None, hi: float | None) -> list:
    return [c for c in (column >= lo if lo is not None else None,
                        column < hi if hi is not None else None) if c is not None]


# -- overview -----------------------------------------------------------------------------------
def comparisons_page(store: Store, *, model: str, suite: str, job: str, lo: float | None,
                     hi: float | None, number: int, size: int = PAGE_ROWS,
                     verdicts: dict[str, str | None] | None = None) -> Page:
    """Newest first. Labels and suite come from the two runs (a comparison's result repeats
    them), so filtering never opens a result; the verdict is read from the results of the
    page's rows only, and kept in `verdicts` (results never change once written)."""
    cand, base = runs.alias("cand"), runs.alias("base")
    joined = comparisons.outerjoin(cand, cand.c.id == comparisons.c.candidate_run).outerjoin(
        base, base.c.id == comparisons.c.baseline_run)
    where = _in_time(comparisons.c.created_at, lo, hi)
    if model:
        where.append(or_(cand.c.label.icontains(model, autoescape=True),
                         base.c.label.icontains(model, autoescape=True)))
    if suite:
        where.append(cand.c.suite == suite)
    if job:
        where.append(comparisons.c.id.in_(select(job_runs.c.comparison_id).where(job_runs.c.job == job)))
    q = select(comparisons.c.id, comparisons.c.candidate_run, comparisons.c.baseline_run,
               comparisons.c.margin, comparisons.c.created_at, cand.c.label.label("candidate_label"),
               base.c.label.label("baseline_label"), cand.c.suite.label("suite")
               ).select_from(joined).where(*where)
    verdicts = {} if verdicts is None else verdicts
    with store.engine.connect() as c:
        total = c.execute(select(func.count()).select_from(joined).where(*where)).scalar_one()
        rows = [dict(r) for r in c.execute(_window(q.order_by(comparisons.c.created_at.desc()), number, size))
                .mappings()]
        ids = [r["id"] for r in rows]
        owner = {cid: name for cid, name in c.execute(
            select(job_runs.c.comparison_id, job_runs.c.job).where(job_runs.c.comparison_id.in_(ids)))}
        unknown = [i for i in ids if i not in verdicts]
        if unknown:
            verdict = comparisons.c.result[("overall", "verdict")].as_string()
            verdicts.update({cid: v for cid, v in c.execute(
                select(comparisons.c.id, verdict).where(comparisons.c.id.in_(unknown)))})
    for r in rows:
        r["job"], r["verdict"] = owner.get(r["id"], ""), verdicts.get(r["id"])
    return Page(rows, total, number, size)


def runs_page(store: Store, *, model: str, suite: str, job: str, lo: float | None, hi: float | None,
              number: int, size: int = PAGE_ROWS) -> Page:
    where = _in_time(runs.c.created_at, lo, hi)
    if model:
        where.append(or_(runs.c.label.icontains(model, autoescape=True),
                         runs.c.model_spec.icontains(model, autoescape=True)))
    if suite:
        where.append(runs.c.suite == suite)
    if job:
        where.append(or_(runs.c.id.in_(select(job_runs.c.candidate_run).where(job_runs.c.job == job)),
                         runs.c.id.in_(select(job_runs.c.baseline_run).where(job_runs.c.job == job))))
    q = select(runs.c.id, runs.c.label, runs.c.model_spec, runs.c.suite, runs.c.status, runs.c.tasks,
               runs.c.created_at).where(*where).order_by(runs.c.created_at.desc())
    with store.engine.connect() as c:
        total = c.execute(select(func.count()).select_from(runs).where(*where)).scalar_one()
        rows = [dict(r) for r in c.execute(_window(q, number, size)).mappings()]
        ids = [r["id"] for r in rows]
        owner: dict[str, str] = {}
        stored = {run_id: (int(n), int(e or 0)) for run_id, n, e in c.execute(
            select(samples.c.run_id, func.count(), func.sum(case((samples.c.error.is_not(None), 1), else_=0)))
            .where(samples.c.run_id.in_(ids)).group_by(samples.c.run_id))} if ids else {}
        if ids:
            for cand, base, name in c.execute(select(job_runs.c.candidate_run, job_runs.c.baseline_run,
                                                     job_runs.c.job).where(or_(job_runs.c.candidate_run.in_(ids),
                                                                               job_runs.c.baseline_run.in_(ids)))):
                owner.update({cand: name, base: name})
    for r in rows:
        r["job"] = owner.get(r["id"], "")
        r["items"] = sum(int((t or {}).get("n_items") or 0) for t in (r.pop("tasks") or {}).values())
        r["stored"], r["errors"] = stored.get(r["id"], (0, 0))
    return Page(rows, total, number, size)


def suites_and_jobs(store: Store) -> tuple[list[str], list[str]]:
    with store.engine.connect() as c:
        return (sorted(s for (s,) in c.execute(select(runs.c.suite).distinct())),
                sorted(n for (n,) in c.execute(select(jobs.c.name))))


# -- one run, one comparison --------------------------------------------------------------------
def run_figures(store: Store, run_id: str) -> tuple[dict[str, tuple[float, int]], int]:
    """Per task (mean score, graded samples), and how many samples errored."""
    with store.engine.connect() as c:
        per_task = {t: (float(mean), int(n)) for t, mean, n in c.execute(
            select(grades.c.task, func.avg(grades.c.score), func.count()).where(grades.c.run_id == run_id)
            .group_by(grades.c.task).order_by(grades.c.task))}
        errors = c.execute(select(func.count()).select_from(samples).where(
            samples.c.run_id == run_id, samples.c.error.is_not(None))).scalar_one()
    return per_task, int(errors)


def job_of(store: Store, comparison_id: str) -> str | None:
    with store.engine.connect() as c:
        return c.execute(select(job_runs.c.job).where(job_runs.c.comparison_id == comparison_id)
                         .limit(1)).scalar()


def grade_details(store: Store, run_id: str, task: str, doc_id: int, repeat: int) -> dict[str, Any]:
    with store.engine.connect() as c:
        details = c.execute(select(grades.c.details).where(
            grades.c.run_id == run_id, grades.c.task == task, grades.c.doc_id == doc_id,
            grades.c.repeat == repeat).limit(1)).scalar()
    return details if isinstance(details, dict) else {}


# -- samples ------------------------------------------------------------------------------------
def sample_index(store: Store, run_id: str) -> dict[tuple, dict[str, Any]]:
    """Every sample of a run, without its texts: what pairing and the filters need."""
    with store.engine.connect() as c:
        scores = {(t, d, r): (s, p) for t, d, r, s, p in c.execute(
            select(grades.c.task, grades.c.doc_id, grades.c.repeat, grades.c.score, grades.c.passed)
            .where(grades.c.run_id == run_id))}
        out = {}
        for t, d, r, doc_hash, prompt_hash, error_class, errored in c.execute(
                select(samples.c.task, samples.c.doc_id, samples.c.repeat, samples.c.doc_hash,
                       samples.c.prompt_hash, samples.c.error_class, samples.c.error.is_not(None))
                .where(samples.c.run_id == run_id)):
            score, passed = scores.get((t, d, r), (None, None))
            out[(t, d, r)] = {"doc_hash": doc_hash, "prompt_hash": prompt_hash, "error_class": error_class,
                              "errored": bool(errored), "score": score, "passed": passed}
    return out


def sample_rows(store: Store, run_id: str, keys: list[tuple], chars: int | None = None
                ) -> tuple[dict[tuple, dict], dict[tuple, dict]]:
    """Samples and grades of a run for the given (task, doc_id, repeat) keys only. With `chars`,
    answer and reasoning are read up to that many characters (their full lengths come along as
    text_chars and reasoning_chars): a page never pulls megabytes of answer it will not show."""
    if not keys:
        return {}, {}
    key = tuple_(samples.c.task, samples.c.doc_id, samples.c.repeat)
    gkey = tuple_(grades.c.task, grades.c.doc_id, grades.c.repeat)
    shown = [samples.c[name] for name in ("task", "doc_id", "repeat", "doc_hash", "prompt_hash", "target",
                                         "request", "error", "error_class")]
    for name in ("text", "reasoning"):
        column = samples.c[name]
        shown += [(func.substr(column, 1, chars) if chars else column).label(name),
                  func.length(column).label(f"{name}_chars")]
    with store.engine.connect() as c:
        found = {(r["task"], r["doc_id"], r["repeat"]): dict(r) for r in c.execute(
            select(*shown).where(samples.c.run_id == run_id, key.in_(keys))).mappings()}
        graded = {(r["task"], r["doc_id"], r["repeat"]): dict(r) for r in c.execute(
            select(grades).where(grades.c.run_id == run_id, gkey.in_(keys))).mappings()}
    return found, graded


def comparison_head(store: Store, cid: str) -> dict[str, Any] | None:
    """A comparison's runs and labels, without its (possibly large) result."""
    cand, base = runs.alias("cand"), runs.alias("base")
    q = select(comparisons.c.id, comparisons.c.candidate_run, comparisons.c.baseline_run,
               cand.c.label.label("candidate_label"), base.c.label.label("baseline_label")).select_from(
        comparisons.outerjoin(cand, cand.c.id == comparisons.c.candidate_run).outerjoin(
            base, base.c.id == comparisons.c.baseline_run)).where(comparisons.c.id == cid)
    with store.engine.connect() as c:
        row = c.execute(q).mappings().first()
    return dict(row) if row else None


def search(store: Store, run_ids: list[str], query: str) -> set[tuple]:
    """Keys of samples whose prompt, target or answer contains `query` (case-insensitive),
    searched inside the database. The prompt lives in the request's JSON, where non-ASCII text
    is escaped: both spellings are looked for, and a hit is confirmed on the prompt itself."""
    cols = (samples.c.task, samples.c.doc_id, samples.c.repeat)
    mine = samples.c.run_id.in_(run_ids)
    request = cast(samples.c.request, Text)
    with store.engine.connect() as c:
        found = {tuple(r) for r in c.execute(select(*cols).where(mine, or_(
            samples.c.text.icontains(query, autoescape=True),
            samples.c.target.icontains(query, autoescape=True))))}
        needle = query.casefold()
        maybe = select(*cols, samples.c.request).where(mine, or_(
            request.icontains(query, autoescape=True),
            request.icontains(json.dumps(query)[1:-1], autoescape=True)))
        for t, d, r, req in c.execute(maybe):
            if (t, d, r) not in found and needle in prompt_of(req or {}).casefold():
                found.add((t, d, r))
    return found


# -- jobs ---------------------------------------------------------------------------------------
def jobs_overview(store: Store) -> list[dict[str, Any]]:
    """Every job with its run count, drift and failure counts and its latest run."""
    with store.engine.connect() as c:
        defined = [dict(r) for r in c.execute(select(jobs).order_by(jobs.c.name)).mappings()]
        counts: dict[str, dict[str, int]] = {}
        for name, status, drift in c.execute(select(job_runs.c.job, job_runs.c.status,
                                                    cast(job_runs.c.drift, Text))):
            n = counts.setdefault(name, {"runs": 0, "drifts": 0, "failures": 0})
            n["runs"] += 1
            n["drifts"] += drift not in (None, "null", "[]")
            n["failures"] += status == "failed"
        latest = select(job_runs.c.job, func.max(job_runs.c.started_at).label("t")).group_by(
            job_runs.c.job).subquery()
        last = {r["job"]: dict(r) for r in c.execute(
            select(job_runs.c.job, job_runs.c.status, job_runs.c.verdict, job_runs.c.started_at).join(
                latest, (job_runs.c.job == latest.c.job) & (job_runs.c.started_at == latest.c.t))).mappings()}
    return [j | counts.get(j["name"], {"runs": 0, "drifts": 0, "failures": 0}) | {"last": last.get(j["name"])}
            for j in defined]


def job_history(store: Store, name: str, number: int, size: int = PAGE_ROWS * 4) -> Page:
    """One page of a job's runs, oldest first within the page (the newest page first)."""
    where = job_runs.c.job == name
    with store.engine.connect() as c:
        total = c.execute(select(func.count()).select_from(job_runs).where(where)).scalar_one()
        rows = [dict(r) for r in c.execute(_window(
            select(job_runs).where(where).order_by(job_runs.c.started_at.desc()), number, size)).mappings()]
    return Page(list(reversed(rows)), total, number, size)
