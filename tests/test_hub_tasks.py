"""The hub suites against their datasets' real schemas, from local caches built here (no network).

Each dataset gets a few rows with the real column names and Arrow types (dataset cards:
math-ai/aime25, Idavidrein/gpqa `gpqa_diamond`, TIGER-Lab/MMLU-Pro, MathArena/hmmt_feb_2025,
google/IFEval; LiveCodeBench's `test6.jsonl` rows), written where `load_dataset(path, name,
split)` / `hf_hub_download` look with HF_HUB_OFFLINE=1. Each task then loads through lm-eval and
its grader passes a right answer and fails a wrong one.
"""

from __future__ import annotations

import json

import pytest
from hub_cache import (
    hub_home_fixture,  # noqa: F401  (the `hub_home` fixture)
    write_dataset,
    write_hub_file,
)

from dsparity.errors import DsparityError
from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.tasks import load_tasks


def _grade(spec, item, text):
    return get_grader(spec.grader)(GradeInput(text, item.target, item.doc), spec.settings)


def _features(spec: dict):
    import datasets

    def one(v):
        if isinstance(v, list):
            return [one(v[0])] if isinstance(v[0], dict) else datasets.Sequence(one(v[0]))
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        return datasets.Value(v)

    return datasets.Features({k: one(v) for k, v in spec.items()})


@pytest.mark.usefixtures("hub_home")
def test_aime25_loads_and_grades():
    rows = [{"problem": "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b.$",
             "answer": "70", "id": "0"},
            {"problem": "Compute $2^{10} \\bmod 1000$.", "answer": "24", "id": "1"}]
    write_dataset("math-ai/aime25", "default", {"test": rows},
                  _features({"problem": "string", "answer": "string", "id": "string"}))
    spec = load_tasks(names=["hub_aime25"])[0]
    assert spec.n_docs == 2 and spec.items[0].target == "70"
    assert rows[0]["problem"] in spec.items[0].request.messages[-1][1]
    assert _grade(spec, spec.items[0], "So the bases sum to $\\boxed{70}$.").passed
    assert not _grade(spec, spec.items[0], "$\\boxed{49}$").passed


GPQA_COLUMNS = {  # the gpqa_diamond CSV's columns and the types the hub's parquet export gives them
    "Pre-Revision Question": "string", "Pre-Revision Correct Answer": "string",
    "Pre-Revision Incorrect Answer 1": "string", "Pre-Revision Incorrect Answer 2": "string",
    "Pre-Revision Incorrect Answer 3": "string", "Pre-Revision Explanation": "string",
    "Self-reported question-writing time (minutes)": "float64", "Question": "string",
    "Correct Answer": "string", "Incorrect Answer 1": "string", "Incorrect Answer 2": "string",
    "Incorrect Answer 3": "string", "Explanation": "string", "Subdomain": "string",
    "Writer's Difficulty Estimate": "string", "Non-Expert Validator Accuracy": "float64",
    "Expert Validator Accuracy": "float64", "Record ID": "string", "High-level domain": "string",
    "Is First Validation_EV_1": "bool", "Validator Answered Correctly_EV_1": "int64",
    "Manual Correctness Adjustment_NEV_1": "null", "Canary String": "string",
}


@pytest.mark.usefixtures("hub_home")
def test_gpqa_diamond_loads_and_grades():
    def row(i, q, right, wrong):
        r = {k: None for k in GPQA_COLUMNS}
        r.update({"Question": q, "Correct Answer": right, "Incorrect Answer 1": wrong[0],
                  "Incorrect Answer 2": wrong[1], "Incorrect Answer 3": wrong[2],
                  "Record ID": f"rec{i}", "High-level domain": "Physics", "Subdomain": "Optics",
                  "Self-reported question-writing time (minutes)": 12.0,
                  "Is First Validation_EV_1": True, "Validator Answered Correctly_EV_1": 1,
                  "Expert Validator Accuracy": 1.0})
        return r

    rows = [row(0, "Which particle mediates the electromagnetic force?", " The photon\n",
                ["The gluon", "The W boson", "The graviton"]),
            row(1, "What is the SI unit of inductance?", "henry", ["tesla", "weber", "farad"])]
    write_dataset("Idavidrein/gpqa", "gpqa_diamond", {"train": rows}, _features(GPQA_COLUMNS))
    spec = load_tasks(names=["hub_gpqa_diamond"])[0]
    item = spec.items[0]
    prompt = item.request.messages[-1][1]
    letter = item.target
    assert letter in "ABCD" and f"({letter}) The photon\n" in prompt  # stripped, in its shuffled place
    assert _grade(spec, item, f"Photons carry it.\nAnswer: {letter}").passed
    assert not _grade(spec, item, f"Answer: {'B' if letter == 'A' else 'A'}").passed


