"""math-verify and multiple-choice graders against hand-labelled fixtures."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dsparity.evals.graders import GradeInput, get_grader

FIXTURES = Path(__file__).parent / "fixtures" / "graders"


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


MATH = _load("math.jsonl")
CHOICE = _load("choice.jsonl")


def test_fixture_counts():
    assert len(MATH) >= 50 and len(CHOICE) >= 50


def test_math_grader_agrees_with_labels():
    grader = get_grader("math")
    wrong = [
        (c["id"], c["note"])
        for c in MATH
        if grader(GradeInput(c["text"], c["target"], {}), {}).passed != c["expected"]
    ]
    assert not wrong


def test_math_records_both_pipelines_and_gold_field():
    grader = get_grader("math")
    g = grader(GradeInput("I computed 0.5 along the way. Answer: 1/3", "", {"answer": "\\frac{1}{3}"}), {})
    assert g.details["strict"] and g.details["gold"] == "\\frac{1}{3}"
    g = grader(
        GradeInput("so it is $\\frac{1}{2}$ overall", "7", {"solution_value": "\\frac12"}),
        {"gold_field": "solution_value", "primary": "strict"},
    )
    assert g.details["flexible"] and not g.details["strict"] and not g.passed
    g = grader(GradeInput("$\\boxed{2}$", "\\unparsable{", {}), {})
    assert g.passed is None and g.details["gold_unparsable"]


def test_math_outside_main_thread():
    out = {}

    def work():
        out["g"] = get_grader("math")(GradeInput("$\\boxed{\\frac{2}{4}}$", "\\frac{1}{2}", {}), {})

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out["g"].passed and out["g"].details["timeouts"].startswith("off")


def test_choice_grader_agrees_with_labels():
    grader = get_grader("choice")
    wrong = [
        (c["id"], c["note"], grader(GradeInput(c["text"], c["target"], c["doc"]), c["settings"]).details)
        for c in CHOICE
        if grader(GradeInput(c["text"], c["target"], c["doc"]), c["settings"]).passed != c["expected"]
    ]
    assert not wrong


@pytest.mark.parametrize(
    "text,strict,flexible",
    [
        ("Answer: B", "B", "B"),
        ("The answer is B", None, "B"),
        ("nothing here", None, None),
    ],
)
def test_choice_keeps_strict_and_flexible_apart(text, strict, flexible):
    g = get_grader("choice")(GradeInput(text, "B", {}), {})
    assert g.details["extracted_strict"] == strict and g.details["extracted_flexible"] == flexible


# One answer per answer grader, right as written: it must score 1 outside a think block and 0
# when it appears only while thinking (closed block, or an unclosed one cut off by the limit).
REASONING_CASES = [
    ("exact", "42", "42", {}, {}),
    ("needle", "7341", "7341", {}, {}),
    ("contains", "The capital is Paris.", "Paris", {}, {}),
    ("math", "Answer: \\boxed{\\frac{1}{3}}", "\\frac{1}{3}", {}, {}),
    ("choice", "Answer: C", "C", {"choices": ["a", "b", "c", "d"]}, {}),
    ("writing", "Parity holds.", "", {"constraints": [{"type": "keyword_count", "keyword": "parity",
                                                       "min": 1}]}, {}),
]


@pytest.mark.parametrize("grader, answer, target, doc, settings", REASONING_CASES,
                         ids=[c[0] for c in REASONING_CASES])
def test_an_answer_only_inside_reasoning_earns_nothing(grader, answer, target, doc, settings):
    grade = get_grader(grader)
    assert grade(GradeInput(answer, target, doc), settings).score == 1.0
    assert grade(GradeInput(f"<think>let me see</think>\n{answer}", target, doc), settings).score == 1.0
    for hidden in (f"<think>{answer}</think>", f"<think>{answer}</think>\n\n",
                   f"<THINK>I am sure: {answer}</THINK>I cannot tell.", f"<think>{answer}"):
        assert grade(GradeInput(hidden, target, doc), settings).score == 0.0, hidden

