"""More hostile answers for the function-test grader: forgeries that ride on how a task's own tests
are written (iteration helpers that stop on StopIteration, bare `except:`). Each scores 0 while the
honest answer to the same tests scores 1.
"""

from __future__ import annotations

import os

import pytest

from dsparity.evals.graders import GradeInput, get_grader, sandbox

pytestmark = pytest.mark.skipif(
    sandbox.bwrap_path() is None or not os.access("/usr/bin/python3", os.X_OK),
    reason="bubblewrap or Debian's /usr/bin/python3 absent (scripts/setup installs them)",
)

HONEST = "def double(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x * 2\n"
# tests that a reference harness also runs: the weakness is theirs, the verdict must not be
TESTS = {
    "all_map": """
def check(candidate):
    assert all(map(lambda x: candidate(x) == x * 2, [1, 2, 3]))
""",
    "for_over_map": """
def check(candidate):
    for got, want in zip(map(candidate, [1, 2, 3]), [2, 4, 6]):
        assert got == want
""",
    "bare_except": """
def check(candidate):
    assert candidate(2) == 4
    try:
        candidate(-1)
        raised = False
    except:
        raised = True
    assert raised
""",
}
FORGERIES = {
    "stop_iteration": ("all_map", "def double(x):\n    raise StopIteration\n"),
    "stop_iteration_zip": ("for_over_map", "def double(x):\n    raise StopIteration\n"),
    "stop_async_iteration": ("all_map", "def double(x):\n    raise StopAsyncIteration\n"),
    # the process dies on the call the test expects to raise; `except:` swallows the failure
    "exit_inside_bare_except": ("bare_except", "import os\ndef double(x):\n    if x < 0:\n"
                                "        os._exit(0)\n    return x * 2\n"),
    "garbage_reply_inside_bare_except": ("bare_except", """
import os, sys
def double(x):
    if x < 0:
        os.write(int(sys.argv[3]), b"5:Oxxxx")
        os._exit(0)
    return x * 2
"""),
}


def grade(tests: str, code: str):
    doc = {"prompt": "", "test": tests, "entry_point": "double"}
    answer = f"```python\n{code}\n```"
    return get_grader("code")(GradeInput(answer, "", doc, "stop"), {"timeout_s": 5, "memory_mb": 256})


@pytest.mark.parametrize("name", sorted(TESTS))
def test_honest_answer_passes_the_weak_tests(name):
    g = grade(TESTS[name], HONEST)
    assert g.passed is True and g.score == 1.0, g.details


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forgeries_through_weak_tests_score_zero(name):
    tests, code = FORGERIES[name]
    g = grade(TESTS[tests], code)
    assert g.passed is False and g.score == 0.0, g.details
