"""The grader contract: `grade(sample, settings) -> Grade`, and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GradeInput:
    """What a grader sees of a sample: never which model answered."""

    text: str
    target: str
    doc: dict[str, Any]
    finish_reason: str | None = None
    scores: list[dict[str, Any]] | None = None  # log-likelihood tasks: packed SpanScores per span


@dataclass
class Grade:
    score: float  # in [0, 1]
    passed: bool | None
    details: dict[str, Any] = field(default_factory=dict)


Grader = Callable[[GradeInput, dict[str, Any]], Grade]
GRADERS: dict[str, Grader] = {}


def register(name: str):
    def wrap(fn: Grader) -> Grader:
        GRADERS[name] = fn
        return fn

    return wrap
