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


# Answers that misbehave in the ways the brief of a hostile review lists; none may pass, and none
# may turn its failure into a machine failure (passed None: not scored at all).
ADD_TESTS = """
def check(candidate):
    assert candidate(2, 3) == 5
    assert candidate(-7, 7) == 0
    assert candidate(10**20, 1) == 10**20 + 1
"""
MISBEHAVING = {
    "recursion_bomb": "import sys\nsys.setrecursionlimit(10**9)\ndef add(x, y):\n    return add(x, y)\n",
    "huge_int": "def add(x, y):\n    return 7 ** 3_000_000\n",
    "infinite_generator": "import itertools\ndef add(x, y):\n    return itertools.count()\n",
    "self_referencing_list": "def add(x, y):\n    v = []\n    v.append(v)\n    return v\n",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
                 "def add(x, y):\n    return x + y + 1\n",
    "sleep_past_timeout": "import time\ndef add(x, y):\n    time.sleep(30)\n    return x + y\n",
    "del_finalizer_exits_zero": """
import os
class Bye:
    def __del__(self):
        os._exit(0)
def add(x, y):
    Bye()
    return -1
""",
    "sigterm_handler_exits_zero": """
import os, signal
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGINT):
    signal.signal(s, lambda *a: os._exit(0))
def add(x, y):
    return -1
""",
    "protocol_framing_on_stdout": """
import sys
sys.stdout.write('3:OT;' * 100 + '46:d3;s7:verdicts4:passs6:detail s0:s5:callsi1;')
sys.stdout.flush()
def add(x, y):
    sys.stdout.write('2:OT' * 1000)
    return -1
""",
    "reply_for_the_next_calls_in_advance": """
import os, sys
def add(x, y):
    fd = int(sys.argv[3])
    os.write(fd, b"3:Oi5;" + b"3:Oi0;" + b"4:Oi1;;")  # the right answers, ahead of the questions
    return 5
""",
    "thread_answers_later_calls": """
import os, sys, threading, time
def add(x, y):
    def spam():
        for _ in range(50):
            try:
                os.write(int(sys.argv[3]), b"3:Oi0;")
            except OSError:
                return
    threading.Thread(target=spam).start()
    return 5
""",
    "write_pipe_reopened_from_proc": """
import os, sys
def add(x, y):
    for fd in os.listdir("/proc/self/fd"):
        try:
            w = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
            os.write(w, b"3:Oi5;")
        except OSError:
            pass
    return -1
""",
}


@pytest.mark.parametrize("name", sorted(MISBEHAVING))
def test_misbehaving_answers_fail_and_are_scored(name):
    doc = {"prompt": "", "test": ADD_TESTS, "entry_point": "add"}
    answer = f"```python\n{MISBEHAVING[name]}\n```"
    g = get_grader("code")(GradeInput(answer, "", doc, "stop"), {"timeout_s": 2, "memory_mb": 256})
    assert g.passed is False and g.score == 0.0, g.details
