"""The backend contract: `async generate(Request) -> Completion`, and the data at that seam."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Request:
    """One chat request. Greedy unless temperature > 0."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        d["stop"] = list(self.stop)
        return d

    def key(self) -> str:
        """Content hash of the request: equal requests share cached answers (per model)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Request:
        return Request(
            messages=tuple((m["role"], m["content"]) for m in d["messages"]),
            max_tokens=d["max_tokens"], temperature=d["temperature"], top_p=d["top_p"],
            seed=d.get("seed"), stop=tuple(d.get("stop") or ()),
        )


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cache_hit_tokens: int = 0  # DeepSeek: prompt_cache_hit_tokens
    cache_miss_tokens: int = 0


@dataclass
class Completion:
    """What came back. `error` set means infrastructure failure, never a wrong answer."""

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    error: str | None = None
    error_class: str | None = None  # e.g. timeout, rate_limit, server_error, connection, protocol

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Completion:
        return Completion(**{**d, "usage": Usage(**d.get("usage") or {})})


class Backend(Protocol):
    """Anything that answers chat requests. The runner never knows which one it talks to."""

    identity: dict[str, Any]  # what makes two answers comparable: model, endpoint, revision, settings
    concurrency: int

    async def start(self) -> None:
        """Load weights or preflight the endpoint; raise DsparityError when unusable."""

    async def generate(self, request: Request) -> Completion: ...

    async def close(self) -> None: ...


def identity_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
