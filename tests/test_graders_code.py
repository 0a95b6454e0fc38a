"""Code graders against hand-labelled fixtures, stdin/stdout tests, pass@k."""

from __future__ import annotations

import json
import math
import os
from itertools import combinations
from pathlib import Path

import pytest

from dsparity.evals.graders import GradeInput, get_grader, sandbox
from dsparity.evals.graders.code import extract_code, outputs_match
from dsparity.evals.stats.pass_rates import pass_at_k, pass_at_k_table

FIXTURES = Path(__file__).parent / "fixtures" / "graders"
needs_sandbox = pytest.mark.skipif(
    sandbox.bwrap_path() is None or not os.access("/usr/bin/python3", os.X_OK),
    reason="bubblewrap or Debian's /usr/bin/python3 absent (scripts/setup installs them)",
)
CASES = [json.loads(line) for line in (FIXTURES / "code.jsonl").read_text().splitlines() if line.strip()]


def test_fixture_count():
    assert len(CASES) >= 50


@needs_sandbox
def test_code_grader_agrees_with_labels():
    grader = get_grader("code")
    wrong = []
    for case in CASES:
        g = grader(GradeInput(case["text"], "", case["doc"], case["finish_reason"]), case["settings"])
        if g.passed != case["expected"]:
            wrong.append((case["id"], case["note"], g.details["status"], g.details["stderr"][-300:]))
    assert not wrong, wrong


def test_extract_code():
    assert extract_code("a\n```python\nx=1\n```\nb\n```python\nx=2\n```") == "x=2\n"
    assert extract_code("```\nuntagged\n```\n```text\nnot code\n```") == "untagged\n"
    assert extract_code("```js\nlet a\n```\n```python\nok\n```\n```bash\nls\n```") == "ok\n"
    assert extract_code("plain") == "plain"
    # The grader sees the final answer: GradeInput cut the reasoning away before extraction.
    assert extract_code(GradeInput("<think>```python\nbad\n```</think>done", "", {}).text) == "done"


@needs_sandbox
def test_stdio_grader():
    grader = get_grader("stdio")
    doc = {
        "tests": [
            {"stdin": "1 2\n", "stdout": "3\n"},
            {"stdin": "10 -4\n", "stdout": "6"},
            {"stdin": "100000000000000000 1\n", "stdout": "100000000000000001\n"},
        ]
    }
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    g = grader(GradeInput(good, "", doc), {})
    assert g.passed and g.score == 1.0
    float_sum = "```python\na, b = map(float, input().split())\nprint(a + b)\n```"
    g = grader(GradeInput(float_sum, "", doc), {})
    # 3.0 == 3 as Decimals, but 1e+17 is not 100000000000000001 (no float closeness for integers)
    assert [t["verdict"] for t in g.details["tests"]] == ["AC", "AC", "WA"]
    half = "```python\na, b = map(int, input().split())\nprint(a + b if a < 5 else a - b)\n```"
    g = grader(GradeInput(half, "", doc), {})
    assert g.score == pytest.approx(1 / 3) and not g.passed
    loop = "```python\nwhile True: pass\n```"
    g = grader(GradeInput(loop, "", doc), {"timeout_s": 1, "stop_after_timeouts": 1})
    assert [t["verdict"] for t in g.details["tests"]] == ["TLE", "skipped", "skipped"]
    crash = "```python\nraise SystemExit(2)\n```"
    assert grader(GradeInput(crash, "", doc), {}).details["tests"][0]["verdict"] == "RE"


def test_outputs_match():
    assert outputs_match("1 2 \n3\n\n", "1 2\n3")
    assert outputs_match("0.3333333333", "0.33333333333")
    assert outputs_match("3.0", "3") and not outputs_match("0.34", "0.33333")
    assert not outputs_match("5e16", "50000000000000001")
    assert not outputs_match("3", "4")
    assert not outputs_match("1 2", "1 2 3")


def test_pass_at_k_matches_the_combinatorial_definition():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                brute = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(brute)
    outcomes = [True, False, False, True, False]
    subsets = list(combinations(outcomes, 2))
    assert pass_at_k(5, 2, 2) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    table = pass_at_k_table(
        {"a": [True, False, False, False], "b": [True] * 4, "c": [False] * 2}, ks=(1, 2, 4)
    )
    assert table == {1: pytest.approx((0.25 + 1 + 0) / 3), 2: pytest.approx((0.5 + 1 + 0) / 3)}
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_code_grader_refuses_without_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    case = CASES[0]
    with pytest.raises(sandbox.SandboxUnavailable):
        get_grader("code")(GradeInput(case["text"], "", case["doc"]), {})


def test_pass_at_k_by_task_counts_an_items_repeats_as_its_samples():
    from dsparity.evals.stats.pass_rates import pass_at_k_by_task

    rows = [("he", d, d == 0 or r == 0) for d in range(2) for r in range(4)]
    assert pass_at_k_by_task(rows, repeats=4, ks=(1, 2)) == {
        "he": {"pass@1": pytest.approx((1 + 0.25) / 2), "pass@2": pytest.approx((1 + 0.5) / 2)}}
    assert pass_at_k_by_task([*rows, ("judged", 0, None)], repeats=4, ks=(1,))["he"]  # a scale: no pass@k
    assert "judged" not in pass_at_k_by_task([("judged", 0, None), ("judged", 0, True)], repeats=2)


def test_call_protocol_rebuilds_values_from_builtins_only():
    import io
    from decimal import Decimal
    from fractions import Fraction

    from dsparity.evals.graders.callproto import ProtocolError, decode, encode, frame, read_message

    values = [None, True, 0, -(10**400), 2.5, -0.0, float("inf"), "é\ud800", b"\x00:;", [1, [2]], (1, (2,)),
              {1: "a", (2, 3): [4]}, {1, 2}, frozenset({3}), 1 + 2j, Fraction(1, 3), Decimal("0.1")]
    for v in values:
        back = decode(read_message(io.BytesIO(frame(encode(v)))))
        assert back == v and type(back) is type(v) and repr(back) == repr(v)
    nan = decode(encode(float("nan")))
    assert type(nan) is float and nan != nan

    class Sneaky(int):
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError):
        encode(Sneaky(1))  # the judge's side passes exact builtins only
    assert type(decode(encode(Sneaky(7), lenient=True))) is int  # the answer's side: its real value
    with pytest.raises(TypeError):
        encode(object(), lenient=True)
    for bad in [b"", b"X", b"i;", b"i1_0;", b"i 10;", b"i0x10;", b"s5:abc", b"s-1:", b"l2;N", b"NN",
                b"S1;l0;", b"q i1;i0;", b"qi1;i0;", b"cf0x1p+0;i1;", b"d1;N", b"l99999999999;", b"D3:abc",
                b"l1;" * 200 + b"N"]:
        with pytest.raises(ProtocolError):
            decode(bad)
    for bad_frame in [b"5:abc", b"x:", b"99999999999:", b"3"]:
        with pytest.raises(ProtocolError):
            read_message(io.BytesIO(bad_frame))
