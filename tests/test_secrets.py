"""Secrets stay secret: a database password and API keys never reach the screen, log records,
the results database, reports, webhook bodies or dashboard pages, for failing and succeeding
commands; and an API key goes only to the endpoint its spec names it for.

The commands run in-process through `dsparity.cli.main` with a real argv (provenance records
argv), so caplog sees every log record, dsparity's and its libraries' (httpx logs each request
URL). PostgreSQL legs need $DSPARITY_TEST_PG_URL; the server there accepts any password.
"""

from __future__ import annotations

import logging
import sys

import httpx
import pytest
from fastapi import FastAPI, Request
from loopback import ServerThread, free_port, scripted_app
from sqlalchemy import create_engine, text
from task_folders import make_suite
from test_store_pg import PG_URL, _make_v1, needs_pg, pg_url  # noqa: F401 - fixture

from dsparity.cli import main
from dsparity.evals.backends.openai_api import OpenAIBackend
from dsparity.evals.dashboard import create_app
from dsparity.evals.specs import parse_spec
from dsparity.evals.storage.store import Store, metadata

KEY = "sk-FAKE-key-5d1e9b3c7a2f"  # the key a spec names (api_key_env=DSP_TEST_KEY)
AMBIENT = "sk-FAKE-ambient-8e4a6c2b0d"  # OPENAI_API_KEY, set for some other provider
PW = "pwFAKEdb-3b8f2e6a9c"  # the database password
HOOK_TOKEN = "T0FAKE-hook-4c9e1a7b"  # a webhook URL is a bearer credential too
SECRETS = (KEY, AMBIENT, PW, HOOK_TOKEN)


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def right(prompt: str) -> str:
    return "42"


def recording(app: FastAPI) -> FastAPI:
    """Keep every request's headers: what an endpoint (or an attacker behind it) receives."""
    app.state.headers = []

    @app.middleware("http")
    async def keep(request: Request, call_next):
        app.state.headers.append(dict(request.headers))
        return await call_next(request)

    return app


