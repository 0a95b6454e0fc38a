"""The `openai` backend: any OpenAI-compatible endpoint (DeepSeek API, vLLM, SGLang, dsparity serve)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any
from urllib.parse import urlparse

import openai

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Completion, Request, Usage
from dsparity.evals.specs import ModelSpec

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.concurrency = int(spec.opt("concurrency", 8))
        self.retries = int(spec.opt("retries", 4))
        self.timeout = float(spec.opt("timeout", 120.0))
        self.stream = spec.opt("stream", "false") == "true"
        key_env = str(spec.opt("api_key_env", "OPENAI_API_KEY"))
        self._key = os.environ.get(key_env) or ""
        if not self._key and not _is_loopback(spec.base_url):
            raise DsparityError(f"model spec {spec.text}", "api_key_env",
                                f"environment variable {key_env} is not set",
                                f"export {key_env}=... or name another variable with api_key_env=")
        self.client = openai.AsyncOpenAI(base_url=spec.base_url, api_key=self._key or "EMPTY",
                                         max_retries=0, timeout=self.timeout)
        self.identity: dict[str, Any] = {
            "kind": "openai", "model": spec.name,
            "endpoint": spec.opt("label") or spec.base_url,
            "revision": spec.opt("revision", ""),
        }
        self._slots = asyncio.Semaphore(self.concurrency)

    async def start(self) -> None:
        """Fail fast with one readable line when the URL, key or model name is wrong."""
        where = f"model spec {self.spec.text}"
        try:
            models = await self.client.models.list()
            names = [m.id for m in models.data]
        except openai.AuthenticationError:
            raise DsparityError(where, "api key", "the endpoint rejected the API key",
                                "check the key in the environment variable") from None
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise DsparityError(where, "base URL", f"cannot connect to {self.spec.base_url}",
                                "check that the server is running and the URL is right") from None
        except openai.APIStatusError as exc:
            raise DsparityError(where, "base URL",
                                f"{self.spec.base_url}/models answered HTTP {exc.status_code}",
                                "give the API's base URL (usually ending in /v1)") from None
        if names and self.spec.name not in names:
            raise DsparityError(where, "model", f"{self.spec.name!r} is not served there",
                                f"use one of: {', '.join(names[:10])}")

    async def generate(self, request: Request) -> Completion:
        async with self._slots:
            start = time.perf_counter()
            completion = await self._with_retries(request)
            completion.latency_s = time.perf_counter() - start
            return completion

    async def _with_retries(self, request: Request) -> Completion:
        last = Completion(error="no attempt", error_class="internal")
        for attempt in range(self.retries + 1):
            try:
                return await (self._stream(request) if self.stream else self._once(request))
            except openai.APIStatusError as exc:
                last = self._error(f"HTTP {exc.status_code}", _status_class(exc.status_code))
                if exc.status_code not in RETRYABLE_STATUS:
                    return last
                delay = _retry_after(exc.response) or _backoff(attempt)
            except openai.APITimeoutError:
                last, delay = self._error("timed out", "timeout"), _backoff(attempt)
            except openai.APIConnectionError as exc:
                last, delay = self._error(f"connection: {exc}", "connection"), _backoff(attempt)
            except (ValueError, KeyError, TypeError, openai.APIResponseValidationError) as exc:
                last, delay = self._error(f"malformed response: {exc}", "protocol"), _backoff(attempt)
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

    async def _once(self, request: Request) -> Completion:
        resp = await self.client.chat.completions.create(**self._params(request))
        if not resp.choices:
            return self._error("response had no choices", "protocol")
        choice = resp.choices[0]
        message = choice.message
        return Completion(
            text=message.content or "",
            reasoning=getattr(message, "reasoning_content", None) or "",
            finish_reason=choice.finish_reason,
            usage=_usage(resp.usage),
        )

    async def _stream(self, request: Request) -> Completion:
        stream = await self.client.chat.completions.create(
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
            return self._error("stream ended without a finish reason", "protocol")
        return Completion(text="".join(text), reasoning="".join(reasoning), finish_reason=finish,
                          usage=usage)

    async def close(self) -> None:
        await self.client.close()


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
    return min(max(value, 0.0), 60.0)


def _backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2)


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
