"""`dsparity serve` (OpenAI-compatible server) and `dsparity dashboard` (results browser)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from dsparity.cli.base import (
    Db,
    app,
    console,
    existing_store,
)
from dsparity.errors import DsparityError
from dsparity.model.loading import DEFAULT_MODEL


@app.command()
def serve(
    model: Annotated[str, typer.Option("--model", help="Local model spec")] = f"local:{DEFAULT_MODEL}",
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    name: Annotated[str | None, typer.Option(help="Model id clients use [default: the spec]")] = None,
    quiet: Annotated[bool, typer.Option(help="No access log")] = False,
    max_tokens: Annotated[int, typer.Option(
        min=1, help="Cap on new tokens per request (a completions request's prompts together)")] = 4096,
    max_prompts: Annotated[int, typer.Option(
        min=1, help="Most prompts in one /v1/completions request")] = 256,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body, MiB")] = 4.0,
    shutdown_timeout: Annotated[float, typer.Option(
        min=0.0, help="On SIGTERM, seconds to finish requests in flight before cancelling them")] = 30.0,
) -> None:
    """Serve a local model over the OpenAI API (chat and legacy completions with log-probs)."""
    import uvicorn

    from dsparity.evals.backends.local import LocalBackend
    from dsparity.evals.serving.server import ServeLimits, create_app
    from dsparity.evals.specs import parse_spec

    spec = parse_spec(model, source="--model")
    if spec.kind != "local":
        raise DsparityError("--model", model, "serve needs a local: model",
                            "e.g. local:smollm2-135m-instruct")
    backend = LocalBackend(spec)
    backend.load()
    console.print(f"serving {spec.text} as {name or spec.text!r} on http://{host}:{port}/v1")
    limits = ServeLimits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_tokens_cap=max_tokens,
                         max_prompts=max_prompts, shutdown_s=shutdown_timeout)
    uvicorn.run(create_app(backend, name or spec.text, limits), host=host, port=port,
                log_level="warning" if quiet else "info", access_log=not quiet,
                timeout_graceful_shutdown=shutdown_timeout)

@app.command()
def dashboard(
    db: Db = None,
    host: Annotated[str, typer.Option(help="Bind address (anything but loopback needs a token)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8765,
    token_env: Annotated[str, typer.Option(
        help="Environment variable holding the access token")] = "DSPARITY_DASHBOARD_TOKEN",
) -> None:
    """Browse runs, comparisons, samples and job trends in a browser (read-only)."""
    import uvicorn

    from dsparity.evals.dashboard import create_app, is_loopback
    from dsparity.redact import secret

    token = secret(os.environ.get(token_env) or None)  # masked wherever it could show (a log line)
    if not is_loopback(host) and not token:
        raise DsparityError("--host", host, f"binding beyond loopback needs a token in ${token_env}",
                            f"export {token_env}=<a long random string>, or bind 127.0.0.1")
    from sqlalchemy.engine import make_url

    store = existing_store(db)
    shown = make_url(store.url).render_as_string(hide_password=True)  # never print a password
    console.print(f"dsparity dashboard on http://{host}:{port}/ over {shown}"
                  + (" (token required)" if token else ""), soft_wrap=True)
    uvicorn.run(create_app(store, token=token), host=host, port=port, log_level="warning")
