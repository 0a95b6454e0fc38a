"""`dsparity serve` under a hostile client: bounded bodies, token budgets, abandoned requests
cancelled, and a shutdown that does not wait forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from loopback import ServerThread, free_port

from dsparity.evals.backends.local import LocalBackend
from dsparity.evals.serving.server import ServeLimits, create_app
from dsparity.evals.specs import parse_spec


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = LocalBackend(parse_spec(f"local:{tiny_model_dir}"))
    b.load()
    return b


@pytest.fixture(scope="module")
def server(backend):
    limits = ServeLimits(max_body_bytes=64 * 1024, max_tokens_cap=1000)
    with ServerThread(create_app(backend, "tiny", limits)) as s:
        yield s


def chat(max_tokens: int, content: str = "Say something.") -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def test_oversized_body_is_refused_without_reading_it_all(server):
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 200_000}]}
    r = httpx.post(f"{server.base_url}/chat/completions", json=big, timeout=30)
    assert r.status_code == 413 and "request body over" in r.text
    # no Content-Length to trust: a chunked body is counted as it arrives
    def chunks():
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 4096
        yield b'"}]}'
    r = httpx.post(f"{server.base_url}/chat/completions", content=chunks(),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_max_tokens_above_the_cap_is_refused(server):
    r = httpx.post(f"{server.base_url}/chat/completions", json=chat(10**9), timeout=30)
    assert r.status_code == 400 and "cap of 1000" in r.text
    r = httpx.post(f"{server.base_url}/completions",
                   json={"model": "tiny", "prompt": "hi", "max_tokens": 10**9}, timeout=30)
    assert r.status_code == 400


def test_prompt_beyond_the_context_is_refused(server, backend):
    context = backend.context_length()
    r = httpx.post(f"{server.base_url}/completions",
                   json={"model": "tiny", "prompt": [65] * (context + 1), "max_tokens": 0}, timeout=60)
    assert r.status_code in (400, 413)  # too many tokens, or a body over the cap on the way there
    r = httpx.post(f"{server.base_url}/completions",
                   json={"model": "tiny", "prompt": [65] * (context - 10), "max_tokens": 100}, timeout=60)
    assert r.status_code == 400 and f"context is {context} tokens" in r.text


def test_an_abandoned_request_is_cancelled(server, backend):
    """The client gives up after a moment: generation stops at its next token instead of running
    all 1000 tokens, so the next request does not queue behind it."""
    finished = []
    original = backend._run_locked

    def spy(requests, cancels):
        out = original(requests, cancels)
        finished.extend(out)
        return out

    backend._run_locked = spy
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base_url}/chat/completions", json=chat(1000), timeout=0.5)
        deadline = time.time() + 120
        while not finished and time.time() < deadline:
            time.sleep(0.1)
        (abandoned,) = finished
        assert abandoned.finish_reason == "cancelled"
        assert abandoned.usage.completion_tokens < 1000
        r = httpx.post(f"{server.base_url}/chat/completions", json=chat(3), timeout=120)
        assert r.status_code == 200
    finally:
        backend._run_locked = original


def test_shutdown_cancels_what_outlives_the_grace_period(tiny_model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dsparity.cli", "serve", "--model", f"local:{tiny_model_dir}",
           "--port", str(port), "--name", "tiny", "--quiet", "--shutdown-timeout", "1",
           "--max-tokens", "15000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        import threading

        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        threading.Thread(target=lambda: httpx.post(url, json=chat(15000), timeout=600), daemon=True).start()
        time.sleep(2)  # generating now
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)  # 15,000 tokens would take far longer: it was cancelled
    finally:
        if proc.poll() is None:
            proc.kill()
