"""Code graders: HumanEval-style function tests and stdin/stdout tests, run in the bubblewrap sandbox.

Both refuse to run anything when bubblewrap is missing (`SandboxUnavailable` propagates: a
grade is never produced by running model code unsandboxed).

What a pass rests on. Function tests: the answer's program and the tests run in two sandboxes that
share only two pipes; the verdict comes from the tests' sandbox on a third pipe the answer never
holds, and return values cross as plain data rebuilt from builtins (`callproto.py`). stdin/stdout
tests: the expected output never enters the sandbox, and the comparison (`outputs_match`) runs on
the host over the captured bytes. In both, the status (timeout, memory, ...) comes from how the
program ended (`sandbox.py`), never from what it printed.
"""

from __future__ import annotations

import contextlib
import decimal
import io
import os
import re
import textwrap
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from dsparity.evals.graders import callproto
from dsparity.evals.graders.base import Grade, GradeInput, register
from dsparity.evals.graders.sandbox import MEMORY_EVIDENCE, Sandbox, SandboxResult, preflight, run_program

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3"}
_MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""")
_FUTURE = re.compile(r"^from\s+__future__\s+import\b")
_TAIL = 2000  # characters of stdout/stderr kept in details
_CALLPROTO = Path(__file__).with_name("callproto.py")
# a number token: ASCII digits only (Decimal() would also take "1_0", "٣" or "Infinity")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,6})?")


def extract_code(text: str, language: str = "python") -> str:
    """The program in an answer: the last fenced block tagged with the language, else the last
    untagged fenced block, else the whole answer. `text` is the final answer (`GradeInput.text`:
    reasoning already cut away)."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    tags = _PY_TAGS if language == "python" else {language.lower(), "js", "javascript"}
    tagged = [body for tag, body in blocks if tag in tags]
    if tagged:
        return tagged[-1]
    untagged = [body for tag, body in blocks if not tag]
    if untagged:
        return untagged[-1]
    return text


def drop_main_block(code: str) -> str:
    """Remove top-level `if __name__ == "__main__":` blocks (demo code that reads stdin or prints
    would otherwise run before the tests)."""
    out, skipping = [], False
    for line in code.splitlines():
        if _MAIN_GUARD.match(line):
            skipping = True
            continue
        if skipping and line.strip() and not line[0].isspace():
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out)


def assemble_humaneval(answer: str, prompt: str, entry_point: str) -> tuple[str, str]:
    """(program, how): the prompt plus the answer's full definition, or the prompt plus the
    answer as the function's body when the answer does not define `entry_point` itself."""
    code = drop_main_block(extract_code(answer)).rstrip()
    if not prompt.strip():
        return f"{textwrap.dedent(code)}\n", "full"
    if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        # the prompt first keeps its imports and helpers; the answer's def replaces the stub;
        # `from __future__` lines must stay first in a module
        code = textwrap.dedent(code)
        future = [ln for ln in code.splitlines() if _FUTURE.match(ln)]
        rest = "\n".join(ln for ln in code.splitlines() if not _FUTURE.match(ln))
        head = "\n".join(future) + "\n" if future else ""
        return f"{head}{prompt.rstrip()}\n    pass\n\n{rest}\n", "full"
    body = code.strip("\n")
    first = next((ln for ln in body.splitlines() if ln.strip()), "")
    if first and not first[0].isspace():
        body = textwrap.indent(body, "    ")
    if not body.strip():
        body = "    pass"
    return f"{prompt.rstrip()}\n{body}\n", "body"


@register("code")
def code(sample: GradeInput, settings: dict) -> Grade:
    """HumanEval-style function tests in the sandbox.

    doc fields: `prompt` (signature + docstring, as in HumanEval.jsonl), `test` (defines
    `check(candidate)`), `entry_point` (the function name).
    settings: `timeout_s` (default 10), `memory_mb` (default 512).
    The program is the last fenced python block (else the raw answer); when it does not define
    `entry_point` it is taken as the body and appended to `prompt`. The program and the tests run in
    two sandboxes (`run_function_tests`): it passes only when the tests' own sandbox reports that
    `check` returned, which nothing the program does can fake.
    """
    preflight()
    doc = sample.doc
    program, how = assemble_humaneval(sample.text, doc.get("prompt", ""), doc["entry_point"])
    run = run_function_tests(
        program,
        doc.get("prompt", ""),
        doc["test"],
        doc["entry_point"],
        timeout_s=float(settings.get("timeout_s", 10)),
        memory_mb=int(settings.get("memory_mb", 512)),
    )
    return Grade(
        float(run.passed is True),
        run.passed,
        {
            "status": run.status,
            "sandbox_status": run.answer.status,
            "verdict": run.verdict.get("detail") or run.verdict.get("verdict", ""),
            "calls": run.verdict.get("calls", 0),
            "assembled": how,
            "exit_code": run.answer.exit_code,
            "wall_s": run.tests.wall_s,
            "stderr": run.answer.stderr[-_TAIL:],
            "stdout": run.answer.stdout[-_TAIL:],
            "tests_stderr": run.tests.stderr[-_TAIL:],
            "program": program[:20000],
            "truncated": sample.finish_reason == "length",
            "limits": run.answer.limits,
        },
    )


