"""Loopback servers for tests: a scripted OpenAI-compatible endpoint that counts what it gets."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an ASGI app with uvicorn on a free loopback port in a background thread."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="error", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def last_number_answer(prompt: str) -> str:
    """A scripted 'model' that solves the smoke suite: arithmetic and needle retrieval."""
    if m := re.search(r"magic number for ([\w-]+)\?", prompt):
        found = re.search(rf"magic number for {re.escape(m.group(1))} is: (\d+)", prompt)
        return found.group(1) if found else "unknown"
    if m := re.search(r"What is (\d+) ([+-]) (\d+)\?", prompt):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return str(a + b if op == "+" else a - b)
    if m := re.search(r"has (\d+) apples and buys (\d+) bags with (\d+)", prompt):
        return str(int(m.group(1)) + int(m.group(2)) * int(m.group(3)))
    return "I do not know."


def scripted_app(answer: Callable[[str], str] = last_number_answer, *, model: str = "scripted",
                 delay_s: float = 0.0) -> FastAPI:
    """An OpenAI chat-completions endpoint whose answers come from `answer(prompt)`."""
    app = FastAPI()
    app.state.requests = Counter()  # prompt -> times received
    app.state.lock = threading.Lock()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if body.get("model") != model:
            return JSONResponse({"error": {"message": "no such model"}}, status_code=404)
        prompt = body["messages"][-1]["content"]
        with app.state.lock:
            app.state.requests[prompt] += 1
        if delay_s:
            import asyncio

            await asyncio.sleep(delay_s)
        text = answer(prompt)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4 + 1,
                          "total_tokens": len(prompt) // 4 + len(text) // 4 + 1}}

    return app
