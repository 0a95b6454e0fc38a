"""`dsparity serve`: an OpenAI-compatible server for a local model (dense or DSA).

GET /v1/models, POST /v1/chat/completions (plain and SSE streaming token by token),
POST /v1/completions (text or token-id prompts, `echo`, `logprobs`: what log-likelihood clients
such as lm-eval's `local-completions` use), the vLLM-style tokenizer endpoints lm-eval detects
(/tokenizer_info, /tokenize, /detokenize), and GET /health.

Limits, each answered with one clear 4xx rather than a stalled server (`ServeLimits`): request
bodies are capped; prompt + max_tokens must fit the model's context; max_tokens has a cap, which
on /v1/completions binds the prompts of one request together (n prompts x max_tokens), and the
prompts per request are capped; token ids and seeds are range-checked; a
request whose client goes away is cancelled (queued: dropped; running: stopped at the next
token); shutdown waits for requests in flight at most `shutdown_s`, then cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from dsparity.evals.backends.base import Completion, Request
from dsparity.evals.backends.local import LocalBackend
from dsparity.evals.serving.completions import MAX_LOGPROBS, logprobs_payload, run_completion


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 4 * 1024 * 1024  # 4 MiB: an 8K-token prompt is ~40 KB of text
    max_tokens_cap: int = 4096  # new tokens per request, all of its prompts together
    max_prompts: int = 256  # prompts in one /v1/completions request
    shutdown_s: float = 30.0  # SIGTERM: finish requests in flight for at most this long


class ChatMessage(BaseModel):
    role: str
    content: str | None = ""


# what torch.manual_seed takes: a larger seed would be a 500 deep inside the backend
Seed = Annotated[int, Field(ge=-(1 << 63), lt=1 << 64)]


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class CompletionRequest(BaseModel):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    return_tokens_as_token_ids: bool = False


class TokenizeRequest(BaseModel):
    """vLLM's two forms: a text `prompt`, or chat `messages` counted with the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    tokens: list[int]


