"""`dsparity serve`: an OpenAI-compatible server for a local model (dense or DSA).

GET /v1/models, POST /v1/chat/completions (plain and SSE streaming token by token), GET /health.
Concurrent requests queue in the backend, which batches what it can; uvicorn finishes requests in
flight on SIGTERM/SIGINT before it exits.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from dsparity.evals.backends.base import Completion, Request
from dsparity.evals.backends.local import LocalBackend


class ChatMessage(BaseModel):
    role: str
    content: str | None = ""


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


def create_app(backend: LocalBackend, model_name: str) -> FastAPI:
    app = FastAPI(title="dsparity serve")
    started = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok" if backend.model is not None else "loading", "model": model_name,
                "queued": backend.queued, "max_batch": backend.max_batch}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": started, "owned_by": "dsparity"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        if body.model != model_name:
            raise HTTPException(404, f"model {body.model!r} not found; this server has {model_name!r}")
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        request = Request(
            messages=tuple((m.role, m.content or "") for m in body.messages),
            max_tokens=body.max_completion_tokens or body.max_tokens or 512,
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=tuple(stop))
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(cid, model_name, backend.stream(request), include_usage),
                                     media_type="text/event-stream")
        completion = await backend.generate(request)
        if completion.error:
            return JSONResponse({"error": {"message": completion.error, "type": "server_error"}},
                                status_code=500)
        return _response(cid, model_name, completion)

    return app


def _usage(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens,
            "total_tokens": c.usage.prompt_tokens + c.usage.completion_tokens}


def _response(cid: str, model: str, c: Completion) -> dict[str, Any]:
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
