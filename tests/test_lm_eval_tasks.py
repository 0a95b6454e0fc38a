"""lm-eval task files as lm-eval reads them: `include:` templates, few-shot examples in the prompt
that is sent, `filter_list` / `metric_list` graded as lm-eval grades them (or refused in one
line), and lm-eval's own registry reachable with `--tasks NAME` from a local datasets cache.

lm-eval's own task files are used as they are installed (gsm8k, mmlu_pro, gpqa generative), with
tiny datasets built in the test's private Hugging Face caches (no network)."""

from __future__ import annotations

import json
import shutil

import pytest
from hub_cache import (
    hub_home_fixture,  # noqa: F401  (the `hub_home` fixture)
    write_dataset,
)
from tasks_helpers import cli

from dsparity.errors import DsparityError
from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.tasks import load_tasks, scan
from dsparity.evals.tasks.registry import lm_eval_tasks_dir

LM_EVAL_TASKS = lm_eval_tasks_dir()


def _features(columns: dict):
    import datasets

    return datasets.Features({k: [datasets.Value(v[0])] if isinstance(v, list) else datasets.Value(v)
                              for k, v in columns.items()})


def _gsm8k(n_train=8, n_test=6):
    train = [{"question": f"Train question {i}: what is {i} + {i}?",
              "answer": f"{i} plus {i} is {2 * i}.\n#### {2 * i}"} for i in range(n_train)]
    test = [{"question": f"Test question {i}: what is {i} * 3?", "answer": f"It is {3 * i}.\n#### {3 * i}"}
            for i in range(n_test)]
    write_dataset("openai/gsm8k", "main", {"train": train, "test": test},
                  _features({"question": "string", "answer": "string"}))
    return train, test


def _grade(spec, item, text):
    return get_grader(spec.grader)(GradeInput(text, item.target, item.doc), spec.settings)


@pytest.mark.usefixtures("hub_home")
def test_gsm8k_from_lm_evals_registry_sends_lm_evals_own_shots():
    train, test = _gsm8k()
    spec = load_tasks(names=["gsm8k"], limit=2)[0]
    assert spec.registry and spec.suite == "lm_eval" and spec.grader == "lm_eval"
    assert spec.fewshot == {"num_fewshot": 5, "split": "train", "sampler": "default", "seed": 1234}
    kept = [it.doc_id for it in spec.items]
    assert len(kept) == 2 and kept != [0, 1]  # a seeded sample, not the first two
    # lm-eval's own full run (fewshot seed 1234, every document in order) builds these contexts;
    # the kept documents get the very same ones, shots included.
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(LM_EVAL_TASKS / "gsm8k"), include_defaults=False).load(
        ["gsm8k"])["tasks"]["gsm8k"]
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(rank=0, world_size=1)
    contexts = {inst.doc_id: inst.arguments[0] for inst in task.instances}
    for item in spec.items:
        (role, sent), = item.request.messages
        assert role == "user" and sent == contexts[item.doc_id]
        shots = [t for t in train if t["question"] in sent]
        assert len(shots) == 5 and all(t["answer"] in sent for t in shots)
        assert sent.endswith(f"Question: {test[item.doc_id]['question']}\nAnswer:")
    assert item.request.stop == ("Question:", "</s>", "<|im_end|>")


@pytest.mark.usefixtures("hub_home")
def test_gsm8k_is_graded_by_its_own_filters_and_metric():
    _gsm8k()
    spec = load_tasks(names=["gsm8k"], limit=1)[0]
    item = spec.items[0]
    gold = 3 * item.doc_id
    right = _grade(spec, item, f"Three times {item.doc_id}.\n#### {gold}")
    assert right.passed and right.details["metrics"] == {"exact_match,strict-match": 1.0,
                                                          "exact_match,flexible-extract": 1.0}
    assert right.details["primary"] == "exact_match,strict-match"
    # no "#### N" line: the strict pipeline finds nothing, the flexible one takes the last number
    loose = _grade(spec, item, f"I think the answer is {gold}")
    assert loose.details["metrics"] == {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 1.0}
    assert loose.score == 0.0
    assert _grade(spec, item, f"#### {gold + 1}").score == 0.0


