"""The backend contract: `async generate(Request) -> Completion` for chat, `async score(ScoreRequest)
-> Completion` for log-likelihoods, and the data at that seam."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
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
        # A shallow copy rather than dataclasses.asdict, which deep-copies: this runs several
        # times per request (cache key, stored row), thousands of times a second.
        d = _shallow(self)
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


@dataclass(frozen=True)
class Span:
    """One log-likelihood question: how likely is `continuation` after `context`?

    Text (tokenized by the backend as lm-eval's `hf` model does) or token ids (the task tokenized
    them, so two models with one tokenizer score the very same tokens). `context` empty with text
    means "score the whole continuation" (lm-eval's rolling log-likelihood): a text longer than
    the model's context is scored in windows that keep as much context as the model can see.
    """

    context: str | tuple[int, ...] = ""
    continuation: str | tuple[int, ...] = ""

    @property
    def tokenized(self) -> bool:
        return isinstance(self.continuation, tuple)

    def to_dict(self) -> dict[str, Any]:
        if self.tokenized:
            return {"context_tokens": list(self.context), "continuation_tokens": list(self.continuation)}
        return {"context": self.context, "continuation": self.continuation}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Span:
        if "continuation_tokens" in d:
            return Span(tuple(d["context_tokens"]), tuple(d["continuation_tokens"]))
        return Span(d["context"], d["continuation"])


@dataclass(frozen=True)
class ScoreRequest:
    """The log-likelihood requests of one item (a multiple-choice question has one span per
    choice), answered together. `top_n` > 0 also asks for the N most likely tokens per position."""

    spans: tuple[Span, ...]
    top_n: int = 0
    rolling: bool = False  # whole-text scoring: per-token log-probs over the full continuation

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "score", "spans": [s.to_dict() for s in self.spans], "top_n": self.top_n,
                "rolling": self.rolling}

    def key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ScoreRequest:
        return ScoreRequest(tuple(Span.from_dict(s) for s in d["spans"]), int(d.get("top_n", 0)),
                            bool(d.get("rolling", False)))


def _shallow(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def request_from_dict(d: dict[str, Any]) -> Request | ScoreRequest:
    return ScoreRequest.from_dict(d) if d.get("kind") == "score" else Request.from_dict(d)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cache_hit_tokens: int = 0  # DeepSeek: prompt_cache_hit_tokens
    cache_miss_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return _shallow(self)


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
    # Log-likelihood answers (ScoreRequest): one packed `scoring.SpanScores` dict per span.
    scores: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return _shallow(self) | {"usage": self.usage.to_dict()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Completion:
        return Completion(**{**d, "usage": Usage(**d.get("usage") or {})})


class Backend(Protocol):
    """Anything that answers chat and log-likelihood requests. The runner never knows which one
    it talks to."""

    identity: dict[str, Any]  # what makes two answers comparable: model, endpoint, revision, settings
    concurrency: int

    async def start(self) -> None:
        """Load weights or preflight the endpoint; raise DsparityError when unusable."""

    async def generate(self, request: Request) -> Completion: ...

    async def score(self, request: ScoreRequest) -> Completion:
        """Log-probabilities of each span's continuation (Completion.scores); an endpoint that
        cannot give them fails its preflight or returns an error, never a made-up number."""

    async def close(self) -> None: ...


def identity_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
