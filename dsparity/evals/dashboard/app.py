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
from markupsafe import Markup
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from dsparity.evals.dashboard import queries
from dsparity.evals.dashboard.views import (
    DIFF_CHARS,
    DIFF_WORK,
    FILTERS,
    PAGE_DIFF_WORK,
    RUN_FILTERS,
    filter_rows,
    filter_run_rows,
    pair_index,
    run_index,
    run_page_rows,
    trend_svg,
    with_texts,
    word_diff,
)
from dsparity.evals.report import _env as report_env
from dsparity.evals.report import reproduce_command
from dsparity.evals.report.charts import forest_plot_svg
from dsparity.evals.storage.store import Store
from dsparity.redact import redact

STATIC = Path(__file__).parent / "static"
REPORT_CSS = Path(__file__).parent.parent / "report" / "templates" / "parts" / "style.css"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
IdParam = Annotated[str, PathParam(pattern=r"^[0-9a-f]{4,32}$")]
JobParam = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")]
ShortText = Annotated[str, Query(max_length=200)]
PageNo = Annotated[int, Query(ge=1, le=1_000_000)]
SHOWN_CHARS = DIFF_CHARS  # of each answer and reasoning read for a samples page (4,000 are shown)
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


def _redacted(value: Any) -> Any:
    """Every value a page prints passes here (jinja's finalize): a database URL or key stored
    by an older dsparity, or echoed into an error, shows masked."""
    if isinstance(value, Markup):
        return Markup(redact(str(value)))
    return redact(value) if isinstance(value, str) else value


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
    env.finalize = _redacted
    # A text read cut (queries.sample_rows) knows its full length: say how much is not shown.
    env.filters["clip_of"] = lambda s, total, n: s[:n] + (f"… [{total - n} more chars]" if total > n else "")

    verdicts: dict[str, str | None] = {}  # comparison id -> overall verdict (results never change)

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=status)

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
              until: ShortText = "", cpage: PageNo = 1, rpage: PageNo = 1):
        """One page of comparisons and one of runs, newest first, filtered inside the database."""
        lo, hi = _date(since, "since"), _date(until, "until", end=True)
        f = {"model": model, "suite": suite, "job": job, "since": since, "until": until}
        comparisons = queries.comparisons_page(store, model=model, suite=suite, job=job, lo=lo, hi=hi,
                                               number=cpage, verdicts=verdicts)
        runs = queries.runs_page(store, model=model, suite=suite, job=job, lo=lo, hi=hi, number=rpage)
        suites, jobs = queries.suites_and_jobs(store)
        return page("index.j2.html", comparisons=comparisons, runs=runs, f=f, suites=suites, jobs=jobs,
                    pages={"cpage": cpage, "rpage": rpage})

    def run_or_404(run_id: str) -> dict[str, Any]:
        try:
            return store.run(run_id)
        except Exception:
            raise HTTPException(404, "no such run") from None

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: IdParam):
        run = run_or_404(run_id)
        per_task, errors = queries.run_figures(store, run["id"])
        return page("run.j2.html", run=run, errors=errors, per_task=per_task)

    @app.get("/runs/{run_id}/samples", response_class=HTMLResponse)
    def run_samples_page(run_id: IdParam, filter: ShortText = "all", task: ShortText = "", q: ShortText = "",
                         page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1):
        """One run's samples a page at a time: filters over light columns, search inside the
        database, texts read (and cut) for the page's rows only."""
        if filter not in RUN_FILTERS:
            raise HTTPException(400, f"filter: expected one of {', '.join(RUN_FILTERS)}")
        run = run_or_404(run_id)
        index = run_index(store, run["id"])
        matching = queries.search(store, [run["id"]], q) if q else None
        shown = filter_run_rows(index, kind=filter, task=task, matching=matching)
        size = queries.SAMPLE_ROWS
        pages = max(1, math.ceil(len(shown) / size))
        rows = run_page_rows(store, run["id"], shown[(page_no - 1) * size: page_no * size], SHOWN_CHARS)
        counts = {k: len(filter_run_rows(index, kind=k, task="")) for k in RUN_FILTERS}
        return page("run_samples.j2.html", run=run, rows=rows, total=len(shown), counts=counts,
                    tasks=sorted({r["task"] for r in index}), page_no=page_no, pages=pages,
                    f={"filter": filter, "task": task, "q": q})

    def comparison_or_404(cid: str) -> dict[str, Any]:
        row = store.comparison(cid)
        if row is None:
            raise HTTPException(404, "no such comparison")
        return row

    @app.get("/comparisons/{cid}", response_class=HTMLResponse)
    def comparison_page(cid: IdParam):
        row = comparison_or_404(cid)
        c = row["result"]
        return page("comparison.j2.html", c=c, cid=cid, job=queries.job_of(store, cid),
                    reproduce=reproduce_command(c), forest_svg=forest_plot_svg(c["tasks"], c["margin"]))

    @app.get("/comparisons/{cid}/samples", response_class=HTMLResponse)
    def samples_page(cid: IdParam, filter: ShortText = "all", task: ShortText = "", grader: ShortText = "",
                     q: ShortText = "", page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1):
        """Filters and search run over light columns (or inside the database); texts are read for
        the page's rows only, and the page's word diffs share one work budget."""
        if filter not in FILTERS:
            raise HTTPException(400, f"filter: expected one of {', '.join(FILTERS)}")
        row = queries.comparison_head(store, cid)  # not the result: it can hold megabytes of answers
        if row is None:
            raise HTTPException(404, "no such comparison")
        cand, base = row["candidate_run"], row["baseline_run"]
        index = pair_index(store, cand, base)
        tasks, graders = sorted({r["task"] for r in index}), sorted({r["grader"] for r in index})
        matching = queries.search(store, [store.run(cand)["id"], store.run(base)["id"]], q) if q else None
        shown = filter_rows(index, kind=filter, task=task, grader=grader, matching=matching)
        size = queries.SAMPLE_ROWS
        pages = max(1, math.ceil(len(shown) / size))
        chunk = with_texts(store, cand, base, shown[(page_no - 1) * size: page_no * size], chars=SHOWN_CHARS)
        left = PAGE_DIFF_WORK
        for r in chunk:
            if r["disagreement"] and r["candidate"] and r["baseline"]:  # the page shows diffs there only
                c, b = r["candidate"], r["baseline"]
                r["diff"] = word_diff(c["text"], b["text"], budget=max(0, min(DIFF_WORK, left)))
                r["diff"].clipped |= any(x["text_chars"] > len(x["text"]) for x in (c, b))  # cut when read
                left -= r["diff"].work
        counts = {k: len(filter_rows(index, kind=k, task="", grader="")) for k in FILTERS}
        return page("samples.j2.html", c=row, cid=cid, rows=chunk, total=len(shown),
                    counts=counts, tasks=tasks, graders=graders, page_no=page_no, pages=pages,
                    diff_chars=DIFF_CHARS, f={"filter": filter, "task": task, "grader": grader, "q": q})

    @app.get("/comparisons/{cid}/shot")
    def screenshot(cid: IdParam, side: Annotated[str, Query(pattern="^(candidate|baseline)$")],
                   task: ShortText, doc: Annotated[int, Query(ge=0)], repeat: Annotated[int, Query(ge=0)],
                   i: Annotated[int, Query(ge=0, le=1000)]):
        """A web task's screenshot: the file is the one the grader recorded, never a path from
        the URL."""
        row = queries.comparison_head(store, cid)
        if row is None:
            raise HTTPException(404, "no such comparison")
        run_id = row["candidate_run" if side == "candidate" else "baseline_run"]
        shots = queries.grade_details(store, run_id, task, doc, repeat).get("screenshots") or []
        if i >= len(shots) or not isinstance(shots[i], str):
            raise HTTPException(404, "no such screenshot")
        path = Path(shots[i])
        if path.suffix.lower() not in IMAGE_TYPES or not path.is_file():
            raise HTTPException(404, "screenshot file is gone")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()])

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs_page():
        return page("jobs.j2.html", jobs=queries.jobs_overview(store))

    @app.get("/jobs/{name}", response_class=HTMLResponse)
    def job_page(name: JobParam, page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1):
        """The trend and history of one page of runs (the newest first)."""
        job = next((j for j in store.list_jobs() if j["name"] == name), None)
        if job is None:
            raise HTTPException(404, "no such job")
        history = queries.job_history(store, name, page_no)
        return page("job.j2.html", job=job, history=list(reversed(history.rows)),
                    chart=trend_svg(history.rows), page_no=page_no, pages=history.pages, total=history.total)

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