def echoing() -> FastAPI:
    """An endpoint that echoes the Authorization header it got as its model names: a hostile or
    buggy server puts the key into the error line a preflight prints."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models(request: Request):
        said = request.headers.get("authorization", "")
        return {"object": "list", "data": [{"id": said, "object": "model", "owned_by": said}]}

    return app


def hook_app() -> FastAPI:
    app = FastAPI()
    app.state.bodies = []

    @app.post("/hook/{token}")
    async def receive(token: str, request: Request):
        app.state.bodies.append((await request.body()).decode())
        return {"ok": True}

    return app


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """`dsparity ARGV` in this process, as the shell would run it: (exit code, stdout + stderr)."""
    saved = sys.argv
    sys.argv = ["dsparity", *argv]
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out + out.err


def dump(url: str) -> str:
    """Every row of every table of the store, as text."""
    engine = create_engine(url)
    with engine.connect() as c:
        text_ = "\n".join(str(tuple(row)) for table in metadata.sorted_tables
                          for row in c.execute(table.select()))
    engine.dispose()
    return text_


def pages(store_url: str, paths: list[str]) -> str:
    with ServerThread(create_app(store_url)) as server:
        got = [httpx.get(f"http://127.0.0.1:{server.port}{p}", timeout=30) for p in paths]
    statuses = {p: r.status_code for p, r in zip(paths, got, strict=True)}
    assert set(statuses.values()) == {200}, statuses
    return "\n".join(r.text for r in got)


def with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:{PW}@{host}"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("DSP_TEST_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", AMBIENT)
    monkeypatch.setenv("COLUMNS", "300")


def test_database_urls_with_passwords_fail_without_printing_them(tmp_path, capsys, caplog, env):
    caplog.set_level(logging.DEBUG)
    closed = free_port()
    urls = [f"postgresql+psycopg://u:{PW}@127.0.0.1:{closed}/db",  # nothing listens there
            f"postgresql+nodriver://u:{PW}@127.0.0.1/db",  # no such driver
            f"postgresql+psycopg://u:{PW}@127.0.0.1:{closed}/db?password={PW}",
            f"postgresql+psycopg://u:{PW}@127.0.0.1:{closed}"]  # no database name
    if PG_URL:
        urls.append(with_password(PG_URL.rsplit("/", 1)[0] + "/no_such_database"))
    for url in urls:
        for argv in (["runs", "--db", url], ["report", "abc", "def", "--db", url],
                     ["grade", "abc", "--db", url]):
            code, output = cli(argv, capsys)
            assert code == 2 and output.startswith("error:") and "127.0.0.1" in output, (argv, output)
            assert leaks(output) == [], (argv, output)
    assert leaks(caplog.text) == [], caplog.text


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_succeeding_and_failing_commands_keep_every_secret_out(tmp_path, capsys, caplog, env, backend,
                                                               request, monkeypatch):
    caplog.set_level(logging.DEBUG)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.db'}"
    else:
        url = with_password(request.getfixturevalue("pg_url"))
        _make_v1(url)  # an older store: opening it logs a migration line naming the database
    tasks = make_suite(tmp_path / "tasks" / "bulk", 4)
    hook = hook_app()
    cand_app, base_app = recording(scripted_app(right)), recording(scripted_app(lambda p: "41"))
    with ServerThread(cand_app) as cand, ServerThread(base_app) as base, \
            ServerThread(echoing()) as echo, ServerThread(hook) as hook_server:
        monkeypatch.setenv("DSP_TEST_HOOK", f"http://127.0.0.1:{hook_server.port}/hook/{HOOK_TOKEN}")
        cand_spec = f"openai:scripted@{cand.base_url}?label=cand&api_key_env=DSP_TEST_KEY"
        base_spec = f"openai:scripted@{base.base_url}?label=base&api_key_env=DSP_TEST_KEY"
        common = ["--db", url, "--include", str(tasks), "--tasks", "bulk"]
        code, output = cli(["compare", "--candidate", cand_spec, "--baseline", base_spec, *common,
                            "--out", str(tmp_path / "reports")], capsys)
        assert code == 0, output
        code, listing = cli(["runs", "--db", url], capsys)
        assert code == 0 and "cand" in listing, listing
        output += listing
        # a job that fails: its candidate echoes the key into the preflight's error line, which
        # becomes the job's cause, its log line, its webhook body and its dashboard row
        job = tmp_path / "jobs" / "nightly.yaml"
        job.parent.mkdir()
        job.write_text(f"""name: nightly
candidate: "openai:scripted@{echo.base_url}?label=echo&api_key_env=DSP_TEST_KEY"
baseline: "{base_spec}"
tasks: [bulk]
include: [{tasks}]
alerts:
  webhook_env: DSP_TEST_HOOK
""")
        code, failed = cli(["jobs", "run", str(job), "--db", url, "--quiet"], capsys)
        output += failed
        assert code == 4 and "is not served" in failed, failed
    assert len(hook.state.bodies) == 1 and "is not served" in hook.state.bodies[0]  # the alert went out
    assert {h["authorization"] for h in cand_app.state.headers} == {f"Bearer {KEY}"}  # the named key went
    store = Store(url)
    (comparison,) = store.list_comparisons()
    (job_run,) = store.job_runs("nightly")
    assert job_run["status"] == "failed"
    shown = pages(url, ["/", "/jobs", "/jobs/nightly", f"/comparisons/{comparison['id']}",
                        f"/comparisons/{comparison['id']}/samples",
                        *[f"/runs/{r['id']}" for r in store.list_runs()]])
    reports = "\n".join(p.read_bytes().decode(errors="replace") for p in (tmp_path / "reports").iterdir())
    assert "--db" in dump(url) and "cand" in shown and "cand" in reports  # argv and labels are kept...
    for where, text_ in (("output", output), ("log records", caplog.text), ("database", dump(url)),
                         ("reports", reports), ("webhook", "\n".join(hook.state.bodies)),
                         ("dashboard", shown)):
        assert leaks(text_) == [], (where, leaks(text_))  # ...their secrets are not


def test_an_ambient_key_never_reaches_an_endpoint_its_spec_does_not_name(tmp_path, capsys, env):
    tasks = make_suite(tmp_path / "tasks" / "bulk", 3)
    attacker, named = recording(scripted_app(right)), recording(scripted_app(right))
    with ServerThread(attacker) as evil, ServerThread(named) as good:
        db = ["--db", f"sqlite:///{tmp_path / 'r.db'}", "--include", str(tasks), "--tasks", "bulk"]
        code, output = cli(["run", "--model", f"openai:scripted@{evil.base_url}", *db], capsys)
        assert code == 0, output
        # the README's job example: a baseline and a judge that name no api_key_env
        job = tmp_path / "job.yaml"
        job.write_text(f"""name: readme
