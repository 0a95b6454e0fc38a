"""Scheduled comparison jobs: a YAML job file, its history in the store, drift and alerts.

A job file names a candidate and a baseline, the tasks, settings, a cron schedule and alerts.
`run_job` runs one comparison and records it in the job's history; `run_due` runs every job
whose latest cron slot has no run yet (for cron, systemd timers and Kubernetes CronJobs);
`daemon` calls `run_due` whenever a slot comes due, for people without a scheduler.

Exactly once per slot: a job runs under a lease in the store (two processes never run one job
at the same time), the slot is re-checked once the lease is held, and the history row for the
slot is unique, so even a lease that expired mid-run cannot record a slot twice.

Drift (evals/drift.py): each run is compared with the job's previous completed run; a change of
the overall or a task's verdict is a drift event, and so is a per-task shift (candidate score,
baseline score, or their difference) that a paired test on the items both runs answered finds
significant (Holm-adjusted over the run's tests) and that is larger than the margin. Alerts: the
exit code (0 fine, 1 drift or regression, 4 a failed run) and a JSON webhook whose `text` field
Slack (and Mattermost, Teams workflows, ...) shows as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from dsparity.errors import DsparityError
from dsparity.evals.stats.drift import detect_drift, run_scores
from dsparity.redact import redact, redact_obj, secret

EXIT_OK, EXIT_ALERT, EXIT_FAILED = 0, 1, 4
ALERT_EVENTS = ("failure", "drift", "regression")
LEASE_TTL_S = 300.0  # renewed every LEASE_TTL_S / 4 while the job runs
JOB_KEYS = {"name", "candidate", "baseline", "suites", "suite", "tasks", "include", "settings",
            "schedule", "timezone", "alerts", "reports"}
SETTING_KEYS = {"limit": int, "repeats": int, "seed": int, "size": int, "margin": float,
                "budget": float, "prices": str, "cache": bool, "max_error_rate": float, "judge": str}
ALERT_KEYS = {"webhook", "webhook_env", "on"}


@dataclass
class JobSpec:
    name: str
    candidate: str
    baseline: str | None  # None: the dense default model served on loopback, as in `compare`
    suites: list[str] | None
    tasks: list[str] | None
    include: list[Path]
    schedule: str | None
    timezone: str = "UTC"
    limit: int | None = None
    repeats: int = 1
    seed: int = 0
    size: int | None = None
    margin: float = 0.05
    budget: float | None = None
    prices: Path | None = None
    cache: bool = False  # a job asks the model again by default: silent changes must show
    max_error_rate: float = 0.0  # above this fraction of failed requests the run fails
    judge: str | None = None  # judge model spec for pairwise judging (as `dsparity report --judge`)
    webhook: str | None = None
    webhook_env: str | None = None
    alert_on: list[str] = field(default_factory=lambda: list(ALERT_EVENTS))
    reports: Path | None = None
    path: Path | None = None

    def public(self) -> dict[str, Any]:
        """What the store keeps: the job without secrets (a webhook URL is one)."""
        d = asdict(self)
        d["webhook"] = "(set)" if self.webhook else None
        return d

    def webhook_url(self) -> str | None:
        """The webhook URL, registered as a secret (a Slack URL is a bearer token)."""
        return secret(os.environ.get(self.webhook_env) or None if self.webhook_env else self.webhook)


def load_job(path: Path) -> JobSpec:
    """Read and check a job file; errors name the file, the field and what was expected."""
    src = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DsparityError(src, "", f"cannot read ({exc.strerror})", "check the path") from None
    except yaml.YAMLError as exc:
        raise DsparityError(src, "", f"not valid YAML ({exc})", "fix the syntax") from None
    if not isinstance(data, dict):
        raise DsparityError(src, "", "expected a mapping of job fields", "see README: job files")
    unknown = set(data) - JOB_KEYS
    if unknown:
        raise DsparityError(src, ", ".join(sorted(unknown)), "unknown field",
                            f"use only: {', '.join(sorted(JOB_KEYS))}")

    def text(key: str, required: bool = False) -> str | None:
        v = data.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v.strip():
            raise DsparityError(src, key, f"expected a non-empty string, got {v!r}")
        return v.strip()

    def names(key: str) -> list[str] | None:
        v = data.get(key)
        if v is None:
            return None
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            raise DsparityError(src, key, f"expected a list of names, got {v!r}")
        return v

    from dsparity.evals.specs import parse_spec

    name = text("name", required=True)
    if not all(ch.isalnum() or ch in "-_." for ch in name):
        raise DsparityError(src, "name", f"{name!r} has characters other than letters, digits, - _ .")
    candidate = text("candidate", required=True)
    parse_spec(candidate, source=f"{src}: candidate")
    baseline = text("baseline")
    if baseline:
        parse_spec(baseline, source=f"{src}: baseline")
    suites = names("suites") or names("suite")
    tasks = names("tasks")
    base_dir = path.parent
    include = [(base_dir / p).resolve() for p in (names("include") or [])]
    schedule = text("schedule")
    tz = text("timezone") or "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise DsparityError(src, "timezone", f"unknown time zone {tz!r}", "e.g. UTC or Europe/Paris") \
            from None
    if schedule:
        from croniter import croniter

        if not croniter.is_valid(schedule):
            raise DsparityError(src, "schedule", f"{schedule!r} is not a cron expression",
                                "five fields, e.g. '0 3 * * *' (03:00 every day)")
    job = JobSpec(name=name, candidate=candidate, baseline=baseline, suites=suites, tasks=tasks,
                  include=include, schedule=schedule, timezone=tz, path=path.resolve())
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise DsparityError(src, "settings", "expected a mapping")
    for key, value in settings.items():
        kind = SETTING_KEYS.get(key)
        if kind is None:
            raise DsparityError(src, f"settings.{key}", "unknown setting",
                                f"use only: {', '.join(sorted(SETTING_KEYS))}")
        ok = isinstance(value, bool) if kind is bool else \
            isinstance(value, int | float) and not isinstance(value, bool) if kind is float else \
            isinstance(value, kind) and not isinstance(value, bool)
        if not ok or (kind in (int, float) and value < 0):
            want = {str: "a string", bool: "true or false"}.get(kind, f"a non-negative {kind.__name__}")
            raise DsparityError(src, f"settings.{key}", f"expected {want}, got {value!r}")
        setattr(job, key, (base_dir / value).resolve() if key == "prices" else kind(value))
    if job.judge:
        parse_spec(job.judge, source=f"{src}: settings.judge")
    if not 0.0 < job.margin <= 1.0:  # as --margin: a margin of 0 can never show equivalence
        raise DsparityError(src, "settings.margin", f"expected a number in (0, 1] (score units), "
                            f"got {job.margin}", "e.g. margin: 0.05 for 5 points")
    alerts = data.get("alerts") or {}
    if isinstance(alerts, dict) and True in alerts:  # YAML 1.1 reads a bare `on:` key as true
        alerts = {("on" if k is True else k): v for k, v in alerts.items()}
    if not isinstance(alerts, dict) or set(alerts) - ALERT_KEYS:
        raise DsparityError(src, "alerts", f"expected a mapping with {', '.join(sorted(ALERT_KEYS))}")
    job.webhook = alerts.get("webhook")
    job.webhook_env = alerts.get("webhook_env")
    if job.webhook is not None and _webhook_problem(job.webhook):  # the URL itself is not echoed
        raise DsparityError(src, "alerts.webhook", _webhook_problem(job.webhook),
                            "write the full http(s) URL, or keep it in an environment variable "
                            "named by alerts.webhook_env")
    if job.webhook_env is not None and (not isinstance(job.webhook_env, str) or not job.webhook_env):
        raise DsparityError(src, "alerts.webhook_env", "expected the name of an environment variable")
    on = alerts.get("on", list(ALERT_EVENTS))
    on = [on] if isinstance(on, str) else on
    if not isinstance(on, list) or set(on) - set(ALERT_EVENTS):
        raise DsparityError(src, "alerts.on", f"expected a list of {', '.join(ALERT_EVENTS)}, got {on!r}")
    job.alert_on = on
    if data.get("reports"):
        job.reports = (base_dir / str(data["reports"])).resolve()
    return job


def load_dir(folder: Path) -> tuple[list[JobSpec], list[DsparityError]]:
    """Every *.yaml / *.yml job file in a folder; broken files are reported, not fatal."""
    if not folder.is_dir():
        raise DsparityError(str(folder), "", "not a folder of job files", "give the folder's path")
    jobs, problems, seen = [], [], {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            job = load_job(path)
        except DsparityError as exc:
            problems.append(exc)
            continue
        if job.name in seen:
            problems.append(DsparityError(str(path), "name", f"{job.name!r} is also the name in "
                                          f"{seen[job.name]}", "job names must be unique"))
            continue
        seen[job.name] = path
        jobs.append(job)
    return jobs, problems


# -- schedule --------------------------------------------------------------------------------
def latest_slot(job: JobSpec, now: float) -> float | None:
    """The most recent cron time at or before `now` (epoch seconds), in the job's time zone."""
    if not job.schedule:
        return None
    from croniter import croniter

    moment = datetime.fromtimestamp(now, ZoneInfo(job.timezone))
    it = croniter(job.schedule, moment)
    if croniter.match(job.schedule, moment.replace(second=0, microsecond=0)):
        return moment.replace(second=0, microsecond=0).timestamp()
    return it.get_prev(datetime).timestamp()


