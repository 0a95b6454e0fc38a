"""Pooled keep-alive HTTP for OpenAI-compatible endpoints: JSON in, JSON (or SSE events) out,
and three typed failures the backend classes into its error classes.

The openai client spends about a millisecond of CPU per request on work a harness does not
need (building a request object, an idempotency key from os.urandom, pydantic response models),
more than the loopback round trip itself, and a run sends thousands of small requests. Here one
aiohttp session per endpoint keeps its connections alive, bodies go out as bytes and come back
as plain dicts, as lm-eval's API models do (bench/harness_overhead.py measures both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

ERROR_CHARS = 300  # of a server's error message kept with a StatusError


class StatusError(Exception):
    """The server answered with an HTTP error status."""

    def __init__(self, status: int, retry_after: str | None, message: str):
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status, self.retry_after, self.message = status, retry_after, message


class TimeoutFailure(Exception):
    """No connection, or no bytes, within the timeout."""


class ConnectionFailure(Exception):
    """The connection could not be made, or broke before the answer was complete."""


class JSONEndpoint:
    """One base URL. The session is made on first use, in the loop that uses it (a backend can
    be built outside any loop, then started and used inside one)."""

    def __init__(self, base_url: str, key: str, timeout: float, connections: int):
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:  # no key, no header: a key is only ever sent where a spec names it
            self._headers["Authorization"] = f"Bearer {key}"
        # Per read and per connect, as the openai client's timeout was: a long generation that
        # streams keeps going, a server that says nothing for `timeout` seconds does not.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout,
                                              sock_read=timeout)
        self._connections = max(1, connections)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # Certificates trusted as the openai client trusted them (httpx's context: certifi,
            # or SSL_CERT_FILE / SSL_CERT_DIR when set); plain http needs none.
            tls = httpx.create_ssl_context() if self.base_url.startswith("https:") else True
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, auto_decompress=True,
                connector=aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300, ssl=tls))
            self._loop = loop
        return self._session

    async def get(self, path: str) -> Any:
        async with _failures(), self._open().get(self.base_url + path) as resp:
            return _json(resp, await resp.read())

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST to base URL + path, or to `path` itself when it is a whole URL."""
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        payload = json.dumps(body, ensure_ascii=False).encode()
        async with _failures(), self._open().post(url, data=payload) as resp:
            return _json(resp, await resp.read())

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The `data:` events of a server-sent event stream, up to `[DONE]` or the end."""
        payload = json.dumps(body, ensure_ascii=False).encode()
        async with _failures(), self._open().post(self.base_url + path, data=payload,
                                                  headers={"Accept": "text/event-stream"}) as resp:
            if resp.status >= 400:
                _json(resp, await resp.read())
            async for line in resp.content:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # comments, event names, blank separators
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                yield json.loads(data)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(RuntimeError):  # its loop is gone: nothing left open to close
                await session.close()


def _json(resp: aiohttp.ClientResponse, raw: bytes) -> Any:
    if resp.status >= 400:
        raise StatusError(resp.status, resp.headers.get("retry-after"), _message(raw))
    return json.loads(raw)  # a malformed body raises ValueError: the caller's protocol error


def _message(raw: bytes) -> str:
    """The server's own words about an error (OpenAI shape `{"error": {"message": ...}}`)."""
    try:
        body = json.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        text = error.get("message") if isinstance(error, dict) else error or body.get("detail")
        text = text if isinstance(text, str) else json.dumps(text)
    except (ValueError, AttributeError):
        text = raw.decode("utf-8", "replace")
    return " ".join(text.split())[:ERROR_CHARS]


class _failures:
    """aiohttp's exceptions as the three this module promises (a timeout first: aiohttp's
    timeouts are connection errors too)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            raise TimeoutFailure(str(exc) or "timed out") from None
        if isinstance(exc, aiohttp.ClientError | ConnectionError):
            raise ConnectionFailure(str(exc) or type(exc).__name__) from None
        return False  # anything else (a StatusError, a malformed body) goes on as it is