def _mmlu_pro(n_val=6):
    feats = _features({"question_id": "int64", "question": "string", "options": ["string"],
                       "answer": "string", "answer_index": "int64", "cot_content": "string",
                       "category": "string", "src": "string"})
    options = [f"choice {c}" for c in "abcdefghij"]
    val = [{"question_id": i, "question": f"Worked example {i}?", "options": options, "answer": "C",
            "answer_index": 2, "cot_content": f"A: Let's think step by step. Shot {i} reasoning. "
            "The answer is (C).", "category": "math" if i != 1 else "law", "src": "ori"}
           for i in range(n_val)]
    test = [{**val[0], "question_id": 100 + i, "question": f"Real question {i}?", "cot_content": "",
             "category": "math"} for i in range(3)]
    write_dataset("TIGER-Lab/MMLU-Pro", "default", {"test": test, "validation": val}, feats)
    return val


@pytest.mark.usefixtures("hub_home")
def test_mmlu_pro_math_include_template_first_n_shots_and_custom_extract(tmp_path):
    """lm-eval's mmlu_pro_math.yaml, copied with its `_default_template_yaml` and utils.py: the
    template is included, the five shots are the first five math rows of the validation split
    (first_n sampler, the task's process_docs applied to them), each in the few-shot format."""
    val = _mmlu_pro()
    folder = tmp_path / "mine" / "mmlu_pro"
    folder.mkdir(parents=True)
    for name in ("_default_template_yaml", "mmlu_pro_math.yaml", "utils.py"):
        shutil.copy(LM_EVAL_TASKS / "mmlu_pro" / name, folder / name)
    spec = load_tasks(names=["mmlu_pro_math"], include=[tmp_path / "mine"], limit=1)[0]
    assert not spec.registry and spec.config["fewshot_split"] == "validation"  # from the template
    assert spec.fewshot["sampler"] == "first_n" and spec.fewshot["num_fewshot"] == 5
    (system, description), (user, sent) = spec.items[0].request.messages
    assert system == "system" and "about math" in description and user == "user"
    math_rows = [v for v in val if v["category"] == "math"]
    for shot in math_rows[:5]:
        assert f"Worked example {shot['question_id']}?" in sent
        assert f"Shot {shot['question_id']} reasoning" in sent
    assert "Worked example 1?" not in sent  # the law row is not a math shot
    assert sent.rstrip().endswith("Answer: Let's think step by step.")
    item = spec.items[0]
    grade = _grade(spec, item, "Some steps. the answer is (C)")
    assert grade.passed and grade.details["filtered"]["custom-extract"] == "C"
    assert not _grade(spec, item, "the answer is (D)").passed


CATEGORIES = ["biology", "business", "chemistry", "computer science", "economics", "engineering",
              "health", "history", "law", "math", "other", "philosophy", "physics", "psychology"]


@pytest.mark.usefixtures("hub_home")
def test_mmlu_pro_group_from_the_registry_expands_to_its_tasks():
    """`--tasks mmlu_pro` (a group in lm-eval's registry): its 14 tasks, each with the five shots
    of its own category (MMLU-Pro's validation split holds five per category)."""
    feats = _features({"question_id": "int64", "question": "string", "options": ["string"],
                       "answer": "string", "answer_index": "int64", "cot_content": "string",
                       "category": "string", "src": "string"})
    row = {"options": ["x", "y"], "answer": "A", "answer_index": 0, "src": "ori"}
    val = [{**row, "question_id": 10 * c + i, "question": f"{cat} shot {i}?", "category": cat,
            "cot_content": "A: Let's think step by step. The answer is (A)."}
           for c, cat in enumerate(CATEGORIES) for i in range(5)]
    test = [{**row, "question_id": 1000 + c, "question": f"{cat} question?", "category": cat,
             "cot_content": ""} for c, cat in enumerate(CATEGORIES)]
    write_dataset("TIGER-Lab/MMLU-Pro", "default", {"test": test, "validation": val}, feats)
    specs = load_tasks(names=["mmlu_pro"], limit=1)
    assert len(specs) == 14 and {s.suite for s in specs} == {"lm_eval"}
    for spec in specs:
        cat = next(c for c in CATEGORIES if spec.name == "mmlu_pro_" + c.replace(" ", "_"))
        sent = spec.items[0].request.messages[-1][1]
        assert all(f"{cat} shot {i}?" in sent for i in range(5)) and f"{cat} question?" in sent
        assert sent.count(" shot ") == 5