def create_app(backend: LocalBackend, model_name: str, limits: ServeLimits | None = None) -> FastAPI:
    limits = limits or ServeLimits()
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        backend.cancel_all()  # shutdown: whatever is still running stops at its next token

    app = FastAPI(title="dsparity serve", lifespan=lifespan)
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes)
    context = backend.context_length()

    def check_model(name: str) -> None:
        if name != model_name:
            raise HTTPException(404, f"model {name!r} not found; this server has {model_name!r}")

    def check_budget(prompt_tokens: int, max_tokens: int) -> None:
        if max_tokens > limits.max_tokens_cap:
            raise HTTPException(400, f"max_tokens {max_tokens} is above this server's cap of "
                                     f"{limits.max_tokens_cap}")
        if prompt_tokens + max_tokens > context:
            raise HTTPException(400, f"this model's context is {context} tokens; the prompt has "
                                     f"{prompt_tokens} and max_tokens asks for {max_tokens} more")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok" if backend.model is not None else "loading", "model": model_name,
                "queued": backend.queued, "max_batch": backend.max_batch}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "dsparity", "max_model_len": context}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HttpRequest):
        check_model(body.model)
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        request = Request(
            messages=tuple((m.role, m.content or "") for m in body.messages),
            max_tokens=body.max_completion_tokens or body.max_tokens or min(512, limits.max_tokens_cap),
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=tuple(stop))
        check_budget(backend.prompt_tokens(request), request.max_tokens)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        cancel = threading.Event()
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(cid, model_name, backend.stream(request, cancel), include_usage),
                                     media_type="text/event-stream")
        completion = await _until_disconnect(http, backend.generate(request, cancel), cancel)
        if completion is None:
            return JSONResponse({"error": {"message": "client went away"}}, status_code=499)
        if completion.error:
            return JSONResponse({"error": {"message": completion.error, "type": "server_error"}},
                                status_code=500)
        return _chat_response(cid, model_name, completion)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        check_model(body.model)
        if body.stream:
            raise HTTPException(400, "stream is not supported on /v1/completions here")
        prompts = _prompt_ids(backend, body.prompt)
        if len(prompts) > limits.max_prompts:
            raise HTTPException(400, f"{len(prompts)} prompts in one request; this server takes at most "
                                     f"{limits.max_prompts} (send them in smaller batches)")
        if len(prompts) * body.max_tokens > limits.max_tokens_cap:  # one request's work is bounded
            raise HTTPException(400, f"{len(prompts)} prompts x max_tokens {body.max_tokens} is above "
                                     f"this server's cap of {limits.max_tokens_cap} new tokens per request")
        for ids in prompts:
            if not ids:
                raise HTTPException(400, "a prompt is empty")
            if any(not 0 <= t < backend.vocab_size() for t in ids):
                raise HTTPException(400, "a prompt token id is outside the vocabulary")
            check_budget(len(ids), body.max_tokens)
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        choices = []
        for i, ids in enumerate(prompts):
            cancel = threading.Event()
            job = backend.run_exclusive(lambda cancel, ids=ids: run_completion(
                backend.model, backend.tokenizer, ids, echo=body.echo, logprobs=body.logprobs,
                max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                seed=body.seed, stop=stop, cancel=cancel), cancel)
            try:
                choice = await _until_disconnect(http, job, cancel)
            except Exception as exc:
                return JSONResponse({"error": {"message": f"{type(exc).__name__}: {exc}",
                                               "type": "server_error"}}, status_code=500)
            if choice is None:
                return JSONResponse({"error": {"message": "client went away"}}, status_code=499)
            entry = {"index": i, "text": choice.text, "finish_reason": choice.finish_reason,
                     "logprobs": None}
            if body.logprobs is not None:
                entry["logprobs"] = logprobs_payload(backend.tokenizer, choice,
                                                     body.return_tokens_as_token_ids)
            choices.append((entry, choice))
        prompt_tokens = sum(c.prompt_tokens for _, c in choices)
        completion_tokens = sum(c.completion_tokens for _, c in choices)
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": model_name, "choices": [e for e, _ in choices],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        tok = backend.tokenizer
        return {"eos_token": tok.eos_token, "bos_token": tok.bos_token, "pad_token": tok.pad_token,
                "chat_template": tok.chat_template, "model_max_length": context}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        if body.model is not None:
            check_model(body.model)
        if body.messages is not None:
            chat = [{"role": m.role, "content": m.content or ""} for m in body.messages]
            tokens = backend.tokenizer.apply_chat_template(
                chat, add_generation_prompt=body.add_generation_prompt, tokenize=True, return_dict=False)
        elif body.prompt is not None:
            tokens = backend.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            raise HTTPException(400, "give a prompt or messages")
        return {"tokens": tokens, "count": len(tokens), "max_model_len": context}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        if any(not 0 <= t < backend.vocab_size() for t in body.tokens):
            raise HTTPException(400, "a token id is outside the vocabulary")
        return {"prompt": backend.tokenizer.decode(body.tokens)}

    return app


def _prompt_ids(backend: LocalBackend, prompt) -> list[list[int]]:
    """One token list per prompt: text is tokenized as a completions server does (the
    tokenizer's own special tokens); ids are taken as they are."""
    if isinstance(prompt, str):
        return [backend.tokenizer.encode(prompt)]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return [backend.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompt]


async def _until_disconnect(http: HttpRequest, job, cancel: threading.Event):
    """Await `job`; if the client disconnects first, set `cancel` and return None."""
    task = asyncio.ensure_future(job)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if not done and await http.is_disconnected():
            cancel.set()
            with contextlib.suppress(Exception):
                await task
            return None
    return task.result()


class _BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, whether or not Content-Length says so:
    the body is read (at most max_bytes of it) before the app sees the request."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        replay = iter(messages)

        async def buffered():
            return next(replay, None) or await receive()

        await self.app(scope, buffered, send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": {"message": f"request body over {self.max_bytes} bytes",
                                     "type": "invalid_request_error"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _usage(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens,
            "total_tokens": c.usage.prompt_tokens + c.usage.completion_tokens}


def _chat_response(cid: str, model: str, c: Completion) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason}],
            "usage": _usage(c)}


async def _sse(cid: str, model: str, pieces, include_usage: bool):
    def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        payload: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk",
                                   "created": int(time.time()), "model": model,
                                   "choices": [] if delta is None else
                                   [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for piece in pieces:
        if isinstance(piece, str):
            yield chunk({"content": piece})
        elif piece.error:
            yield f"data: {json.dumps({'error': {'message': piece.error, 'type': 'server_error'}})}\n\n"
        else:
            yield chunk({}, piece.finish_reason)
            if include_usage:
                yield chunk(None, usage=_usage(piece))
    yield "data: [DONE]\n\n"
