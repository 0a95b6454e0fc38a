"""Writing constraints and the long-form novel checks."""

from __future__ import annotations

import random

import pytest

from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.graders.writing import count_words, longest_repeat, script_share

ESSAY = """# Introduction
Sparse attention keeps quality while saving compute.

# Method
We select the top keys per query. Attention then runs on them only.

# Conclusion
Parity holds on our tests. Thank you for reading."""


def _grade(text, constraints):
    return get_grader("writing")(GradeInput(text, "", {"constraints": constraints}), {})


@pytest.mark.parametrize(
    "constraint,ok",
    [
        ({"type": "min_chars", "value": 100}, True),
        ({"type": "max_chars", "value": 100}, False),
        ({"type": "min_words", "value": 30}, True),
        ({"type": "max_words", "value": 20}, False),
        ({"type": "sections", "headings": ["Introduction", "Method", "Conclusion"]}, True),
        ({"type": "sections", "headings": ["Introduction", "Results"]}, False),
        ({"type": "keyword_count", "keyword": "attention", "min": 2, "max": 3}, True),
        ({"type": "keyword_count", "keyword": "attention", "min": 3}, False),
        ({"type": "keyword_count", "keyword": "parity", "max": 0}, False),
        ({"type": "language", "value": "en"}, True),
        ({"type": "language", "value": "zh"}, False),
        ({"type": "no_commas"}, True),
        ({"type": "ends_with", "value": "Thank you for reading."}, True),
        ({"type": "ends_with", "value": "Goodbye."}, False),
        ({"type": "starts_with", "value": "# Introduction"}, True),
        ({"type": "forbidden_words", "value": ["dense"]}, True),
        ({"type": "min_paragraphs", "value": 3}, True),
        ({"type": "bogus"}, False),
    ],
)
def test_each_constraint(constraint, ok):
    g = _grade(ESSAY, [constraint])
    assert g.passed is ok, g.details


def test_score_is_the_fraction_satisfied_and_reasoning_is_stripped():
    g = _grade(
        "<think>lots, of, commas</think>" + ESSAY, [{"type": "no_commas"}, {"type": "max_words", "value": 5}]
    )
    assert g.score == 0.5 and not g.passed
    assert g.details["constraints"][0]["ok"]
    assert _grade("", [{"type": "min_chars", "value": 1}]).details["empty"]


def test_chinese_text():
    zh = "第一章\n夜色渐深，城市的灯火一盏盏亮起。她站在窗前，想起了很多往事。"
    assert script_share(zh, "zh") > 0.9 and script_share(zh, "en") == 0
    assert count_words("你好 world") == 3
    g = _grade(
        zh,
        [
            {"type": "language", "value": "zh"},
            {"type": "no_commas"},
            {"type": "keyword_count", "keyword": "往事", "min": 1},
        ],
    )
    assert [c["ok"] for c in g.details["constraints"]] == [True, False, True]


def _novel(n_chars: int, every: int, *, skip=(), off_by=0, stated_shift=0, degenerate=False) -> str:
    rng = random.Random(0)
    words = [
        "river",
        "lantern",
        "orchard",
        "whisper",
        "harbor",
        "ember",
        "meadow",
        "violet",
        "quiet",
        "storm",
    ]
    out, k = [], 1
    length = 0
    while length < n_chars:
        if length >= every * k + off_by:
            if k not in skip:
                line = f"[Reminder: {every * k + stated_shift:,} characters]\n"
                out.append(line)
                length += len(line)
            k += 1
            continue
        sentence = (
            "The same line again and again. "
            if degenerate
            else " ".join(rng.choice(words) for _ in range(12)).capitalize() + ".\n"
        )
        out.append(sentence)
        length += len(sentence)
    return "".join(out)


def test_longform_perfect_novel():
    text = _novel(100_500, 10_000)
    g = get_grader("longform")(GradeInput("<think>plan</think>" + text, "", {}), {})
    d = g.details
    assert d["length_ok"] and d["recall"] == 1.0 and d["stated_count_accuracy"] == 1.0 and g.passed
    assert len(d["expected_positions"]) == 10 and d["spurious"] == 0
    assert len(d["windows"]) == 11 and d["longest_repeat_chars"] < 200


def test_longform_failures_are_reported():
    grader = get_grader("longform")
    short = grader(GradeInput(_novel(50_000, 10_000), "", {"target_chars": 100_000}), {})
    assert not short.details["length_ok"] and not short.passed
    missing = grader(
        GradeInput(_novel(30_500, 5_000, skip={2, 4}), "", {}),
        {"target_chars": 30_000, "reminder_every": 5_000, "tolerance": 300},
    )
    assert missing.details["recall"] == pytest.approx(4 / 6, abs=1e-3)
    late = grader(
        GradeInput(_novel(20_500, 5_000, off_by=2_000), "", {}),
        {"target_chars": 20_000, "reminder_every": 5_000, "tolerance": 500},
    )
    assert late.details["recall"] == 0 and late.details["spurious"] == 3  # at 7k, 12k, 17k
    lying = grader(
        GradeInput(_novel(20_500, 5_000, stated_shift=3_000), "", {}),
        {"target_chars": 20_000, "reminder_every": 5_000, "tolerance": 500},
    )
    assert lying.details["recall"] == 1 and lying.details["stated_count_accuracy"] == 0


def test_longform_degeneration_stats():
    g = get_grader("longform")(
        GradeInput(_novel(20_500, 10_000, degenerate=True), "", {}), {"target_chars": 20_000}
    )
    assert g.details["max_repeated_50gram_share"] > 0.9
    assert g.details["windows"][0]["compression_ratio"] < 0.05
    assert g.details["longest_repeat_chars"] > 5_000


def test_longest_repeat():
    assert longest_repeat("abcabcab") == 5
    assert longest_repeat("abcd") == 0
    assert longest_repeat("banana") == 3


def test_chinese_reminders_with_wan():
    body = "字" * 9_990
    text = f"{body}\n【进度提醒：已写1万字】\n{body}\n【进度提醒：已写20,000字】\n"
    g = get_grader("longform")(GradeInput(text, "", {}), {"target_chars": 20_000, "reminder_every": 10_000})
    assert [r["stated"] for r in g.details["reminders"]] == [10_000, 20_000]
    assert g.details["recall"] == 1.0


def test_longform_judges_excerpts_when_a_rubric_and_judge_are_set(monkeypatch):
    import json

    from loopback import ServerThread, scripted_app

    from dsparity.evals.graders.judge import close_judges

    monkeypatch.delenv("DSPARITY_JUDGE", raising=False)
    text = _novel(20_500, 10_000)
    plain = get_grader("longform")(GradeInput(text, "", {}), {"target_chars": 20_000, "rubric": "Rate it."})
    assert plain.details["quality"] is None  # no judge configured: structure only
    seen = []

    def judge(prompt: str) -> str:
        seen.append(prompt)
        return json.dumps({"score": 7, "reason": "readable"})

    try:
        with ServerThread(scripted_app(judge, model="judge")) as server:
            g = get_grader("longform")(
                GradeInput(text, "", {"prompt": "Write a novel."}),
                {
                    "target_chars": 20_000,
                    "rubric": "Rate the prose from {{ scale_min }} to {{ scale_max }}.",
                    "judge": f"openai:judge@{server.base_url}",
                    "excerpt_chars": 500,
                },
            )
    finally:
        close_judges()
    assert g.details["quality"]["score"] == pytest.approx(6 / 9)
    assert g.score == plain.score  # quality is reported beside the structural score, not in it
    assert "Rate the prose from 1 to 10." in seen[0] and seen[0].count("[…]") == 2