def next_slot(job: JobSpec, now: float) -> float | None:
    if not job.schedule:
        return None
    from croniter import croniter

    return croniter(job.schedule, datetime.fromtimestamp(now, ZoneInfo(job.timezone))) \
        .get_next(datetime).timestamp()


def is_due(store, job: JobSpec, now: float) -> float | None:
    """The slot to run now, or None (no schedule, or its latest slot already has a run)."""
    slot = latest_slot(job, now)
    if slot is None:
        return None
    last = store.last_slot(job.name)
    return None if last is not None and last >= slot else slot


# -- one run -----------------------------------------------------------------------------------
@dataclass
class JobOutcome:
    job: str
    job_run: str | None  # None: skipped (not due, or running elsewhere)
    status: str  # complete | failed | skipped
    verdict: str | None = None
    cause: str | None = None
    drift: list[dict] = field(default_factory=list)
    comparison_id: str | None = None
    alerts: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.status == "failed":
            return EXIT_FAILED
        if self.drift or self.verdict in ("worse", "materially_worse"):
            return EXIT_ALERT
        return EXIT_OK


def holder_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _Heartbeat:
    """Keeps a lease alive while a long comparison runs, and notices when it was lost: once
    another holder took it (this process stalled past the lease's expiry), it stays lost."""

    def __init__(self, store, name: str, holder: str, ttl_s: float):
        self.store, self.name, self.holder, self.ttl_s = store, name, holder, ttl_s
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="dsparity-lease")

    def _beat(self) -> None:
        while not self.stop.wait(self.ttl_s / 4):
            self._renew()

    def _renew(self) -> None:
        try:
            if not self.store.acquire_lease(self.name, self.holder, self.ttl_s):
                self.lost.set()
        except Exception:  # a missed beat (database busy) is retried at the next one
            pass

    def holds(self) -> bool:
        """Whether this process still holds the lease, renewed now (checked before recording)."""
        self._renew()
        return not self.lost.is_set()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def run_job(store, job: JobSpec, *, trigger: str = "manual", slot: float | None = None,
            now: float | None = None, log: Callable[[str], Any] = print,
            show_progress: bool = True, lease_ttl_s: float = LEASE_TTL_S) -> JobOutcome:
    """Run one comparison for the job and record it. Scheduled runs pass their slot and are
    skipped when another process holds the job or has already run that slot."""
    now = time.time() if now is None else now
    holder = holder_id()
    lease = f"job:{job.name}"
    if not store.acquire_lease(lease, holder, lease_ttl_s):
        other = store.lease(lease) or {}
        log(f"job {job.name}: running in another process ({other.get('holder', '?')}); skipped")
        return JobOutcome(job.name, None, "skipped", cause="running elsewhere")
    try:
        with _Heartbeat(store, lease, holder, lease_ttl_s) as heartbeat:
            store.fail_orphaned_job_runs(job.name, "the process running it stopped before it finished")
            if trigger == "schedule":
                last = store.last_slot(job.name)
                if slot is None or (last is not None and last >= slot):
                    return JobOutcome(job.name, None, "skipped", cause="already ran this slot")
            store.put_job(job.name, job.public(), str(job.path) if job.path else None)
            jid = store.start_job_run(job.name, slot if slot is not None else now, trigger, holder)
            if jid is None:
                return JobOutcome(job.name, None, "skipped", cause="already ran this slot")
            outcome = _execute(store, job, jid, log, show_progress, heartbeat)
    finally:
        store.release_lease(lease, holder)
    return outcome