@pytest.mark.usefixtures("hub_home")
def test_mmlu_pro_loads_and_grades():
    feats = _features({"question_id": "int64", "question": "string", "options": ["string"],
                       "answer": "string", "answer_index": "int64", "cot_content": "string",
                       "category": "string", "src": "string"})
    options = [f"option {c}" for c in "abcdefghij"]
    test = [{"question_id": 70 + i, "question": f"Question {i}?", "options": options, "answer": "CJ"[i],
             "answer_index": [2, 9][i], "cot_content": "", "category": "math", "src": "ori_mmlu"}
            for i in range(2)]
    val = [{**test[0], "question_id": 1, "cot_content": "A: Let's think step by step. It is (C)."}]
    write_dataset("TIGER-Lab/MMLU-Pro", "default", {"test": test, "validation": val}, feats)
    spec = load_tasks(names=["hub_mmlu_pro"])[0]
    item = spec.items[1]
    assert item.target == "J" and "(J) option j" in item.request.messages[-1][1]
    assert _grade(spec, item, "Reasoning...\nAnswer: J").passed
    assert not _grade(spec, item, "Answer: C").passed


@pytest.mark.usefixtures("hub_home")
def test_hmmt_feb25_loads_and_grades():
    rows = [{"problem_idx": 1, "problem": "Compute $\\sum_{k=1}^{4} k$.", "answer": "10",
             "problem_type": ["Algebra"]},
            {"problem_idx": 2, "problem": "Compute $\\frac{1}{2}+\\frac{1}{3}$.", "answer": "\\frac{5}{6}",
             "problem_type": ["Algebra", "Number Theory"]}]
    write_dataset("MathArena/hmmt_feb_2025", "default", {"train": rows},
                  _features({"problem_idx": "int64", "problem": "string", "answer": "string",
                             "problem_type": ["string"]}))
    spec = load_tasks(names=["hub_hmmt_feb25"])[0]
    item = spec.items[1]
    assert item.target == "\\frac{5}{6}"
    assert _grade(spec, item, "The sum is $\\boxed{\\dfrac{5}{6}}$.").passed
    assert not _grade(spec, item, "$\\boxed{\\frac{2}{5}}$").passed


def _lcb_row(i, public, testtype="stdin", platform="atcoder"):
    return {"question_title": f"Problem {i}",
            "question_content": f"Read two integers and print their sum ({i}).",
            "platform": platform, "question_id": f"abc{i}_a", "contest_id": f"abc{i}",
            "contest_date": "2025-01-04T00:00:00", "starter_code": "", "difficulty": "easy",
            "public_test_cases": json.dumps([{"input": s, "output": o, "testtype": testtype}
                                             for s, o in public]),
            "private_test_cases": "eJwLSS0uUUjOzy0oSi0uTk1RyMsvSS1SKEotLs0pAQB0fQk8",
            "metadata": json.dumps({"func_name": None} if testtype == "stdin" else {"func_name": "add"})}


@pytest.mark.usefixtures("hub_home")
def test_livecodebench_loads_and_grades():
    rows = [_lcb_row(1, [("1 2\n", "3\n"), ("5 7\n", "12\n")]),
            _lcb_row(2, [("[1,2]", "3")], testtype="functional", platform="leetcode"),
            _lcb_row(3, [("10 -3\n", "7\n")])]
    write_hub_file("livecodebench/code_generation_lite", "test6.jsonl",
                   "".join(json.dumps(r) + "\n" for r in rows))
    spec = load_tasks(names=["hub_livecodebench"])[0]
    assert spec.n_docs == 2  # the functional (LeetCode) problem is not a stdin/stdout one
    item = spec.items[0]
    assert "print their sum (1)" in item.request.messages[-1][1]
    assert item.doc["tests"] == [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "5 7\n", "stdout": "12\n"}]
    right = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert _grade(spec, item, right).passed
    assert not _grade(spec, item, "```python\nprint(3)\n```").passed


IFEVAL_KWARGS = {
    "num_highlights": "int64", "relation": "string", "num_words": "int64", "num_placeholders": "int64",
    "prompt_to_repeat": "string", "num_bullets": "int64", "section_spliter": "string",
    "num_sections": "int64", "capital_relation": "string", "capital_frequency": "int64",
    "keywords": ["string"], "num_paragraphs": "int64", "language": "string", "let_relation": "string",
    "letter": "string", "let_frequency": "int64", "end_phrase": "string", "forbidden_words": ["string"],
    "keyword": "string", "frequency": "int64", "num_sentences": "int64", "postscript_marker": "string",
    "first_word": "string", "nth_paragraph": "int64",
}


