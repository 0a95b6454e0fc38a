"""The default baseline: the dense embedded model behind `dsparity serve` on a free loopback port,
started and stopped around a comparison (so the default run exercises the OpenAI-API path)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

from dsparity.errors import DsparityError
from dsparity.evals.specs import SERVED_DEFAULT_LABEL
from dsparity.model.loading import DEFAULT_MODEL


@contextlib.contextmanager
def served_default(log=print):
    """Serve the dense default model on a free loopback port for the duration of a compare;
    yields the baseline's spec."""
    from dsparity.evals.specs import parse_spec
    from dsparity.model.loading import EMBEDDED, ensure_embedded

    ensure_embedded(DEFAULT_MODEL, log)  # in this process, so a first use shows what it is doing
    port = free_port()
    # No cap on new tokens below the model's context: the candidate, run in-process, gets all of
    # it (the runner cuts a request to context - prompt), and the baseline must get the same.
    cmd = [sys.executable, "-m", "dsparity.cli", "serve", "--model", f"local:{DEFAULT_MODEL}",
           "--port", str(port), "--name", DEFAULT_MODEL, "--quiet", "--max-tokens", str(2**30)]
    log(f"baseline server: dsparity serve on 127.0.0.1:{port}")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        wait_healthy(proc, port)
        revision = EMBEDDED[DEFAULT_MODEL].sha256[:16]
        yield parse_spec(f"openai:{DEFAULT_MODEL}@http://127.0.0.1:{port}/v1?label={SERVED_DEFAULT_LABEL}"
                         f"&revision={revision}&concurrency=1&timeout=600")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 600) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise DsparityError("dsparity serve", "baseline server", f"exited with code {proc.returncode}",
                                "see its output above")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json().get("status") == "ok":
                return
        time.sleep(0.5)
    raise DsparityError("dsparity serve", "baseline server", "did not become healthy in time", "")
