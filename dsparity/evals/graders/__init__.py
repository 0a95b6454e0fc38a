"""Graders by name. A task names its grader in `metadata.dsparity.grader`."""

from dsparity.evals.graders import answers  # noqa: F401  (registers exact, needle)
from dsparity.evals.graders.base import GRADERS, Grade, GradeInput, register


def get_grader(name: str):
    return GRADERS[name]


__all__ = ["GRADERS", "Grade", "GradeInput", "get_grader", "register"]