@dataclass
class FunctionTestRun:
    passed: bool | None  # None: the machine failed (a sandbox did not start), not the answer
    status: str  # passed / wrong_answer / raised / exited_early / timeout / memory / ... / sandbox_error
    verdict: dict[str, Any]  # the tests' sandbox's own report
    answer: SandboxResult
    tests: SandboxResult


def run_function_tests(
    program: str, prompt: str, test: str, entry_point: str, *, timeout_s: float = 10, memory_mb: int = 512
) -> FunctionTestRun:
    """Run `check(entry_point)` with the answer's program and the tests in two sandboxes.

    The answer's sandbox runs `program` and serves calls; the tests' sandbox runs the task's
    `prompt` (for its helpers) and `test`, and calls `check` with a stand-in that forwards each call
    over a pipe (`callproto.py`). Return values come back as plain data rebuilt from builtins, and
    the verdict comes back on a pipe only the tests' sandbox holds: the program cannot read the
    tests, patch `check` or `assert`, print a success marker, exit early with 0, or return an
    object that equals everything.
    """
    proto = _CALLPROTO.read_bytes()
    problem = callproto.encode({"prompt": prompt, "test": test, "entry_point": entry_point})
    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb}
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    host_ends = [req_r, req_w, resp_r, resp_w, verdict_w]
    try:
        with (
            Sandbox({"main.py": program, "callproto.py": proto}, **limits) as answer_box,
            Sandbox({"callproto.py": proto, "problem.bin": problem}, **limits) as tests_box,
        ):
            serve = ["serve", str(req_r), str(resp_w), "/sandbox/main.py", entry_point]
            answer_box.start("callproto.py", serve, pass_fds=(req_r, resp_w))
            judge = ["judge", str(req_w), str(resp_r), str(verdict_w)]
            tests_box.start("callproto.py", judge, pass_fds=(req_w, resp_r, verdict_w), ours=True)
            while host_ends:  # only the sandboxes hold the pipes now: EOF when either is gone
                os.close(host_ends.pop())
            tests = tests_box.wait()
            answer = answer_box.stop()
        verdict = _read_verdict(verdict_r)
    finally:
        for fd in (*host_ends, verdict_r):
            os.close(fd)
    passed, status = _judge_outcome(verdict, answer, tests, memory_mb)
    return FunctionTestRun(passed, status, verdict, answer, tests)