def _execute(store, job: JobSpec, jid: str, log, show_progress: bool, heartbeat: _Heartbeat) -> JobOutcome:
    outcome = JobOutcome(job.name, jid, "failed")
    summary = None
    fields: dict[str, Any] = {}
    try:
        comparison, cand, base = _compare(store, job, log, show_progress)
        fields.update(candidate_run=cand.run_id, baseline_run=base.run_id)
        problem = _run_problem(job, "candidate", cand) or _run_problem(job, "baseline", base)
        if not heartbeat.holds():  # another process took the job over: its results are not ours to record
            other = (store.lease(heartbeat.name) or {}).get("holder", "?")
            outcome.cause = (f"lost the job's lease to {other} while running (this process stalled "
                             f"past the lease's {heartbeat.ttl_s:g} s): no comparison recorded")
        elif problem:
            outcome.cause = problem
        else:
            cid = store.put_comparison(cand.run_id, base.run_id, comparison["margin"],
                                       comparison["alpha"], comparison)
            summary = summarize(comparison)
            previous = _previous_run(store, job.name, jid)
            outcome.status, outcome.verdict, outcome.comparison_id = \
                "complete", comparison["overall"]["verdict"], cid
            outcome.drift = detect_drift(
                summary, previous and previous["summary"], job.margin,
                now=run_scores(store, cand.run_id, base.run_id),
                before=previous and run_scores(store, previous["candidate_run"], previous["baseline_run"]))
            if job.reports:
                from dsparity.evals.report import render

                render(comparison, job.reports, name=f"{job.name}-{jid}")
    except DsparityError as exc:
        outcome.cause = exc.line()
    except Exception as exc:  # a job must record why it failed, whatever failed
        outcome.cause = redact(f"{type(exc).__name__}: {exc}")
    outcome.alerts = send_alerts(job, outcome)
    store.finish_job_run(jid, status=outcome.status, verdict=outcome.verdict, cause=outcome.cause,
                         comparison_id=outcome.comparison_id, summary=summary, drift=outcome.drift,
                         alerts=outcome.alerts, **fields)
    if outcome.status == "failed":
        log(f"job {job.name}: [red]failed[/]: {outcome.cause}")
    else:
        log(f"job {job.name}: {outcome.verdict}" + (f", {len(outcome.drift)} drift event(s)"
                                                     if outcome.drift else ", no drift"))
    return outcome


