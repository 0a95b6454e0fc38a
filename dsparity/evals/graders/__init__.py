"""Graders by name. A task names its grader in `metadata.dsparity.grader`."""

import contextlib
from typing import Any

from dsparity.evals.graders import (  # noqa: F401  (importing a module registers its graders)
    answers,  # exact, needle
    choice,  # choice
    code,  # code, stdio
    judge,  # judge
    lm_eval_metrics,  # lm_eval (a task's own lm-eval filters and metrics)
    loglikelihood,  # loglikelihood, fidelity
    maths,  # math
    web,  # web
    writing,  # writing, longform
)
from dsparity.evals.graders.base import GRADERS, Grade, GradeInput, register


def get_grader(name: str):
    return GRADERS[name]


@contextlib.contextmanager
def override_settings(overrides: dict[str, Any]):
    """While active, every grader sees `overrides` on top of its task's settings (re-grading a
    stored run with another judge or other limits, without touching the run)."""
    saved = dict(GRADERS)
    if overrides:
        for name, fn in saved.items():
            GRADERS[name] = (lambda f: lambda sample, settings: f(sample, {**settings, **overrides}))(fn)
    try:
        yield
    finally:
        GRADERS.clear()
        GRADERS.update(saved)


__all__ = ["GRADERS", "Grade", "GradeInput", "get_grader", "override_settings", "register"]