def _read_verdict(fd: int) -> dict[str, Any]:
    """The tests' sandbox's one line (it has ended, so this does not block)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(OSError):
        while (chunk := os.read(fd, 65536)) and len(data) < 1 << 20:
            data += chunk
    try:
        verdict = callproto.decode(callproto.read_message(io.BytesIO(data)) or b"")
    except callproto.ProtocolError:
        return {}
    return verdict if isinstance(verdict, dict) else {}


def _judge_outcome(
    verdict: dict[str, Any], answer: SandboxResult, tests: SandboxResult, memory_mb: int
) -> tuple[bool | None, str]:
    """(passed, status): a pass needs the tests' sandbox to have ended normally and said so; the
    rest only names the failure, from how the two sandboxes ended."""
    if "sandbox_error" in (tests.status, answer.status):
        return None, "sandbox_error"  # the machine's failure, not the model's
    if tests.status == "ok" and verdict.get("verdict") == "pass":
        return True, "passed"
    for status in (answer.status, tests.status):
        if status in _LIMITS:
            return False, status
    if (answer.peak_mb or 0) >= MEMORY_EVIDENCE * memory_mb:
        return False, "memory"  # e.g. a MemoryError inside the function, reported as raised
    if verdict.get("verdict") == "candidate":  # the program ended, or broke the protocol
        return False, {"ok": "exited_early", "stopped": "runtime_error"}.get(answer.status, answer.status)
    return False, _VERDICT_STATUS.get(verdict.get("verdict"), "runtime_error")


_LIMITS = ("timeout", "memory", "output_limit")
_VERDICT_STATUS = {
    "fail": "wrong_answer",
    "raised": "raised",
    "candidate": "runtime_error",
    "error": "test_error",
}


def outputs_match(got: str, expected: str, *, tol: float = 1e-6) -> bool:
    """Line-by-line after trimming trailing whitespace; then token-wise with numbers compared as
    Decimals (LiveCodeBench): exactly equal (`3.0` == `3`, but `5e16` != `50000000000000001`),
    or within `tol` (absolute or relative) when the expected token is a decimal fraction. Only plain
    ASCII numbers count as numbers, and no output can make the comparison raise."""
    a = [ln.rstrip() for ln in got.strip().splitlines()]
    b = [ln.rstrip() for ln in expected.strip().splitlines()]
    if a == b:
        return True
    ta, tb = got.split(), expected.split()
    if len(ta) != len(tb):
        return False
    with decimal.localcontext() as ctx:
        ctx.traps = dict.fromkeys(ctx.traps, False)  # overflow gives Infinity, never an exception
        ctx.Emax, ctx.Emin = decimal.MAX_EMAX, decimal.MIN_EMIN
        return all(x == y or _numbers_match(x, y, tol) for x, y in zip(ta, tb, strict=True))


def _numbers_match(x: str, y: str, tol: float) -> bool:
    if not (_NUMBER.fullmatch(x) and _NUMBER.fullmatch(y)):
        return False
    dx, dy = Decimal(x), Decimal(y)
    if dx == dy:
        return True
    if "." not in y:
        return False
    diff = abs(dx - dy)
    return diff.is_finite() and diff <= Decimal(str(tol)) * max(abs(dy), Decimal(1))


@register("stdio")
def stdio(sample: GradeInput, settings: dict) -> Grade:
    """stdin/stdout tests in the sandbox (LiveCodeBench/APPS style).

    doc fields: `tests`: `[{"stdin": str, "stdout": str}, ...]`.
    settings: `timeout_s` per test (default 6), `memory_mb` (default 512), `max_tests` (all),
    `stop_after_timeouts` (default 2: after that many timeouts the rest count as failed, unrun).
    score = fraction of tests passed; passed = all passed. Per-test status: AC / WA / TLE / MLE /
    RE / OLE / SE.
    """
    preflight()
    program = extract_code(sample.text)  # a stdin program's `__main__` block is the program: keep it
    tests = list(sample.doc.get("tests") or [])[: settings.get("max_tests")]
    timeout_s = float(settings.get("timeout_s", 6))
    memory_mb = int(settings.get("memory_mb", 512))
    stop_after = int(settings.get("stop_after_timeouts", 2))
    verdicts, timeouts = [], 0
    for case in tests:
        if timeouts >= stop_after:
            verdicts.append({"verdict": "skipped"})
            continue
        r = run_program(program, stdin=case.get("stdin", ""), timeout_s=timeout_s, memory_mb=memory_mb)
        verdict = _VERDICT.get(r.status, "RE")
        if r.status == "ok":
            verdict = "AC" if outputs_match(r.stdout, case.get("stdout", "")) else "WA"
        timeouts += verdict == "TLE"
        verdicts.append(
            {"verdict": verdict, "wall_s": r.wall_s, "stdout": r.stdout[:300], "stderr": r.stderr[-300:]}
        )
    passed = sum(v["verdict"] == "AC" for v in verdicts)
    score = passed / len(tests) if tests else 0.0
    machine_failed = any(v["verdict"] == "SE" for v in verdicts)
    return Grade(
        score,
        None if machine_failed else bool(tests) and passed == len(tests),
        {
            "tests": verdicts,
            "passed": passed,
            "total": len(tests),
            "program": program[:20000],
            "truncated": sample.finish_reason == "length",
        },
    )


_VERDICT = {
    "timeout": "TLE",
    "memory": "MLE",
    "runtime_error": "RE",
    "output_limit": "OLE",
    "sandbox_error": "SE",
}