def _compare(store, job: JobSpec, log, show_progress: bool):
    from dsparity.evals.accounting.pricing import load_prices
    from dsparity.evals.comparison.flow import FreshAnswers, run_comparison
    from dsparity.evals.runner import RunSettings
    from dsparity.evals.specs import parse_spec
    from dsparity.evals.tasks import load_tasks

    cand_spec = parse_spec(job.candidate, source=f"job {job.name}: candidate")
    task_specs = load_tasks(suites=job.suites or (None if job.tasks else ["smoke"]), names=job.tasks,
                            limit=job.limit, include=job.include, size=job.size)
    settings = RunSettings(suite=",".join(job.suites or job.tasks or ["smoke"]), limit=job.limit,
                           repeats=job.repeats, seed=job.seed, fresh=True, budget=job.budget,
                           prices=load_prices(job.prices), command={
                               "suite": ",".join(job.suites) if job.suites else None if job.tasks
                               else "smoke",
                               "tasks": ",".join(job.tasks) if job.tasks else None,
                               "include": [str(p) for p in job.include or []], "size": job.size,
                               "budget": job.budget, "prices": str(job.prices) if job.prices else None})
    run_store = store if job.cache else FreshAnswers(store)
    if job.baseline:
        served = contextlib.nullcontext(parse_spec(job.baseline, source=f"job {job.name}: baseline"))
    else:
        from dsparity.evals.serving.served import served_default as _served_default

        served = _served_default()
    with served as base_spec:
        _, result = asyncio.run(run_comparison(cand_spec, base_spec, task_specs, settings, run_store,
                                               job.margin, log=log, show_progress=show_progress,
                                               judge=job.judge))
    return result.comparison, result.candidate, result.baseline


