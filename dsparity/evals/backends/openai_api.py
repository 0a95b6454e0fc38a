"""The `openai` backend: any OpenAI-compatible endpoint (DeepSeek API, vLLM, SGLang, `dsparity serve`).

Bounded concurrency; retries with exponential backoff on 429, 5xx and network faults, honouring
Retry-After and pausing every worker after a 429; no retry of other 4xx; optional request and
token rate limits; several base URLs (replicas) with each request sent to the least busy one;
HTTP over pooled keep-alive connections (backends/http.py), not the openai client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from typing import Any
from urllib.parse import urlparse

import numpy as np

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Completion, Request, ScoreRequest, Span, Usage
from dsparity.evals.backends.http import ConnectionFailure, JSONEndpoint, StatusError, TimeoutFailure
from dsparity.evals.backends.limits import CoolDown, RateLimiter
from dsparity.evals.specs import ModelSpec
from dsparity.redact import redact, secret

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
OPENAI_HOST = "api.openai.com"  # the one endpoint OPENAI_API_KEY goes to without being named
MAX_RETRY_AFTER_S = 120.0


class _Replica:
    def __init__(self, url: str, key: str, timeout: float, connections: int):
        self.url = url
        self.http = JSONEndpoint(url, key, timeout, connections)  # pooled keep-alive connections
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
        key_env = _key_variable(spec, urls)
        self._key = secret(os.environ.get(key_env) or "") if key_env else ""
        if key_env and not self._key and not all(_is_loopback(u) for u in urls):
            raise DsparityError(f"model spec {spec.text}", "api_key_env",
                                f"environment variable {key_env} is not set",
                                f"export {key_env}=... or name another variable with api_key_env=")
        self.replicas = [_Replica(u, self._key, self.timeout, self.concurrency) for u in urls]
        self.identity: dict[str, Any] = {
            "kind": "openai", "model": spec.name,
            "endpoint": spec.opt("label") or ",".join(sorted(urls)),
            "revision": spec.opt("revision", ""),
        }
        self._slots = asyncio.Semaphore(self.concurrency)
        self._limiter = RateLimiter(spec.opt("rpm"), spec.opt("tpm"))
        self._cool_down = CoolDown()
        self.attempts = 0  # requests actually put on the wire (all replicas, all retries)
        self.max_model_len: int | None = None  # from /models where the server says (vLLM, ours)
        self._tokenize_route: bool | None = None  # False once the server showed it has none

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
            models = (await replica.http.get("/models"))["data"]
            names = [m["id"] for m in models]
        except StatusError as exc:
            if exc.status == 401 and not self._key:
                raise DsparityError(where, "api_key_env", f"{replica.url} asks for an API key and this "
                                    "spec sends none", "name the variable that holds the key: add "
                                    "api_key_env=NAME to the spec") from None
            if exc.status == 401:
                raise DsparityError(where, "api key", f"{replica.url} rejected the API key",
                                    "check the key in the environment variable") from None
            raise DsparityError(where, "base URL", f"{replica.url}/models answered HTTP {exc.status}",
                                "give the API's base URL (usually ending in /v1)") from None
        except (ConnectionFailure, TimeoutFailure):
            raise DsparityError(where, "base URL", f"cannot connect to {replica.url}",
                                "check that the server is running and the URL is right") from None
        except (ValueError, KeyError, TypeError):
            raise DsparityError(where, "base URL", f"{replica.url}/models did not answer with a model "
                                "list", "give the API's base URL (usually ending in /v1)") from None
        for m in models:
            length = m.get("max_model_len") if m["id"] == self.spec.name else None
            if isinstance(length, int) and length > 0:
                self.max_model_len = min(length, self.max_model_len or length)
        if names and self.spec.name not in names:
            raise DsparityError(where, "model", f"{self.spec.name!r} is not served at {replica.url}",
                                f"use one of: {', '.join(names[:10])}")

    async def check_scoring(self) -> None:
        """Fail fast when the endpoint cannot echo prompt log-probs (log-likelihood tasks)."""
        probe = ScoreRequest((Span("The capital of France is", " Paris"),), top_n=1)
        for replica in self.replicas:
            try:
                result = await self._score_once(replica, probe)
            except StatusError as exc:
                problem = f"POST {replica.url}/completions answered HTTP {exc.status}"
            except (ConnectionFailure, TimeoutFailure) as exc:
                problem = f"POST {replica.url}/completions failed ({type(exc).__name__})"
            except (_Incomplete, ValueError, KeyError, TypeError, AttributeError) as exc:
                problem = f"{replica.url}/completions gave no prompt log-probs ({exc})"
            else:
                if result.scores and result.scores[0]["n"] > 0:
                    continue
                problem = f"{replica.url}/completions scored no token"
            raise DsparityError(f"model spec {self.spec.text}", "/v1/completions",
                                f"{problem}: this endpoint cannot echo prompt log-probs, which "
                                "log-likelihood tasks need",
                                "serve the model with vLLM, SGLang or `dsparity serve`, or run only "
                                "generation tasks against it")

    def context_length(self) -> int | None:
        return self.max_model_len

    async def count_tokens(self, request: Request) -> int | None:
        """The prompt's tokens with its chat template, as the server counts them: POST /tokenize
        at the server's root with the messages (vLLM, `dsparity serve`). None where the server
        has no such route (asked once) or did not answer."""
        if self._tokenize_route is False:
            return None
        replica = self.replicas[0]
        url = replica.url.removesuffix("/v1") + "/tokenize"
        body = {"model": self.spec.name, "add_generation_prompt": True,
                "messages": [{"role": r, "content": c} for r, c in request.messages]}
        async with self._slots:
            try:
                count = (await replica.http.post(url, body))["count"]
            except StatusError as exc:
                if exc.status not in RETRYABLE_STATUS:
                    self._tokenize_route = False
                return None
            except (ConnectionFailure, TimeoutFailure):
                return None
            except (ValueError, KeyError, TypeError):
                self._tokenize_route = False
                return None
        return count if isinstance(count, int) and count >= 0 else None

    async def generate(self, request: Request) -> Completion:
        return await self._timed(request, self._stream if self.stream else self._once)

    async def score(self, request: ScoreRequest) -> Completion:
        """Log-likelihoods through `POST /completions` with `echo` and `logprobs` (as vLLM,
        SGLang and lm-eval's `local-completions` do): one prompt per span, all in one request."""
        return await self._timed(request, self._score_once)

    async def _timed(self, request, call) -> Completion:
        async with self._slots:
            start = time.perf_counter()
            completion = await self._with_retries(request, call)
            completion.latency_s = time.perf_counter() - start
            return completion

    async def _with_retries(self, request: Request | ScoreRequest, call) -> Completion:
        last = Completion(error="no attempt", error_class="internal")
        estimate = _token_estimate(request)
        for attempt in range(self.retries + 1):
            await self._cool_down.wait()
            await self._limiter.acquire(estimate)
            replica = min(self.replicas, key=lambda r: (r.in_flight, r.sent))  # least busy, then least used
            replica.in_flight += 1
            replica.sent += 1
            self.attempts += 1
            delay = _backoff(attempt)
            try:
                return await call(replica, request)
            except StatusError as exc:
                last = self._error(f"HTTP {exc.status} from {replica.url}", _status_class(exc.status))
                if exc.status not in RETRYABLE_STATUS:
                    return last
                if (after := _retry_after(exc.retry_after)) is not None:
                    delay = after
                if exc.status == 429:
                    self._cool_down.push(delay)
            except TimeoutFailure:
                last = self._error(f"timed out after {self.timeout:g} s at {replica.url}", "timeout")
            except ConnectionFailure as exc:
                last = self._error(f"connection to {replica.url} failed: {exc}", "connection")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                last = self._error(f"malformed response from {replica.url}: {exc}", "protocol")
            except _Incomplete as exc:
                last = self._error(f"{exc} from {replica.url}", "protocol")
            finally:
                replica.in_flight -= 1
            if attempt < self.retries:
                await asyncio.sleep(delay)
        return last

    def _error(self, message: str, error_class: str) -> Completion:
        # A server can echo what it was sent (the key) into the error text we keep; a key too
        # short to register as a secret is still masked here.
        message = redact(message.replace(self._key, "***") if self._key else message)
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
        resp = await replica.http.post("/chat/completions", self._params(request))
        if not resp.get("choices"):
            raise _Incomplete("response had no choices")
        choice = resp["choices"][0]
        message = choice["message"]
        text, reasoning = message.get("content"), message.get("reasoning_content")
        if text is None and not reasoning:
            raise _Incomplete("response had neither content nor reasoning")
        return Completion(text=_text(text), reasoning=_text(reasoning),
                          finish_reason=choice.get("finish_reason"), usage=_usage(resp.get("usage")))

    async def _stream(self, replica: _Replica, request: Request) -> Completion:
        body = self._params(request) | {"stream": True, "stream_options": {"include_usage": True}}
        text, reasoning, finish, usage = [], [], None, Usage()
        # aclosing: a stream left early (a bad event) gives its connection back at once
        async with contextlib.aclosing(replica.http.stream("/chat/completions", body)) as events:
            async for chunk in events:
                if chunk.get("error"):  # a server that fails mid-stream says so in an event
                    raise _Incomplete(f"stream error: {chunk['error']}")
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        text.append(_text(delta["content"]))
                    if part := delta.get("reasoning_content"):
                        reasoning.append(_text(part))
                    finish = choice.get("finish_reason") or finish
        if finish is None:
            raise _Incomplete("stream ended without a finish reason")
        return Completion(text="".join(text), reasoning="".join(reasoning), finish_reason=finish,
                          usage=usage)

    async def _score_once(self, replica: _Replica, request: ScoreRequest) -> Completion:
        tokenized = request.spans[0].tokenized
        prompts = [list(s.context) + list(s.continuation) if tokenized else s.context + s.continuation
                   for s in request.spans]
        body: dict[str, Any] = {"model": self.spec.name, "prompt": prompts, "echo": True,
                                "logprobs": max(1, request.top_n), "max_tokens": 1, "temperature": 0}
        if tokenized:  # vLLM's extension: tokens named "token_id:N", so alternatives map to ids
            body["return_tokens_as_token_ids"] = True
        resp = await replica.http.post("/completions", body)
        choices = sorted(resp["choices"], key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise _Incomplete(f"{len(choices)} choices for {len(prompts)} prompts")
        scores = [_span_scores(span, choice.get("logprobs"), request.top_n).pack()
                  for span, choice in zip(request.spans, choices, strict=True)]
        return Completion(finish_reason="scored", scores=scores, usage=_usage(resp.get("usage")))

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.http.close()


class _Incomplete(Exception):
    """A 200 answer that carries no usable completion (retried like a server fault)."""


def _token_estimate(request: Request | ScoreRequest) -> int:
    if isinstance(request, ScoreRequest):
        return sum(len(s.context) + len(s.continuation) if s.tokenized else
                   (len(s.context) + len(s.continuation)) // 4 for s in request.spans)
    return sum(len(c) for _, c in request.messages) // 4 + request.max_tokens


def _span_scores(span: Span, logprobs, top_n: int):
    """The continuation's part of an echoed prompt: by token count for token-id prompts, by
    character offset for text prompts (a token that straddles the boundary counts as
    continuation, as the first token the context did not fully determine)."""
    from dsparity.evals.logprobs import SpanScores

    if not logprobs or logprobs.get("token_logprobs") is None:
        raise _Incomplete("the answer has no logprobs")
    lps, tops = logprobs["token_logprobs"], logprobs.get("top_logprobs") or []
    tokens_all = logprobs.get("tokens") or []
    if span.tokenized:
        start, end = len(span.context), len(span.context) + len(span.continuation)
    else:
        offsets = _text_offsets(span, tokens_all, logprobs.get("text_offset") or [])
        cut, whole = len(span.context), len(span.context) + len(span.continuation)
        start = next((i for i, o in enumerate(offsets) if o + len(tokens_all[i]) > cut), len(offsets))
        end = next((i for i, o in enumerate(offsets) if o >= whole), len(offsets))
        start = max(start, 1)  # the first token of a prompt has no log-prob
    if end > len(lps) or start >= end or any(v is None for v in lps[start:end]):
        raise _Incomplete("the echoed prompt has no log-probs for the continuation")
    n = end - start
    tokens = [_token_key(t) for t in tokens_all[start:end]]
    top_ids = top_lps = None
    greedy = np.ones(n, dtype=bool)
    width = max(1, top_n)
    keyed = [_token_key(k) for row in tops[start:end] for k in (row or {})]
    as_ids = all(isinstance(k, int) for k in keyed + tokens)
    top_ids = np.full((n, width), -1 if as_ids else "", dtype=np.int32 if as_ids else object)
    top_lps = np.full((n, width), -np.inf, dtype=np.float32)
    for i, row in enumerate(tops[start:end]):
        items = sorted(((v, _token_key(k)) for k, v in (row or {}).items()), key=lambda x: -x[0])
        if items:
            greedy[i] = lps[start + i] >= items[0][0]
        for j, (v, k) in enumerate(items[:width]):
            top_ids[i, j], top_lps[i, j] = k, v
    if not as_ids:
        top_ids = top_ids.astype(str)
    return SpanScores(logprobs=np.asarray(lps[start:end], dtype=np.float64), greedy=greedy,
                      tokens=np.asarray(tokens, dtype=np.int32 if as_ids else str),
                      top_ids=top_ids if top_n else None, top_logprobs=top_lps if top_n else None,
                      first_position=start)


def _text_offsets(span: Span, tokens: list[str], offsets: list[int]) -> list[int]:
    """The echoed tokens' character offsets in the prompt: the server's, when they add up to the
    prompt (the token generated after it starts where it ends). Else counted back from the end
    of the prompt by each token's text: vLLM adds up the tokens' own texts, and a token holding
    part of a multi-byte character ('´' split over two tokens) reads U+FFFD, one character too
    many; counted from the end, the continuation's offsets stay exact unless it splits a
    character itself. The last echoed token is the one generated (max_tokens 1), as lm-eval's
    `local-completions` takes it."""
    whole = len(span.context) + len(span.continuation)
    if not offsets or offsets[-1] == whole or len(offsets) != len(tokens):
        return offsets
    at, counted = whole, [whole]
    for token in reversed(tokens[:-1]):
        at -= len(token)
        counted.append(at)
    return counted[::-1]


def _token_key(token: str) -> int | str:
    """`token_id:123` (vLLM's return_tokens_as_token_ids) -> 123; other tokens stay strings."""
    if isinstance(token, str) and token.startswith("token_id:") and token[9:].lstrip("-").isdigit():
        return int(token[9:])
    return token


def _text(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Incomplete(f"the answer's text is a {type(value).__name__}, not a string")
    return value


def _usage(u: dict[str, Any] | None) -> Usage:
    if not u:
        return Usage()
    details = u.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        reasoning_tokens=int(details.get("reasoning_tokens") or 0),
        cache_hit_tokens=int(u.get("prompt_cache_hit_tokens") or 0),
        cache_miss_tokens=int(u.get("prompt_cache_miss_tokens") or 0),
    )


def _status_class(status: int) -> str:
    if status == 429:
        return "rate_limit"
    return "server_error" if status >= 500 else "client_error"


def _retry_after(header: str | None) -> float | None:
    try:
        value = float(header)
    except (TypeError, ValueError):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_S)


def _backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2)


def _key_variable(spec: ModelSpec, urls: list[str]) -> str | None:
    """The environment variable whose key this endpoint gets: the one its spec names, else
    OPENAI_API_KEY for OpenAI's own API over https, else none. An ambient key never goes to an
    endpoint nobody named it for (a colleague's vLLM box, a plain-http server, a typo'd host)."""
    if spec.opt("api_key_env"):
        return str(spec.opt("api_key_env"))
    if urls and all(urlparse(u).scheme == "https" and urlparse(u).hostname == OPENAI_HOST for u in urls):
        return "OPENAI_API_KEY"
    return None


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
