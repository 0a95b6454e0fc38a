"""A loopback OpenAI-compatible server that misbehaves on purpose, written on raw asyncio so it
can do what well-behaved frameworks won't: drop connections, reset them, send broken JSON and
cut streams short."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
from collections import Counter

FAULTS = ("rate_limit", "server_500", "server_503", "hang", "drop", "reset", "bad_json",
          "truncated_stream", "empty_choices", "reasoning_only")


class FaultServer:
    """`fault_rate` of requests get a fault drawn uniformly from `faults`; the rest an answer."""

    def __init__(self, *, fault_rate: float = 0.2, faults=FAULTS, seed: int = 0, model: str = "m",
                 hang_s: float = 3.0, answer=lambda prompt: "42"):
        self.fault_rate, self.faults, self.model, self.hang_s = fault_rate, faults, model, hang_s
        self.answer = answer
        self.rng = random.Random(seed)
        self.answered: Counter[str] = Counter()  # prompt -> complete answers sent
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        self._server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=256))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: several requests per connection
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if not await self._respond(method, path, body, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.CancelledError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    async def _respond(self, method: str, path: str, body: bytes, writer) -> bool:
        if method == "GET" and path.endswith("/models"):
            _send(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
            return True
        request = json.loads(body)
        prompt = request["messages"][-1]["content"]
        self.requests += 1
        fault = self.rng.choice(self.faults) if self.rng.random() < self.fault_rate else None
        if fault:
            self.injected[fault] += 1
            return await self._fault(fault, writer)
        text = self.answer(prompt)
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                 "prompt_cache_hit_tokens": 4, "prompt_cache_miss_tokens": 6}
        if request.get("stream"):
            _stream(writer, self.model, [text], usage)
        else:
            _send(writer, 200, _completion(self.model, text, usage))
        self.answered[prompt] += 1
        await writer.drain()
        return True

    async def _fault(self, fault: str, writer) -> bool:
        if fault == "rate_limit":
            _send(writer, 429, {"error": {"message": "slow down"}}, {"Retry-After": "0.05"})
        elif fault in ("server_500", "server_503"):
            _send(writer, int(fault[-3:]), {"error": {"message": "boom"}})
        elif fault == "hang":
            await asyncio.sleep(self.hang_s)
            return False
        elif fault == "drop":
            return False
        elif fault == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        elif fault == "bad_json":
            _raw(writer, 200, b'{"id": "x", "choices": [{"message": ', "application/json")
        elif fault == "truncated_stream":
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": self.model,
                     "choices": [{"index": 0, "delta": {"content": "4"}, "finish_reason": None}]}
            _raw(writer, 200, f"data: {json.dumps(chunk)}\n\n".encode(), "text/event-stream",
                 claim_more=1000)
            await writer.drain()
            return False
        elif fault == "reasoning_only":  # a thinking model that spent its budget before answering
            _send(writer, 200, {"id": "x", "object": "chat.completion", "created": 0, "model": self.model,
                                "choices": [{"index": 0, "finish_reason": "length", "message": {
                                    "role": "assistant", "content": None,
                                    "reasoning_content": "let me think step by step"}}],
                                "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}})
        elif fault == "empty_choices":
            _send(writer, 200, {"id": "x", "object": "chat.completion", "created": 0, "model": self.model,
                                "choices": []})
        await writer.drain()
        return fault != "bad_json"


def _completion(model: str, text: str, usage: dict) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}], "usage": usage}


REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def _raw(writer, status: int, payload: bytes, ctype: str, extra: dict | None = None,
         claim_more: int = 0) -> None:
    """Write one response; `claim_more` declares more bytes than are sent (a cut-off body)."""
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'X')}", f"Content-Type: {ctype}",
            f"Content-Length: {len(payload) + claim_more}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)


def _send(writer, status: int, obj: dict, extra: dict | None = None) -> None:
    _raw(writer, status, json.dumps(obj).encode(), "application/json", extra)


def _stream(writer, model: str, parts: list[str], usage: dict) -> None:
    events = []
    for i, part in enumerate(parts):
        delta = {"role": "assistant", "content": part} if i == 0 else {"content": part}
        events.append({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [], "usage": usage})
    payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    _raw(writer, 200, payload.encode(), "text/event-stream")