def _run_problem(job: JobSpec, side: str, result) -> str | None:
    if result.stopped_by_budget:
        return f"{side}: stopped at the budget ({result.cost:.4f})"
    total = result.sent + result.from_cache
    if result.errors and total and result.errors / total > job.max_error_rate:
        classes = ", ".join(f"{k} x{v}" for k, v in sorted(result.error_classes.items()))
        return f"{side}: {result.errors} of {total} requests failed ({classes})"
    return None


def summarize(comparison: dict[str, Any]) -> dict[str, Any]:
    """What the trend views need from a comparison, kept with the job run."""
    from dsparity.evals.backends import identity_key

    def side(run: dict) -> dict[str, Any]:
        identity = run.get("identity") or {}
        return {"label": run.get("label"), "model": identity.get("model"),
                "revision": identity.get("revision") or identity_key(identity)[:12],
                "dsparity": (run.get("provenance") or {}).get("dsparity"),
                "git_commit": (run.get("provenance") or {}).get("git_commit")}

    overall = comparison["overall"]
    return {"margin": comparison["margin"],
            "overall": {"verdict": overall["verdict"], "diff": overall.get("diff"), "n": overall["n"]},
            "tasks": {t["task"]: {"verdict": t["verdict"], "diff": t.get("diff"), "n": t.get("n"),
                                  "candidate": t.get("mean_a"), "baseline": t.get("mean_b"),
                                  "margin": t.get("margin"), "unit": t.get("unit", "points")}
                      for t in comparison["tasks"]},
            "candidate": side(comparison["candidate"]), "baseline": side(comparison["baseline"])}


def _previous_run(store, job: str, jid: str) -> dict | None:
    """The job's last completed run before this one (its summary and its two runs)."""
    done = [r for r in store.job_runs(job) if r["status"] == "complete" and r["id"] != jid
            and r["summary"]]
    return done[-1] if done else None


