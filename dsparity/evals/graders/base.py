"""The grader contract: `grade(sample, settings) -> Grade`, and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dsparity.evals.graders.text import strip_reasoning


@dataclass(frozen=True)
class GradeInput:
    """What a grader sees of a sample: never which model answered, and never its reasoning.

    `text` is the final answer: a `<think>…</think>` block inlined in the output is cut away
    here, once, for every grader (an unclosed `<think>`, reasoning cut off by the length limit,
    leaves nothing), so an answer that appears only while thinking earns nothing anywhere. A
    separate reasoning channel (`reasoning_content`) is stored apart and never reaches a grader.
    """

    text: str
    target: str
    doc: dict[str, Any]
    finish_reason: str | None = None
    scores: list[dict[str, Any]] | None = None  # log-likelihood tasks: packed SpanScores per span

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", strip_reasoning(self.text))


class GradeUnavailable(Exception):
    """No verdict for reasons outside the answer (a judge outage, an unparsable verdict after
    retries). The runner stores it as a grading error for that sample, never as a score, and
    grades the sample again on the next run."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None):
        super().__init__(reason)
        self.reason, self.details = reason, details or {}


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
