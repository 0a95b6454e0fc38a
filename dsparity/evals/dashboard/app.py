"""FastAPI routes of the dashboard. Only GET and HEAD exist: the dashboard never writes."""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import ChoiceLoader, PackageLoader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from dsparity.evals.dashboard.views import FILTERS, filter_rows, pair_samples, trend_svg, word_diff
from dsparity.evals.report import _env as report_env
from dsparity.evals.report import reproduce_command
from dsparity.evals.report.charts import forest_plot_svg
from dsparity.evals.store import Store

STATIC = Path(__file__).parent / "static"
REPORT_CSS = Path(__file__).parent.parent / "report" / "templates" / "parts" / "style.css"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
PAGE = 100
IdParam = Annotated[str, PathParam(pattern=r"^[0-9a-f]{4,32}$")]
JobParam = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")]
ShortText = Annotated[str, Query(max_length=200)]
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Guard(BaseHTTPMiddleware):
    """Read-only methods, a token when one is set, loopback Host names when none is, and
    security headers on every answer."""

    def __init__(self, app, token: str | None):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("read-only", status_code=405)
        if self.token is None:
            host = request.headers.get("host", "")
            host = host[:host.find("]") + 1] if host.startswith("[") else host.split(":")[0]
            if host not in LOOPBACK_NAMES:
                return PlainTextResponse("unexpected Host header", status_code=400)
        else:
            given = request.query_params.get("token") or request.cookies.get("dsparity_token") or \
                request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                return PlainTextResponse("token required", status_code=401)
            if "token" in request.query_params:  # move it out of the URL (history, logs)
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
                response.set_cookie("dsparity_token", self.token, httponly=True, samesite="strict")
                return _secure(response)
        return _secure(await call_next(request))


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _date(value: str, name: str, end: bool = False) -> float | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise HTTPException(400, f"{name}: expected a date YYYY-MM-DD") from None
    return day.timestamp() + (86400 if end else 0)


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def create_app(store: Store | str, *, token: str | None = None) -> FastAPI:
    store = store if isinstance(store, Store) else Store(store)
    app = FastAPI(title="dsparity dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, token=token)
    env = report_env()
    env.loader = ChoiceLoader([PackageLoader("dsparity.evals.dashboard", "templates"), env.loader])
    env.filters["when"] = lambda t: "" if t is None else datetime.fromtimestamp(t, UTC).strftime(
        "%Y-%m-%d %H:%M")
    env.filters["pretty"] = lambda v: json.dumps(v, indent=1, ensure_ascii=False, default=str)
    env.globals["urlencode"] = urlencode

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=status)

    def job_of_comparisons() -> dict[str, str]:
        return {r["comparison_id"]: r["job"] for r in store.job_runs() if r["comparison_id"]}

    @app.get("/static/{name}")
    def static(name: Annotated[str, PathParam(pattern=r"^[a-z]+\.(css|js)$")]):
        path = REPORT_CSS if name == "report.css" else STATIC / name
        if not path.is_file():
            raise HTTPException(404, "no such asset")
        return FileResponse(path, media_type="text/css" if name.endswith(".css") else "text/javascript")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def index(model: ShortText = "", suite: ShortText = "", job: ShortText = "", since: ShortText = "",
              until: ShortText = ""):
        lo, hi = _date(since, "since"), _date(until, "until", end=True)
        jobs_by_cid = job_of_comparisons()
        jobs_by_run = {r[k]: r["job"] for r in store.job_runs() for k in ("candidate_run", "baseline_run")
                       if r[k]}
        m = model.casefold()

        def when_ok(t: float) -> bool:
            return (lo is None or t >= lo) and (hi is None or t < hi)

        comparisons = [c | {"job": jobs_by_cid.get(c["id"], "")} for c in store.list_comparisons()]
        comparisons = [c for c in comparisons if when_ok(c["created_at"])
                       and (not m or m in f"{c['candidate_label']} {c['baseline_label']}".casefold())
                       and (not suite or c["suite"] == suite) and (not job or c["job"] == job)]
        runs = [r | {"job": jobs_by_run.get(r["id"], "")} for r in reversed(store.list_runs())]
        runs = [r for r in runs if when_ok(r["created_at"])
                and (not m or m in f"{r['label']} {r['model_spec']}".casefold())
                and (not suite or r["suite"] == suite) and (not job or r["job"] == job)]
        return page("index.j2.html", comparisons=comparisons, runs=runs,
                    f={"model": model, "suite": suite, "job": job, "since": since, "until": until},
                    suites=sorted({r["suite"] for r in store.list_runs()}),
                    jobs=sorted(j["name"] for j in store.list_jobs()))

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: IdParam):
        try:
            run = store.run(run_id)
        except Exception:
            raise HTTPException(404, "no such run") from None
        grades = store.grades(run["id"])
        per_task: dict[str, list[float]] = {}
        for k, g in grades.items():
            per_task.setdefault(k.task, []).append(g["score"])
        errors = sum(1 for s in store.samples(run["id"]) if s["error"])
        return page("run.j2.html", run=run, errors=errors,
                    per_task={t: (sum(v) / len(v), len(v)) for t, v in sorted(per_task.items())})

    def comparison_or_404(cid: str) -> dict[str, Any]:
        row = store.comparison(cid)
        if row is None:
            raise HTTPException(404, "no such comparison")
        return row

    @app.get("/comparisons/{cid}", response_class=HTMLResponse)
    def comparison_page(cid: IdParam):
        row = comparison_or_404(cid)
        c = row["result"]
        return page("comparison.j2.html", c=c, cid=cid, job=job_of_comparisons().get(cid),
                    reproduce=reproduce_command(c), forest_svg=forest_plot_svg(c["tasks"], c["margin"]))

    @app.get("/comparisons/{cid}/samples", response_class=HTMLResponse)
    def samples_page(cid: IdParam, filter: ShortText = "all", task: ShortText = "", grader: ShortText = "",
                     q: ShortText = "", page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1):
        if filter not in FILTERS:
            raise HTTPException(400, f"filter: expected one of {', '.join(FILTERS)}")
        row = comparison_or_404(cid)
        rows = pair_samples(store, row["candidate_run"], row["baseline_run"])
        tasks, graders = sorted({r["task"] for r in rows}), sorted({r["grader"] for r in rows})
        shown = filter_rows(rows, kind=filter, task=task, grader=grader, query=q)
        pages = max(1, math.ceil(len(shown) / PAGE))
        chunk = shown[(page_no - 1) * PAGE: page_no * PAGE]
        for r in chunk:
            if r["candidate"] and r["baseline"]:
                r["diff"] = word_diff(r["candidate"]["text"], r["baseline"]["text"])
        counts = {k: len(filter_rows(rows, kind=k, task="", grader="", query="")) for k in FILTERS}
        return page("samples.j2.html", c=row["result"], cid=cid, rows=chunk, total=len(shown),
                    counts=counts, tasks=tasks, graders=graders, page_no=page_no, pages=pages,
                    f={"filter": filter, "task": task, "grader": grader, "q": q})

    @app.get("/comparisons/{cid}/shot")
    def screenshot(cid: IdParam, side: Annotated[str, Query(pattern="^(candidate|baseline)$")],
                   task: ShortText, doc: Annotated[int, Query(ge=0)], repeat: Annotated[int, Query(ge=0)],
                   i: Annotated[int, Query(ge=0, le=1000)]):
        """A web task's screenshot: the file is the one the grader recorded, never a path from
        the URL."""
        row = comparison_or_404(cid)
        run_id = row["candidate_run" if side == "candidate" else "baseline_run"]
        from dsparity.evals.store import SampleKey

        grade = store.grades(run_id).get(SampleKey(task, doc, repeat))
        shots = ((grade or {}).get("details") or {}).get("screenshots") or []
        if i >= len(shots) or not isinstance(shots[i], str):
            raise HTTPException(404, "no such screenshot")
        path = Path(shots[i])
        if path.suffix.lower() not in IMAGE_TYPES or not path.is_file():
            raise HTTPException(404, "screenshot file is gone")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()])

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs_page():
        history = store.job_runs()
        jobs = []
        for j in store.list_jobs():
            runs = [r for r in history if r["job"] == j["name"]]
            jobs.append(j | {"runs": len(runs), "last": runs[-1] if runs else None,
                             "drifts": sum(1 for r in runs if r["drift"]),
                             "failures": sum(1 for r in runs if r["status"] == "failed")})
        return page("jobs.j2.html", jobs=jobs)

    @app.get("/jobs/{name}", response_class=HTMLResponse)
    def job_page(name: JobParam):
        job = next((j for j in store.list_jobs() if j["name"] == name), None)
        if job is None:
            raise HTTPException(404, "no such job")
        history = store.job_runs(name)
        return page("job.j2.html", job=job, history=list(reversed(history)), chart=trend_svg(history))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _secure(HTMLResponse(env.get_template("error.j2.html").render(
            status=exc.status_code, detail=str(exc.detail)), status_code=exc.status_code))

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) for e in exc.errors())
        return _secure(HTMLResponse(env.get_template("error.j2.html").render(
            status=400, detail=f"invalid {fields or 'request'}"), status_code=400))

    return app