# -- alerts ------------------------------------------------------------------------------------
def alert_text(job: JobSpec, outcome: JobOutcome) -> str:
    if outcome.status == "failed":
        return f":x: dsparity job *{job.name}* failed: {outcome.cause}"
    lines = [f":warning: dsparity job *{job.name}*: verdict {outcome.verdict}"]
    for e in outcome.drift[:10]:
        where = e["task"] or "overall"
        if e["kind"] == "shift":
            lines.append(f"• {where}: {e['measure']} {100 * e['from']:.1f} → {100 * e['to']:.1f} "
                         f"({100 * e['shift']:+.1f} points)")
        else:
            lines.append(f"• {where}: verdict {e['from']} → {e['to']}")
    if len(outcome.drift) > 10:
        lines.append(f"• … {len(outcome.drift) - 10} more")
    return "\n".join(lines)


def send_alerts(job: JobSpec, outcome: JobOutcome) -> list[dict]:
    events = []
    if outcome.status == "failed":
        events.append("failure")
    if outcome.drift:
        events.append("drift")
    if outcome.verdict in ("worse", "materially_worse"):
        events.append("regression")
    events = [e for e in events if e in job.alert_on]
    url = job.webhook_url()
    if not events:
        return []
    if not url:
        return [{"events": events, "sent": False, "reason": "no webhook configured"}]
    if problem := _webhook_problem(url):  # from the environment: checked only now
        return [{"events": events, "sent": False, "reason": f"webhook URL {problem}"}]
    import httpx

    payload = redact_obj({"text": alert_text(job, outcome), "job": job.name, "events": events,
                          "status": outcome.status, "verdict": outcome.verdict, "cause": outcome.cause,
                          "drift": outcome.drift, "job_run": outcome.job_run,
                          "comparison": outcome.comparison_id,
                          "candidate": job.candidate, "baseline": job.baseline or "(served default)"})
    try:
        response = httpx.post(url, json=payload, timeout=10)
        return [{"events": events, "sent": True, "status_code": response.status_code}]
    except Exception as exc:  # the run is recorded whatever happens to the alert (httpx.InvalidURL
        # is no httpx.HTTPError); the reason may quote the URL, which is a secret
        return [{"events": events, "sent": False, "reason": redact(f"{type(exc).__name__}: {exc}")}]


def _webhook_problem(url: Any) -> str | None:
    """Why a webhook URL cannot be posted to, without quoting it (it is a secret)."""
    import httpx

    if not isinstance(url, str):
        return f"is not a string ({type(url).__name__})"
    secret(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        return f"is not a valid URL ({redact(str(exc))})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "is not an http(s) URL with a host"
    return None


# -- many jobs -------------------------------------------------------------------------------
def run_due(store, folder: Path, *, now: float | None = None, log: Callable[[str], Any] = print,
            show_progress: bool = True) -> tuple[list[JobOutcome], list[DsparityError]]:
    now = time.time() if now is None else now
    jobs, problems = load_dir(folder)
    outcomes = []
    for job in jobs:
        slot = is_due(store, job, now)
        if slot is None:
            continue
        log(f"job {job.name}: due (slot {datetime.fromtimestamp(slot, UTC):%Y-%m-%d %H:%M} UTC)")
        outcomes.append(run_job(store, job, trigger="schedule", slot=slot, now=now, log=log,
                                show_progress=show_progress))
    return outcomes, problems


def daemon(store, folder: Path, *, log: Callable[[str], Any] = print, max_sleep_s: float = 60.0,
           stop: threading.Event | None = None) -> None:
    """Run due jobs forever: wake at the next slot of any job (re-reading the folder each time,
    so new and edited job files are picked up), at most max_sleep_s apart."""
    stop = stop or threading.Event()
    while not stop.is_set():
        _, problems = run_due(store, folder, log=log)
        for p in problems:
            log(f"[red]broken job file:[/] {p.line()}")
        jobs, _ = load_dir(folder)
        now = time.time()
        nexts = [n for n in (next_slot(j, now) for j in jobs) if n is not None]
        wait = min([max_sleep_s, *[max(0.5, n - now + 0.5) for n in nexts]])
        stop.wait(wait)