@pytest.mark.usefixtures("hub_home")
def test_gpqa_generative_include_and_num_fewshot_from_local_yaml(tmp_path):
    """lm-eval's gpqa_diamond_generative_n_shot.yaml (an `include:` of `_gpqa_generative_n_shot_yaml`)
    with num_fewshot set in a file of our own that includes it in turn."""
    rows = [{"Question": f"Q{i}?", "Correct Answer": f"right {i}", "Incorrect Answer 1": f"w1 {i}",
             "Incorrect Answer 2": f"w2 {i}", "Incorrect Answer 3": f"w3 {i}"} for i in range(6)]
    write_dataset("Idavidrein/gpqa", "gpqa_diamond", {"train": rows},
                  _features({k: "string" for k in rows[0]}))
    folder = tmp_path / "mine"
    folder.mkdir()
    src = LM_EVAL_TASKS / "gpqa" / "generative"
    for name in ("_gpqa_generative_n_shot_yaml", "gpqa_diamond_generative_n_shot.yaml", "utils.py"):
        shutil.copy(src / name, folder / name)
    (folder / "gpqa_two_shot.yaml").write_text(
        "include: gpqa_diamond_generative_n_shot.yaml\ntask: gpqa_two_shot\nnum_fewshot: 2\n")
    spec = load_tasks(names=["gpqa_two_shot"], include=[folder], limit=1)[0]
    assert spec.config["dataset_name"] == "gpqa_diamond" and spec.config["num_fewshot"] == 2
    (_, description), (_, sent) = spec.items[0].request.messages
    assert description.startswith("Here are some example questions from experts.")
    questions = [r["Question"] for r in rows if f"Question: {r['Question']}" in sent]
    assert len(questions) == 3  # two shots and the question itself
    assert sent.count("Answer: (") == 2  # each shot with its answer; the question without one


TINY = """include: _template_yaml
task: {name}
num_fewshot: 2
fewshot_config:
  sampler: first_n
"""
TEMPLATE = """dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
training_split: train
fewshot_split: train
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
"""


def _tiny_folder(tmp_path, name="tiny_shots", extra=""):
    folder = tmp_path / "tiny"
    folder.mkdir(exist_ok=True)
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    train.write_text("".join(json.dumps({"q": f"shot {i}", "a": f"S{i}"}) + "\n" for i in range(4)))
    test.write_text("".join(json.dumps({"q": f"ask {i}", "a": f"A{i}"}) + "\n" for i in range(3)))
    (folder / "_template_yaml").write_text(TEMPLATE.format(train=train, test=test))
    (folder / f"{name}.yaml").write_text(TINY.format(name=name) + extra)
    return folder


def test_local_jsonl_task_with_include_and_shots_and_show(tmp_path):
    folder = _tiny_folder(tmp_path)
    spec = load_tasks(names=["tiny_shots"], include=[folder])[0]
    assert [it.request.messages for it in spec.items][0] == (
        ("user", "Q: shot 0\nA: S0\n\nQ: shot 1\nA: S1\n\nQ: ask 0\nA:"),)
    assert spec.grader == "lm_eval" and _grade(spec, spec.items[2], "a2").passed  # ignore_case
    assert not _grade(spec, spec.items[2], " a2").passed  # as lm-eval: exact_match keeps the space
    code, out, _ = cli("tasks", "show", "tiny_shots", "--include", str(folder), "--items", "2")
    assert code == 0, out
    assert "few-shot: 2 examples from split 'train' (sampler first_n, seed 1234)" in out
    assert "Q: shot 0\nA: S0\n\nQ: shot 1\nA: S1\n\nQ: ask 1\nA:" in out


def test_filters_are_applied_as_written_slashes_and_all(tmp_path):
    folder = _tiny_folder(tmp_path, "tiny_frac", "filter_list:\n  - name: frac\n    filter:\n"
                          "      - function: regex\n        regex_pattern: 'A(\\d)/1'\n"
                          "      - function: take_first\n"
                          "metric_list:\n  - metric: exact_match\n    regexes_to_ignore: ['A']\n")
    spec = load_tasks(names=["tiny_frac"], include=[folder])[0]
    item = spec.items[1]  # target A1
    grade = _grade(spec, item, "I get A1/1 here")
    assert grade.details["filtered"] == {"frac": "1"} and grade.passed
    assert not _grade(spec, item, "I get A2/1 here").passed


