"""Hostile answers for the answer graders: hedging across candidates, digit runs that hold the
value, answers that name several options. Each grader commits to one answer or refuses the hedge;
where it cannot yet, the test is a strict xfail that says why."""

from __future__ import annotations

import re

import pytest

from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.taskgen import longctx
from dsparity.evals.tasks import BUILTIN_TASKS

HAYSTACK = BUILTIN_TASKS / "longctx" / "haystack.json.gz"


@pytest.fixture(autouse=True)
def _private_task_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARITY_TASK_CACHE", str(tmp_path / "task-cache"))


@pytest.fixture(scope="module")
def multikey(tmp_path_factory):
    """Real niah_multikey items: one asked key, three other keys whose values the prompt shows."""
    from tiny_models import byte_tokenizer

    folder = tmp_path_factory.mktemp("bytetok")
    byte_tokenizer().save_pretrained(folder)
    (folder / "config.json").write_text("{}")
    return list(longctx.generate("longctx_niah_multikey", "niah_multikey", lengths=[1024], size=2,
                                 seed=3, tokenizer=str(folder), haystack=HAYSTACK))


def needle(text: str, row: dict):
    return get_grader("needle")(GradeInput(text, row["answer"], row), {})


def test_needle_honest_answer_passes(multikey):
    for row in multikey:
        g = needle(f"The special magic number for {row['keys'][0]} is {row['answer']}.", row)
        assert g.passed and g.score == 1.0 and g.details["hedged"] == [], g.details


def test_needle_listing_every_value_in_the_prompt_scores_zero(multikey):
    for row in multikey:
        shown = re.findall(r"special magic numbers for [\w-]+ is: (\d+)", row["prompt"])
        assert len(shown) == 4 and row["answer"] in shown
        for order in (shown, shown[::-1]):
            g = needle("The numbers are " + ", ".join(order) + ".", row)
            assert g.score == 0.0 and not g.passed, g.details
            assert sorted(g.details["hedged"]) == sorted(set(shown) - {row["answer"]})


def test_needle_value_inside_a_longer_digit_run_is_not_found(multikey):
    row = multikey[0]
    for text in (f"9{row['answer']}", f"{row['answer']}0", f"12{row['answer']}34"):
        g = needle(text, row)
        assert g.score == 0.0 and g.details["found"] == [], text
    assert needle(f"({row['answer']})", row).passed  # punctuation around it is fine


def test_needle_words_keep_rulers_substring_match():
    g = get_grader("needle")(GradeInput("KXQZT, ABCDE and PLMNO", "ABCDE | PLMNO", {}), {})
    assert g.passed
    g = get_grader("needle")(GradeInput("7341 then 7342", "7341", {"context": "a 7342 b"}), {})
    assert g.score == 0.0 and g.details["hedged"] == ["7342"]


@pytest.mark.parametrize("text,target", [
    ("The answer is 4 or 5", "4"), ("The answer is 4 or 5", "5"), ("4 or 5", "4"),
    ("Answer: 4. Or maybe 5.", "4"), ("5, 4", "5"),
])
def test_math_commits_to_one_value_per_pipeline(text, target):
    """Math-Verify reads one value per pipeline: a hedge passes at most one of any two targets."""
    other = "5" if target == "4" else "4"
    for primary in ("strict", "flexible"):
        a = get_grader("math")(GradeInput(text, target, {}), {"primary": primary}).passed
        b = get_grader("math")(GradeInput(text, other, {}), {"primary": primary}).passed
        assert not (a and b), (text, primary)


@pytest.mark.parametrize("text", ["Answer: A or B", "Answer: A|B|C|D", "Answer: A\nAnswer: B\nAnswer: C",
                                  "(A) (B) (C) (D)", "\\boxed{A}\\boxed{B}", "The answer is A, B, C or D"])
def test_choice_commits_to_one_letter(text):
    doc = {"choices": ["w", "x", "y", "z"]}
    passed = [get_grader("choice")(GradeInput(text, t, doc), {}).passed for t in "ABCD"]
    assert sum(passed) <= 1, (text, passed)


@pytest.mark.parametrize("text", ["The answer is 4 or 5", "4\n5", "4 (or 5)", "5... no, 4"])
def test_exact_commits_to_one_number(text):
    passed = [get_grader("exact")(GradeInput(text, t, {}), {}).passed for t in ("4", "5")]
    assert sum(passed) <= 1, (text, passed)


@pytest.mark.xfail(strict=True, reason=(
    "open: `contains` accepts any whole-word mention, and its docs (default_basics) list no "
    "distractors, so 'Paris or London or Rome' earns Paris, London and Rome alike"))
def test_contains_refuses_a_hedge_across_candidates():
    text = "Paris or London or Rome"
    passed = [get_grader("contains")(GradeInput(text, t, {}), {}).passed for t in ("Paris", "London", "Rome")]
    assert sum(passed) <= 1, passed
