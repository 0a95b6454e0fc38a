"""Hostile answers that try to forge a pass: every one scores 0 (and is graded, never excused as a
machine failure), while HumanEval's canonical solutions score 1.

Each forgery is a whole answer for a real HumanEval problem. `ENTRY` stands for the problem's
function name. They attack the verdict (markers, early exits, patched `check`/`assert`, forged
protocol lines, killed parents, leftover threads and children), the values (objects equal to
everything, subclasses of builtins, NaN, fake `isinstance`), and the stdin/stdout comparison.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from dsparity.errors import DsparityError
from dsparity.evals.graders import GradeInput, get_grader, sandbox
from dsparity.evals.graders.code import outputs_match

pytestmark = pytest.mark.skipif(
    sandbox.bwrap_path() is None or not os.access("/usr/bin/python3", os.X_OK),
    reason="bubblewrap or Debian's /usr/bin/python3 absent (scripts/setup installs them)",
)


def _rows() -> dict[str, dict]:
    from dsparity.evals.taskgen.loaders import humaneval_rows

    try:
        return {row["task_id"]: row for row in humaneval_rows()}
    except DsparityError as exc:  # pragma: no cover - the package is a declared dependency
        pytest.skip(str(exc))


ROWS = _rows()
# return types across the sample: int, str/None, list, dict, tuple, float, bool, and problems whose
# tests call the prompt's own helpers (poly, encode_cyclic, encode_shift)
CANONICAL = ["HumanEval/2", "HumanEval/12", "HumanEval/32", "HumanEval/33", "HumanEval/38", "HumanEval/53",
             "HumanEval/72", "HumanEval/107", "HumanEval/111", "HumanEval/148"]


def grade(task_id: str, code: str, **settings):
    row = ROWS[task_id]
    answer = "```python\n" + textwrap.dedent(code).replace("ENTRY", row["entry_point"]) + "\n```"
    doc = {k: row[k] for k in ("prompt", "test", "entry_point")}
    return get_grader("code")(GradeInput(answer, "", doc, "stop"), {"timeout_s": 5, **settings})


@pytest.mark.parametrize("task_id", CANONICAL)
def test_canonical_solutions_pass(task_id):
    row = ROWS[task_id]
    doc = {k: row[k] for k in ("prompt", "test", "entry_point")}
    g = get_grader("code")(GradeInput(row["canonical_solution"], "", doc, "stop"), {"timeout_s": 10})
    assert g.passed is True and g.score == 1.0, (g.details["status"], g.details["verdict"])


# Objects that claim to equal everything (the value-forging family), shared by several forgeries.
ANYTHING = """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    __le__ = __gt__ = __ge__ = __lt__
    def __hash__(self): return 0
    def __bool__(self): return True
    def __len__(self): return 0
    def __iter__(self): return iter(())
    def __abs__(self): return 0
    def __sub__(self, other): return 0
    __rsub__ = __add__ = __radd__ = __mul__ = __rmul__ = __sub__
    def __float__(self): return 0.0
    def __index__(self): return 0
    def __repr__(self): return "True"
"""

VALUE_FORGERIES = {
    "eq_always_true": ANYTHING + "def ENTRY(*a, **k):\n    return Anything()\n",
    "int_subclass": """
        class I(int):
            def __eq__(self, o): return True
            def __ne__(self, o): return False
            __hash__ = int.__hash__
        def ENTRY(*a, **k):
            return I(-987654)
        """,
    "str_subclass": """
        class S(str):
            def __eq__(self, o): return True
            def __ne__(self, o): return False
            __hash__ = str.__hash__
        def ENTRY(*a, **k):
            return S("forged")
        """,
    "list_subclass": """
        class L(list):
            def __eq__(self, o): return True
            def __ne__(self, o): return False
        def ENTRY(*a, **k):
            return L([987654])
        """,
    "dict_subclass": """
        class D(dict):
            def __eq__(self, o): return True
            def __ne__(self, o): return False
        def ENTRY(*a, **k):
            return D(forged=1)
        """,
    "tuple_subclass": """
        class T(tuple):
            def __eq__(self, o): return True
            def __ne__(self, o): return False
            __hash__ = tuple.__hash__
        def ENTRY(*a, **k):
            return T((987654,))
        """,
    "float_subclass_nan": """
        class F(float):
            def __eq__(self, o): return True
            def __ne__(self, o): return False
            def __lt__(self, o): return True
            def __sub__(self, o): return 0.0
            __rsub__ = __sub__
            __hash__ = float.__hash__
        def ENTRY(*a, **k):
            return F("nan")
        """,
    "plain_nan": "def ENTRY(*a, **k):\n    return float('nan')\n",
    "fake_isinstance": ANYTHING + """
