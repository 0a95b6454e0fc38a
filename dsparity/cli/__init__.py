"""The `dsparity` command: one Typer app, commands grouped by concept in this package."""

from __future__ import annotations

import os
import sys

import typer

from dsparity.cli import evaluate, export, jobs, model, serving, tasks  # noqa: F401  (register commands)
from dsparity.cli.base import app, console
from dsparity.errors import DsparityError

__all__ = ["app", "main"]


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from typer.exceptions import TyperException

    from dsparity.kernels import dispatch

    try:
        dispatch.check_env()  # settings read at import: reported here as one line
        code = app(standalone_mode=False)
    except DsparityError as exc:
        _fail(exc.line())
    except typer.Abort:
        _fail("aborted")
    except TyperException as exc:  # bad flags: one line, not the usage box
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx else "dsparity"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if not message:  # no arguments: the help was printed, which is the answer
            sys.exit(0)
        _fail(f"{message} (see `{where} --help`)")
    except KeyboardInterrupt:
        console.print("interrupted: finished samples are stored; re-run the command to resume")
        sys.exit(130)
    except Exception:  # a bug: the traceback still shows, with database passwords and keys masked
        import traceback

        from dsparity.redact import redact

        sys.stderr.write(redact(traceback.format_exc()))
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)

def _fail(line: str) -> None:
    console.print(f"[red]error:[/] {line}", highlight=False, soft_wrap=True, markup=True)
    sys.exit(2)