candidate: "openai:scripted@{good.base_url}?label=v3.2&api_key_env=DSP_TEST_KEY"
baseline: "openai:scripted@{evil.base_url}?label=v3.1"
tasks: [bulk]
include: [{tasks}]
""")
        code, output = cli(["jobs", "run", str(job), "--db", f"sqlite:///{tmp_path / 'r.db'}", "--quiet"],
                           capsys)
        assert code == 0, output
    assert len(attacker.state.headers) >= 8  # preflights and answers: it was asked
    received = "\n".join(str(h) for h in attacker.state.headers)
    assert AMBIENT not in received and KEY not in received
    assert {h["authorization"] for h in named.state.headers} == {f"Bearer {KEY}"}  # a named key goes


@pytest.mark.parametrize(("base_url", "key"), [
    ("https://api.openai.com/v1", AMBIENT),  # OpenAI's own API over https: its own key
    ("http://api.openai.com/v1", ""),  # not over plain http
    ("https://api.openai.com.evil.example/v1", ""),
    ("https://api.deepseek.com", ""),  # another provider: name its variable
    ("http://127.0.0.1:9/v1", ""),
    ("https://api.deepseek.com?api_key_env=DSP_TEST_KEY", KEY),
    ("http://10.0.0.5:8000/v1?api_key_env=DSP_TEST_KEY", KEY),  # named: sent as asked
])
def test_which_endpoint_gets_which_key(env, base_url, key):
    backend = OpenAIBackend(parse_spec(f"openai:m@{base_url}"))
    assert backend._key == key


def test_a_named_variable_that_is_unset_fails_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DSP_TEST_UNSET", raising=False)
    code, output = cli(["run", "--model", "openai:m@https://api.example.invalid/v1?api_key_env=DSP_TEST_UNSET",
                        "--db", f"sqlite:///{tmp_path / 'r.db'}"], capsys)
    assert code == 2 and "DSP_TEST_UNSET is not set" in output and output.count("\n") == 1, output
    assert not (tmp_path / "r.db").exists()


def test_a_server_that_wants_a_key_the_spec_does_not_name_says_how_to_name_it(env, capsys, tmp_path):
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": {"message": "no key"}}, status_code=401)

    with ServerThread(app) as server:
        code, output = cli(["run", "--model", f"openai:m@{server.base_url}", "--db",
                            f"sqlite:///{tmp_path / 'r.db'}", "--tasks", "smoke_arithmetic"], capsys)
    assert code == 2 and "api_key_env=NAME" in output and "sends none" in output, output


def test_a_key_an_endpoint_echoes_into_its_answers_is_never_stored_or_reported(env, capsys, tmp_path):
    """A buggy or hostile endpoint answers with the Authorization header it received: the answer
    is stored and reported with the key masked (and scored as the wrong answer it is)."""
    said = recording(scripted_app(right))
    app = scripted_app(lambda prompt: "42")

    @app.middleware("http")
    async def echo_key(request: Request, call_next):
        response = await call_next(request)
        if request.url.path.endswith("/chat/completions"):
            from fastapi.responses import JSONResponse

            key = request.headers.get("authorization", "")
            return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                     "role": "assistant", "content": f"42 (you sent {key})",
                                     "reasoning_content": f"the header was {key}"}}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})
        return response

    url = f"sqlite:///{tmp_path / 'r.db'}"
    tasks = make_suite(tmp_path / "tasks" / "bulk", 3)
    with ServerThread(app) as echo, ServerThread(said) as base:
        code, output = cli(["compare", "--candidate", f"openai:scripted@{echo.base_url}?label=echo&"
                            "api_key_env=DSP_TEST_KEY", "--baseline", f"openai:scripted@{base.base_url}"
                            "?label=base&api_key_env=DSP_TEST_KEY", "--db", url, "--include", str(tasks),
                            "--tasks", "bulk", "--out", str(tmp_path / "reports")], capsys)
    assert code == 0, output
    stored = dump(url)
    reports = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "reports").iterdir())
    assert "you sent Bearer ***" in stored and "the header was Bearer ***" in stored  # the answer is kept
    assert leaks(stored) == [] and leaks(reports) == [] and leaks(output) == []


def test_migration_log_lines_name_the_database_without_its_password(caplog, request):
    if not PG_URL:
        pytest.skip("DSPARITY_TEST_PG_URL is not set: no PostgreSQL server")
    url = with_password(request.getfixturevalue("pg_url"))
    _make_v1(url)
    caplog.set_level(logging.INFO, logger="dsparity.store")
    Store(url)
    migrating = [r.getMessage() for r in caplog.records if "migrating" in r.getMessage()]
    assert migrating and all("127.0.0.1" in m and PW not in m for m in migrating), migrating


def test_a_traceback_of_an_unexpected_error_is_masked_too(capsys, monkeypatch, tmp_path):
    """A bug's traceback still shows, with the database password masked."""
    import dsparity.cli.evaluate as evaluate

    def broken(db):
        raise RuntimeError(f"unexpected trouble with {db}")

    monkeypatch.setattr(evaluate, "existing_store", broken)
    code, output = cli(["runs", "--db", f"postgresql+psycopg://u:{PW}@127.0.0.1/db"], capsys)
    assert code == 1 and "RuntimeError: unexpected trouble with" in output and "Traceback" in output
    assert PW not in output


