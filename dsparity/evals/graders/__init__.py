"""Graders by name. A task names its grader in `metadata.dsparity.grader`."""

from dsparity.evals.graders import (  # noqa: F401  (importing a module registers its graders)
    answers,  # exact, needle
    choice,  # choice
    code,  # code, stdio
    judge,  # judge
    maths,  # math
    web,  # web
    writing,  # writing, longform
)
from dsparity.evals.graders.base import GRADERS, Grade, GradeInput, register


def get_grader(name: str):
    return GRADERS[name]


__all__ = ["GRADERS", "Grade", "GradeInput", "get_grader", "register"]