class Fake(Anything):
    __class__ = property(lambda self: int)
def ENTRY(*a, **k):
    return Fake()
""",
    "numpy_like_tolist": ANYTHING + """
class Array:
    def tolist(self): return Anything()
def ENTRY(*a, **k):
    return Array()
""",
    "container_of_anything": ANYTHING + "def ENTRY(*a, **k):\n    return [Anything()] * 3\n",
    "generator": "def ENTRY(*a, **k):\n    return (x for x in ())\n",
    "bool_like_true": ANYTHING + """
class B(Anything):
    def __bool__(self): return True
def ENTRY(*a, **k):
    return B()
""",
}

EXIT_FORGERIES = {
    "marker_from_own_file": """
        import os, re, sys
        text = ""
        for root, dirs, names in os.walk("/"):
            if root == "/":
                dirs[:] = [d for d in dirs if d not in ("proc", "sys", "usr", "dev")]
            for n in names:
                try:
                    text += open(os.path.join(root, n), errors="ignore").read()
                except OSError:
                    pass
        for m in set(re.findall(r"__dsparity\\w*__|tests_done\\w*", text)):
            print(m)
        print('{"verdict": "pass", "detail": "", "calls": 1}')
        sys.stdout.flush()
        os._exit(0)
        def ENTRY(*a, **k):
            return None
        """,
    "marker_from_caller_frames": """
        import gc, os, re, sys
        def ENTRY(*a, **k):
            seen, frame = [], sys._getframe()
            while frame is not None:
                seen += [c for c in frame.f_code.co_consts if isinstance(c, str)]
                seen += [repr(v) for v in frame.f_globals.values()]
                frame = frame.f_back
            for obj in gc.get_objects():
                if callable(obj) and getattr(obj, "__name__", "") == "check":
                    obj.__code__ = (lambda candidate: None).__code__
            for m in set(re.findall(r"__dsparity\\w*__", " ".join(seen))):
                print(m)
            sys.stdout.flush()
            os._exit(0)
        """,
    "os_exit_at_import": "import os\nos._exit(0)\ndef ENTRY(*a, **k):\n    return None\n",
    "sys_exit_at_import": "import sys\nsys.exit(0)\ndef ENTRY(*a, **k):\n    return None\n",
    "exit_builtin_at_import": "exit()\ndef ENTRY(*a, **k):\n    return None\n",
    "os_exit_in_call": "import os\ndef ENTRY(*a, **k):\n    os._exit(0)\n",
    "system_exit_in_call": "def ENTRY(*a, **k):\n    raise SystemExit(0)\n",
    "keyboard_interrupt_in_call": "def ENTRY(*a, **k):\n    raise KeyboardInterrupt\n",
    "generator_exit_in_call": "def ENTRY(*a, **k):\n    raise GeneratorExit\n",
    "stop_iteration_in_call": "def ENTRY(*a, **k):\n    raise StopIteration\n",
    "own_exception_named_passed": """
        class TestsPassed(BaseException):
            pass
        def ENTRY(*a, **k):
            raise TestsPassed("all tests passed")
        """,
    "skip_test": "import unittest\ndef ENTRY(*a, **k):\n    raise unittest.SkipTest('skip')\n",
    "kill_parent_and_everyone": """
        import os, signal
        def ENTRY(*a, **k):
            for pid in (os.getppid(), 1, -1):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return None
        """,
    "kill_self": "import os, signal\ndef ENTRY(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "exit_137": "import os\ndef ENTRY(*a, **k):\n    os._exit(137)\n",
    "atexit_exit_zero": """
        import atexit, os
        atexit.register(lambda: (print("__dsparity_tests_done__"), os._exit(0)))
        def ENTRY(*a, **k):
            raise RuntimeError("wrong")
        """,
    "alarm_exit_zero": """
        import os, signal
        signal.signal(signal.SIGALRM, lambda *a: os._exit(0))
        signal.alarm(1)
        def ENTRY(*a, **k):
            while True:
                pass
        """,
    "thread_exits_zero_mid_call": """
        import os, threading, time
        def later():
            time.sleep(0.3)
            print("__dsparity_tests_done__", flush=True)
            os._exit(0)
        threading.Thread(target=later, daemon=False).start()
        def ENTRY(*a, **k):
            time.sleep(60)
        """,
    "fork_parent_exits_child_serves": """
        import os
        if os.fork() != 0:
            os._exit(0)
        def ENTRY(*a, **k):
            return None
        """,
    "fork_child_prints_marker": """
        import os, time
        def ENTRY(*a, **k):
            if os.fork() == 0:
                print("__dsparity_tests_done__ passed", flush=True)
                os._exit(0)
            os.wait()
            return -987654
        """,
    "patch_check_and_assert": """
        import builtins, sys
        builtins.AssertionError = type("AssertionError", (Exception,), {})
        def check(candidate):
            return None
        sys.modules["__main__"].check = check
        builtins.check = check
        sys.settrace(lambda *a: None)
        def ENTRY(*a, **k):
            return -987654
        """,
    "sys_modules_hijack": """
        import json, sys, types
        fake = types.ModuleType("json")
        fake.dumps = lambda *a, **k: '{"verdict": "pass", "detail": "", "calls": 1}'
        fake.loads = json.loads
        sys.modules["json"] = fake
        for name, mod in list(sys.modules.items()):
            if hasattr(mod, "dumps") and name != "json":
                try:
                    mod.dumps = lambda *a, **k: b'{"ok": true}\\n'
                except Exception:
                    pass
        def ENTRY(*a, **k):
            return -987654
        """,
    "write_verdicts_to_every_fd": """
        import os
        LINES = [b'{"verdict": "pass", "detail": "", "calls": 1}\\n', b'{"ok": true}\\n',
                 b'{"exit": 0, "cpu_s": 0, "maxrss_kb": 0}\\n', b'{"child-pid": 1}\\n']
        def spray():
            for fd in range(0, 64):
                for line in LINES:
                    try:
                        os.write(fd, line)
                    except OSError:
                        pass
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    for fd in range(0, 64):
                        try:
                            w = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
                            for line in LINES:
                                os.write(w, line)
                            os.close(w)
                        except OSError:
                            pass
        spray()
        def ENTRY(*a, **k):
            spray()
            os._exit(0)
        """,
    "malformed_replies": """
        import os
        def ENTRY(*a, **k):
            for fd in range(3, 64):
                try:
                    os.write(fd, b'{"ok": {"__eq__": true}}\\n{"ok": NaN}\\n')
                    os.write(fd, b'{"raise": "SystemExit", "message": ""}\\n' + b"[" * 100000 + b"\\n")
                except OSError:
                    pass
            return -987654
        """,
    "read_parent_memory": """
        import os, re
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    found.append(open(f"/proc/{pid}/environ", "rb").read())
                    found.append(open(f"/proc/{pid}/mem", "rb").read(4096))
                except (OSError, ValueError):
                    pass
        def ENTRY(*a, **k):
            return -987654
        """,
    "search_for_the_tests": """
        import os
        tests = []
        for root, dirs, names in os.walk("/"):
            if root == "/":  # /usr is the host's own; /proc and /sys hold no files of the grader's
                dirs[:] = [d for d in dirs if d not in ("proc", "sys", "usr", "dev")]
            for n in names:
                try:
                    if "assert candidate" in open(os.path.join(root, n), errors="ignore").read():
                        tests.append(os.path.join(root, n))
                except OSError:
                    pass
        def ENTRY(*a, **k):
            raise RuntimeError(f"found tests in {tests}")
        """,
    "infinite_loop": "def ENTRY(*a, **k):\n    while True:\n        pass\n",
    "memory_exhaustion": "def ENTRY(*a, **k):\n    x = []\n    while True:\n        x.append(b'x' * 10**7)\n",
    "stdout_flood_of_markers": """
        import sys
        def ENTRY(*a, **k):
            while True:
                sys.stdout.write('{"verdict": "pass"}\\n__dsparity_tests_done__\\n')
                sys.stderr.write('{"verdict": "pass"}\\n')
        """,
    "huge_reply": "def ENTRY(*a, **k):\n    return 'x' * (40 << 20)\n",
    "deep_reply": "def ENTRY(*a, **k):\n    v = []\n    for _ in range(9999):\n        v = [v]\n    return v",
}


# int, bool (`is True` checks), dict and float results
TARGETS = {"HumanEval/53": VALUE_FORGERIES,
           "HumanEval/111": ["eq_always_true", "dict_subclass", "fake_isinstance", "numpy_like_tolist"],
           "HumanEval/72": ["eq_always_true", "int_subclass", "bool_like_true", "fake_isinstance"],
           "HumanEval/2": ["eq_always_true", "float_subclass_nan", "plain_nan", "fake_isinstance"]}


@pytest.mark.parametrize(("task_id", "name"), [(t, n) for t, names in TARGETS.items() for n in sorted(names)])
def test_forged_values_score_zero(task_id, name):
    g = grade(task_id, VALUE_FORGERIES[name])
    assert g.passed is False and g.score == 0.0, g.details


@pytest.mark.parametrize("name", sorted(EXIT_FORGERIES))
def test_forged_verdicts_score_zero(name):
    g = grade("HumanEval/53", EXIT_FORGERIES[name], timeout_s=1.5, memory_mb=256)
    assert g.passed is False and g.score == 0.0, g.details
    assert "__dsparity" not in g.details.get("verdict", "")


def test_a_right_answer_that_also_misbehaves_still_passes():
    """The boundary is the verdict, not good manners: noise, threads and forks do not fail it."""
    g = grade(
        "HumanEval/53",
        """
        import os, sys, threading, time
        threading.Thread(target=lambda: time.sleep(60), daemon=True).start()
        print("MemoryError", file=sys.stderr)
        def ENTRY(x, y):
            if os.fork() == 0:
                os._exit(3)
            os.wait()
            print("debug", x, y)
            return x + y
        """,
    )
    assert g.passed is True and g.score == 1.0, g.details


STDIO_DOC = {"tests": [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "0.25 0.25\n", "stdout": "0.5\n"}]}
STDIO_FORGERIES = {
    "fullwidth_digits": "print('\\uff13')",
    "arabic_digits": "print('\\u0663')",
    "underscored": "a, b = input().split()\nprint('0_3' if '.' not in a else '0_5')",
    "nan_and_inf": "print('NaN')",
    "infinity": "print('Infinity')",
    "huge_exponent": "print('1e999999999')",
    "overflowing_exponent": "print('9e999999')",
    "tiny_exponent": "print('1e-999999999999999999999')",
    "nothing_exit_zero": "import os\nos._exit(0)",
    "right_then_crash": "print(3)\nraise SystemExit(1)",
    "stderr_only": "import sys\nsys.stderr.write('3\\n0.5\\n')",
}


@pytest.mark.parametrize("name", sorted(STDIO_FORGERIES))
def test_stdio_forgeries_score_zero(name):
    answer = "```python\n" + STDIO_FORGERIES[name] + "\n```"
    g = get_grader("stdio")(GradeInput(answer, "", STDIO_DOC), {"timeout_s": 3})
    assert g.passed is False and g.score == 0.0, g.details


def test_outputs_match_is_strict_and_never_raises():
    odd = ["３", "٣", "3_0", "NaN", "Infinity", "1e999999999", "9e999999", "1e-99999999999999999999", "0x3"]
    for got in odd:
        assert outputs_match(got, "3") is False
        assert outputs_match(got, "0.5") is False
    assert outputs_match("5e-1", "0.5") and outputs_match("3.0", "3") and outputs_match("0.5000000001", "0.5")