@pytest.mark.parametrize("extra, field, words", [
    ("process_results: !function utils.process\n", "process_results", "own Python function"),
    ("filter_list:\n  - name: mine\n    filter:\n      - function: custom\n", "filter_list[0].filter[0]",
     "not a filter lm-eval registers"),
    ("metric_list:\n  - metric: bleu\n    aggregation: bleu\n", "metric_list[0].aggregation",
     "dsparity averages each item's score"),
    ("metric_list:\n  - metric: no_such_metric\n", "metric_list[0].metric", "not an lm-eval metric"),
    ("metric_list:\n  - metric: !function utils.score\n", "metric_list[0].metric", "comes from code"),
    ("metadata:\n  dsparity:\n    grader: exact\nfilter_list:\n  - name: f\n    filter:\n"
     "      - function: take_first\n", "filter_list", "would be skipped"),
    ("gen_prefix: 'Answer:'\n", "gen_prefix", "cannot pre-fill"),
])
def test_what_dsparity_cannot_honour_is_refused_in_one_line(tmp_path, extra, field, words):
    folder = _tiny_folder(tmp_path, "tiny_bad", extra)
    with pytest.raises(DsparityError) as err:
        load_tasks(names=["tiny_bad"], include=[folder])
    line = err.value.line()
    assert "\n" not in line and f"tiny_bad.yaml: {field}" in line and words in line and "fix:" in line


def test_scored_task_metrics_outside_what_dsparity_computes_are_refused(tmp_path):
    folder = _tiny_folder(tmp_path, "tiny_mc", "output_type: multiple_choice\ndoc_to_choice: ['S0', 'S1']\n"
                          "metric_list:\n  - metric: acc_norm\n  - metric: brier_score\n")
    specs, problems = scan([folder])
    assert [p.line() for p in problems] and "metric_list[1].metric" in problems[0].line()
    assert "'brier_score' is not one dsparity computes" in problems[0].line()


def test_include_problems_name_the_file_and_templates_are_not_tasks(tmp_path):
    folder = _tiny_folder(tmp_path)
    (folder / "missing_inc.yaml").write_text("include: nowhere_yaml\ntask: missing_inc\n")
    (folder / "cycle_a.yaml").write_text("include: cycle_b.yaml\ntask: cycle_a\n")
    (folder / "cycle_b.yaml").write_text("include: cycle_a.yaml\ntask: cycle_b\n")
    (folder / "_shared.yaml").write_text("doc_to_text: '{{q}}'\n")  # a template, included below
    (folder / "uses_shared.yaml").write_text((folder / "tiny_shots.yaml").read_text().replace(
        "include: _template_yaml", "include: [_template_yaml, _shared.yaml]").replace(
        "tiny_shots", "uses_shared"))
    specs, problems = scan([folder])
    lines = sorted(p.line() for p in problems)
    assert len(lines) == 3, lines
    assert any("missing_inc.yaml: include: no such file 'nowhere_yaml'" in ln for ln in lines)
    assert sum("include cycle" in ln for ln in lines) == 2
    assert set(specs) == {"tiny_shots", "uses_shared"}  # _shared.yaml is a template, not a task
    assert specs["uses_shared"].config["doc_to_text"] == "{{q}}"  # later includes win


def test_unknown_name_is_neither_here_nor_in_lm_evals_registry():
    with pytest.raises(DsparityError) as err:
        load_tasks(names=["no_such_task_anywhere"])
    line = err.value.line()
    assert "no such task in dsparity's task folders or in lm-eval's own registry" in line


@pytest.mark.usefixtures("hub_home")
def test_registry_task_without_its_data_fails_in_one_line():
    with pytest.raises(DsparityError) as err:
        load_tasks(names=["gsm8k"])
    line = err.value.line()
    assert "gsm8k.yaml: dataset_path" in line and "'openai/gsm8k' (config 'main')" in line
    assert "\n" not in line


@pytest.mark.parametrize(("output_type", "metric", "shown"), [
    ("loglikelihood", "acc", "scored: 1 continuation(s)"),
    ("loglikelihood_rolling", "word_perplexity", "scored: whole text")])
def test_tasks_show_prints_a_scored_task(tmp_path, output_type, metric, shown):
    """A log-likelihood task has no generation cap; `tasks show` says what is scored instead."""
    folder = _tiny_folder(tmp_path, "tiny_scored", f"num_fewshot: 0\noutput_type: {output_type}\n"
                          f"metric_list:\n  - metric: {metric}\n")
    code, out, err = cli("tasks", "show", "tiny_scored", "--include", str(folder), "--items", "1")
    assert code == 0, out + err
    assert shown in out and "Traceback" not in out + err