def test_redact_masks_url_passwords_and_registered_values():
    from dsparity.redact import MASK, redact, secret

    secret("a-registered-value-91")
    cases = {
        f"postgresql+psycopg://u:{PW}@h:5432/db": f"postgresql+psycopg://u:{MASK}@h:5432/db",
        f"see mysql://root:{PW}@db/x and more": f"see mysql://root:{MASK}@db/x and more",
        f"postgresql://u@h/db?sslmode=require&password={PW}": f"postgresql://u@h/db?sslmode=require&password={MASK}",
        "key a-registered-value-91 echoed": f"key {MASK} echoed",
        "http://127.0.0.1:8000/v1 and user@example.com": "http://127.0.0.1:8000/v1 and user@example.com",
        "openai:m@http://h/v1?api_key_env=X": "openai:m@http://h/v1?api_key_env=X",
    }
    for raw, masked in cases.items():
        assert redact(raw) == masked
    assert redact("short") == "short"


def test_an_old_store_with_a_password_in_its_provenance_shows_it_masked(tmp_path):
    """Runs written before the fix keep argv as it was typed: pages mask it when they show it."""
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.find_or_create_run("k", model_spec="openai:m@http://x/v1", label="old", identity={}, suite="s",
                             tasks={}, settings={}, provenance={"argv": ["dsparity", "--db",
                                                                         f"postgresql://u:{PW}@h/db"]})
    with store.engine.begin() as c:
        assert PW in str(c.execute(text("SELECT provenance FROM runs")).all())
    (run,) = store.list_runs()
    shown = pages(f"sqlite:///{tmp_path / 'r.db'}", [f"/runs/{run['id']}"])
    assert "postgresql://u:***@h/db" in shown and PW not in shown
