"""The `openai` backend: any OpenAI-compatible endpoint (DeepSeek API, vLLM, SGLang, `dsparity serve`).

Bounded concurrency; retries with exponential backoff on 429, 5xx and network faults, honouring
Retry-After and pausing every worker after a 429; no retry of other 4xx; optional request and
token rate limits; several base URLs (replicas) with each request sent to the least busy one.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any
from urllib.parse import urlparse

import openai
from openai.types.chat import ChatCompletion

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Completion, Request, Usage
from dsparity.evals.backends.limits import CoolDown, RateLimiter
from dsparity.evals.specs import ModelSpec

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 120.0


class _Replica:
    def __init__(self, url: str, key: str, timeout: float):
        self.url = url
        # aiohttp as the transport: several times less client overhead per request than the
        # default httpx one at high concurrency (measured by bench/harness_overhead.py).
        self.client = openai.AsyncOpenAI(base_url=url, api_key=key or "EMPTY", max_retries=0,
                                         timeout=timeout, http_client=openai.DefaultAioHttpClient())
        self.in_flight = 0
        self.sent = 0


class OpenAIBackend:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.concurrency = int(spec.opt("concurrency", 8))
        self.retries = int(spec.opt("retries", 4))
        self.timeout = float(spec.opt("timeout", 300.0))
        self.stream = spec.opt("stream", "false") == "true"
        urls = [u.strip().rstrip("/") for u in (spec.base_url or "").split(",") if u.strip()]
        key_env = str(spec.opt("api_key_env", "OPENAI_API_KEY"))
        self._key = os.environ.get(key_env) or ""
        if not self._key and not all(_is_loopback(u) for u in urls):
            raise DsparityError(f"model spec {spec.text}", "api_key_env",
                                f"environment variable {key_env} is not set",
                                f"export {key_env}=... or name another variable with api_key_env=")
        self.replicas = [_Replica(u, self._key, self.timeout) for u in urls]
        self.identity: dict[str, Any] = {
            "kind": "openai", "model": spec.name,
            "endpoint": spec.opt("label") or ",".join(sorted(urls)),
            "revision": spec.opt("revision", ""),
        }
        self._slots = asyncio.Semaphore(self.concurrency)
        self._limiter = RateLimiter(spec.opt("rpm"), spec.opt("tpm"))
        self._cool_down = CoolDown()
        self.attempts = 0  # requests actually put on the wire (all replicas, all retries)

    async def start(self) -> None:
        try:
            for replica in self.replicas:
                await self._preflight(replica)
        except BaseException:
            await self.close()  # the caller never gets a usable backend to close
            raise

    async def _preflight(self, replica: _Replica) -> None:
        """Fail fast with one readable line when the URL, key or model name is wrong."""
        where = f"model spec {self.spec.text}"
        try:
            models = await replica.client.models.list()
            names = [m.id for m in models.data]
        except openai.AuthenticationError:
            raise DsparityError(where, "api key", f"{replica.url} rejected the API key",
                                "check the key in the environment variable") from None
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise DsparityError(where, "base URL", f"cannot connect to {replica.url}",
                                "check that the server is running and the URL is right") from None
        except openai.APIStatusError as exc:
            raise DsparityError(where, "base URL", f"{replica.url}/models answered HTTP {exc.status_code}",
                                "give the API's base URL (usually ending in /v1)") from None
        if names and self.spec.name not in names:
            raise DsparityError(where, "model", f"{self.spec.name!r} is not served at {replica.url}",
                                f"use one of: {', '.join(names[:10])}")

    async def generate(self, request: Request) -> Completion:
        async with self._slots:
            start = time.perf_counter()
            completion = await self._with_retries(request)
            completion.latency_s = time.perf_counter() - start
            return completion

    async def _with_retries(self, request: Request) -> Completion:
        last = Completion(error="no attempt", error_class="internal")
        estimate = sum(len(c) for _, c in request.messages) // 4 + request.max_tokens
        for attempt in range(self.retries + 1):
            await self._cool_down.wait()
            await self._limiter.acquire(estimate)
            replica = min(self.replicas, key=lambda r: (r.in_flight, r.sent))  # least busy, then least used
            replica.in_flight += 1
            replica.sent += 1
            self.attempts += 1
            delay = _backoff(attempt)
            try:
                return await (self._stream(replica, request) if self.stream
                              else self._once(replica, request))
            except openai.APIStatusError as exc:
                last = self._error(f"HTTP {exc.status_code} from {replica.url}",
                                   _status_class(exc.status_code))
                if exc.status_code not in RETRYABLE_STATUS:
                    return last
                if (after := _retry_after(exc.response)) is not None:
                    delay = after
                if exc.status_code == 429:
                    self._cool_down.push(delay)
            except openai.APITimeoutError:
                last = self._error(f"timed out after {self.timeout:g} s at {replica.url}", "timeout")
            except openai.APIConnectionError as exc:
                last = self._error(f"connection to {replica.url} failed: {exc}", "connection")
            except (ValueError, KeyError, TypeError, AttributeError,
                    openai.APIResponseValidationError) as exc:
                last = self._error(f"malformed response from {replica.url}: {exc}", "protocol")
            except _Incomplete as exc:
                last = self._error(f"{exc} from {replica.url}", "protocol")
            finally:
                replica.in_flight -= 1
            if attempt < self.retries:
                await asyncio.sleep(delay)
        return last

    def _error(self, message: str, error_class: str) -> Completion:
        if self._key:
            message = message.replace(self._key, "***")
        return Completion(error=message, error_class=error_class)

    def _params(self, request: Request) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.spec.name,
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            params["seed"] = request.seed
        if request.stop:
            params["stop"] = list(request.stop)[:4]  # the OpenAI API accepts at most four
        return params

    async def _once(self, replica: _Replica, request: Request) -> Completion:
        # `post` is the client's public low-level call: the same request and the same typed
        # response as `chat.completions.create`, without re-validating a body we built ourselves
        # (a third of the client's time per request at high concurrency).
        resp = await replica.client.post("/chat/completions", body=self._params(request),
                                         cast_to=ChatCompletion)
        if not resp.choices:
            raise _Incomplete("response had no choices")
        choice = resp.choices[0]
        message = choice.message
        text, reasoning = message.content, getattr(message, "reasoning_content", None)
        if text is None and not reasoning:
            raise _Incomplete("response had neither content nor reasoning")
        return Completion(text=text or "", reasoning=reasoning or "",
                          finish_reason=choice.finish_reason, usage=_usage(resp.usage))

    async def _stream(self, replica: _Replica, request: Request) -> Completion:
        stream = await replica.client.chat.completions.create(
            **self._params(request), stream=True, stream_options={"include_usage": True})
        text, reasoning, finish, usage = [], [], None, Usage()
        async for chunk in stream:
            if chunk.usage:
                usage = _usage(chunk.usage)
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                if part := getattr(choice.delta, "reasoning_content", None):
                    reasoning.append(part)
                finish = choice.finish_reason or finish
        if finish is None:
            raise _Incomplete("stream ended without a finish reason")
        return Completion(text="".join(text), reasoning="".join(reasoning), finish_reason=finish,
                          usage=usage)

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.client.close()


class _Incomplete(Exception):
    """A 200 answer that carries no usable completion (retried like a server fault)."""


def _usage(u) -> Usage:
    if u is None:
        return Usage()
    details = getattr(u, "completion_tokens_details", None)
    extra = getattr(u, "model_extra", None) or {}
    return Usage(
        prompt_tokens=u.prompt_tokens or 0,
        completion_tokens=u.completion_tokens or 0,
        reasoning_tokens=(getattr(details, "reasoning_tokens", 0) or 0) if details else 0,
        cache_hit_tokens=int(extra.get("prompt_cache_hit_tokens") or 0),
        cache_miss_tokens=int(extra.get("prompt_cache_miss_tokens") or 0),
    )


def _status_class(status: int) -> str:
    if status == 429:
        return "rate_limit"
    return "server_error" if status >= 500 else "client_error"


def _retry_after(response) -> float | None:
    try:
        value = float(response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_S)


def _backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2)


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