@pytest.fixture
def punkt_tab(tmp_path, monkeypatch):
    """An NLTK data folder with a punkt_tab english model written by NLTK itself (untrained
    parameters: it splits sentences at their punctuation)."""
    import nltk
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params

    root = tmp_path / "nltk_data"
    target = root / "tokenizers" / "punkt_tab" / "english"
    target.mkdir(parents=True)
    monkeypatch.setenv("NLTK_DATA", str(root))
    monkeypatch.setattr(nltk.data, "path", [str(root)])  # NLTK writes only inside its data path
    save_punkt_params(PunktParameters(), dir=str(target))
    return root


def _ifeval_rows():
    def kw(**given):
        return {k: given.get(k) for k in IFEVAL_KWARGS}

    return [
        {"key": 1000, "prompt": "Write about the sea in at least 12 words, without commas, in fewer than 3 "
                                "sentences, in English.",
         "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words",
                                 "length_constraints:number_sentences", "language:response_language"],
         "kwargs": [kw(), kw(relation="at least", num_words=12), kw(relation="less than", num_sentences=3),
                    kw(language="en")]},
        {"key": 1001, "prompt": "Answer in all capital letters.",
         "instruction_id_list": ["change_case:english_capital"], "kwargs": [kw()]},
    ]


@pytest.mark.usefixtures("hub_home")
def test_ifeval_grades_with_lm_evals_own_checkers(punkt_tab):
    write_dataset("google/IFEval", "default", {"train": _ifeval_rows()},
                  _features({"key": "int64", "prompt": "string", "instruction_id_list": ["string"],
                             "kwargs": [IFEVAL_KWARGS]}))
    spec = load_tasks(names=["hub_ifeval"])[0]
    item = spec.items[0]
    assert item.request.messages == (("user", _ifeval_rows()[0]["prompt"]),)
    good = ("The sea is a vast and restless body of water that covers most of our planet and "
            "shapes its weather. It feeds us.")
    grade = _grade(spec, item, good)
    assert grade.passed and grade.details["checker"] == "lm_eval.tasks.ifeval"
    assert grade.details["inst_level_strict_acc"] == [True, True, True, True]
    too_many = good + " Waves roll. Tides turn."  # four sentences: the punkt-counted limit fails
    assert _grade(spec, item, too_many).details["inst_level_strict_acc"] == [True, True, False, True]
    comma = _grade(spec, item, good.replace("water that", "water, that"))
    assert not comma.passed and comma.details["inst_level_strict_acc"][0] is False
    # the same text gets the same language verdict every time (langdetect is seeded)
    caps = spec.items[1]
    verdicts = {_grade(spec, caps, "THE SEA IS BLUE AND WIDE AND DEEP.").passed for _ in range(3)}
    assert verdicts == {True}
    assert not _grade(spec, caps, "The sea is blue.").passed


@pytest.mark.usefixtures("hub_home")
def test_ifeval_without_punkt_data_fails_in_one_line(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    write_dataset("google/IFEval", "default", {"train": _ifeval_rows()},
                  _features({"key": "int64", "prompt": "string", "instruction_id_list": ["string"],
                             "kwargs": [IFEVAL_KWARGS]}))
    with pytest.raises(DsparityError) as err:
        load_tasks(names=["hub_ifeval"])
    line = err.value.line()
    assert "punkt_tab" in line and "hub_ifeval.yaml" in line and "\n" not in line


@pytest.mark.parametrize("task, dataset", [("hub_aime25", "math-ai/aime25"),
                                           ("hub_gpqa_diamond", "Idavidrein/gpqa"),
                                           ("hub_livecodebench", "livecodebench/code_generation_lite")])
@pytest.mark.usefixtures("hub_home")
def test_missing_cache_fails_in_one_line(task, dataset):
    with pytest.raises(DsparityError) as err:
        load_tasks(names=[task])
    line = err.value.line()
    assert "\n" not in line and f"{task}.yaml: dataset_path" in line and dataset in line
    assert "not in the local datasets cache" in line and "fix:" in line


@pytest.mark.usefixtures("hub_home")
def test_cache_of_another_config_is_not_taken_for_the_right_one():
    write_dataset("Idavidrein/gpqa", "gpqa_main", {"train": [{"Question": "q"}]},
                  _features({"Question": "string"}))
    with pytest.raises(DsparityError, match="config 'gpqa_diamond'"):
        load_tasks(names=["hub_gpqa_diamond"])
