"""The built-in suites: lm-eval loads every file, items are what each grader needs, seeds hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tasks_helpers import cli

from dsparity.evals.taskgen.cache import GenOptions
from dsparity.evals.tasks import BUILTIN_TASKS, count_items, load_tasks, scan
from dsparity.evals.tasks.files import read_config

DSPARITY = [sys.executable, "-m", "dsparity.cli"]


def dsparity(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*DSPARITY, *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})})


def task_names() -> list[str]:
    names = []
    for path in sorted(BUILTIN_TASKS.rglob("*.yaml")):
        names.append(read_config(path)["task"])
    return names


@pytest.fixture(autouse=True)
def _private_task_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARITY_TASK_CACHE", str(tmp_path / "task-cache"))


def test_every_yaml_is_found_by_lm_eval_and_lm_eval_validate_accepts_them():
    from lm_eval.tasks import TaskManager

    names = task_names()
    assert len(names) >= 26
    tm = TaskManager(include_path=str(BUILTIN_TASKS), include_defaults=False)
    assert set(names) <= set(tm.all_tasks)
    done = subprocess.run([sys.executable, "-m", "lm_eval", "validate", "--tasks", ",".join(names),
                           "--include_path", str(BUILTIN_TASKS)], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "All tasks found and valid" in done.stdout


def test_scan_finds_every_suite_with_known_graders():
    specs, problems = scan([BUILTIN_TASKS])
    assert not problems, [p.line() for p in problems]
    suites = {s.suite for s in specs.values()}
    assert {"smoke", "reasoning", "coding", "writing", "longctx", "article", "hub"} <= suites
    graders = {s.name: s.grader for s in specs.values()}
    assert graders["coding_humaneval"] == "code" and graders["coding_stdio"] == "stdio"
    assert graders["writing_constraints"] == "writing" and graders["writing_quality"] == "judge"
    assert graders["article_novel"] == "longform" and graders["article_idea"] == "judge"
    assert {graders[f"article_{n}"] for n in ("audio_player", "hexagon_balls", "holo_universe")} == {"web"}
    assert all(s.needs_hub for s in specs.values() if s.suite == "hub")


def test_tasks_list_shows_suites_counts_and_graders():
    code, text, err = cli("tasks", "list")
    assert code == 0, err
    for line in ("suite reasoning: 3 tasks, 22 items, graders: exact, math",
                 "suite coding: 2 tasks, 172 items, graders: code, stdio",
                 "suite longctx: 6 tasks, 96 items, graders: needle",
                 "suite article: 5 tasks, 10 items, graders: judge, longform, web",
                 "suite writing: 2 tasks, 16 items, graders: judge, writing",
                 "suite hub: 6 tasks, items from the hub"):
        assert line in text, text
    assert "broken" not in err
    _, bigger, _ = cli("tasks", "list", "--size", "1000")
    assert "suite reasoning: 3 tasks, 3000 items" in bigger


def test_reasoning_items_record_generator_config_seed_and_reproduce():
    import reasoning_gym

    tasks = load_tasks(suites=["reasoning"])
    assert [t.n_docs for t in tasks] == [6, 10, 6]  # one item per generator by default
    for task in tasks:
        gens = {it.doc["generator"] for it in task.items}
        assert gens == {g["name"] for g in task.settings["generators"]}
        for item in task.items[:4]:
            d = item.doc
            entry = reasoning_gym.create_dataset(d["generator"], seed=d["seed"], size=d["index"] + 1,
                                                 **d["config"])[d["index"]]
            assert entry["question"] == d["question"] and str(entry["answer"]) == item.target
            assert "Answer: <answer>" in item.request.messages[0][1]
            assert len(d["hash"]) == 16


def test_same_seed_same_items_other_seed_differs_and_size_scales():
    first = load_tasks(names=["reasoning_math"], seed=7)[0]
    again = load_tasks(names=["reasoning_math"], seed=7)[0]
    other = load_tasks(names=["reasoning_math"], seed=8)[0]
    hashes = [it.doc["hash"] for it in first.items]
    assert hashes == [it.doc["hash"] for it in again.items]
    assert [it.doc_hash for it in first.items] == [it.doc_hash for it in again.items]
    assert first.task_hash == again.task_hash != other.task_hash
    assert not set(hashes) & {it.doc["hash"] for it in other.items}
    big = load_tasks(names=["reasoning_math"], seed=7, size=200, limit=3)[0]
    assert big.n_docs == 200 and len(big.items) == 3
    # The first items of a bigger set are not the small set's: the round-robin deal depends on size,
    # but every item still names its generator, config and seed.
    assert {it.doc["generator"] for it in big.items} <= {g["name"] for g in big.settings["generators"]}


def test_coding_suite_has_humaneval_and_stdio_fields():
    tasks = {t.name: t for t in load_tasks(suites=["coding"], limit=3)}
    he = tasks["coding_humaneval"]
    assert he.n_docs == 164
    doc = he.items[0].doc
    assert doc["task_id"] == f"HumanEval/{he.items[0].doc_id}"  # items keep their document index
    assert {"prompt", "test", "entry_point"} <= set(doc)
    assert doc["prompt"] in he.items[0].request.messages[0][1]
    stdio = tasks["coding_stdio"]
    assert stdio.n_docs >= 6
    for item in stdio.items:
        assert all(set(t) == {"stdin", "stdout"} for t in item.doc["tests"]) and item.doc["tests"]


def test_writing_constraints_follow_the_grader_contract():
    from dsparity.evals.graders.writing import CONSTRAINT_TYPES

    task = load_tasks(names=["writing_constraints"])[0]
    langs = {it.doc["lang"] for it in task.items}
    assert langs == {"en", "zh"}
    kinds = {c["type"] for it in task.items for c in it.doc["constraints"]}
    assert kinds <= set(CONSTRAINT_TYPES)
    assert {"min_words", "max_words", "sections", "keyword_count", "language"} <= kinds
    quality = load_tasks(names=["writing_quality"])[0]
    assert "{{ question }}" in quality.settings["rubric"]


def test_article_suite_has_the_five_prompts_in_chinese_and_english():
    tasks = {t.name: t for t in load_tasks(suites=["article"])}
    assert set(tasks) == {"article_idea", "article_audio_player", "article_hexagon_balls",
                          "article_holo_universe", "article_novel"}
    for t in tasks.values():
        assert [it.doc["lang"] for it in t.items] == ["zh", "en"]
    zh = {n: t.items[0].request.messages[0][1] for n, t in tasks.items()}
    assert zh["article_idea"].startswith("我是一个博士生，我最近在研究多模态 AIGC 内容的检测")
    assert "Web Audio API" in zh["article_audio_player"]
    assert zh["article_hexagon_balls"] == ("20 个小球在旋转的 6 边形内弹跳，"
                                          "考虑重力，弹力，摩擦力等物理规律。 用 p5js")
    assert "三维全息宇宙" in zh["article_holo_universe"]
    assert "每到一万字你就在文章中提醒一下" in zh["article_novel"]
    novel = tasks["article_novel"]
    assert novel.settings["target_chars"] == 100_000 and novel.settings["reminder_every"] == 10_000
    assert novel.items[0].request.max_tokens >= 65_536  # long outputs may be long
    for name in ("article_audio_player", "article_hexagon_balls", "article_holo_universe"):
        assert len(tasks[name].items[0].doc["checklist"]) >= 6
        assert tasks[name].items[0].request.max_tokens >= 16_384
    assert "exactly 20 balls are visible" in tasks["article_hexagon_balls"].items[1].doc["checklist"]


def test_hub_suites_are_optional_and_fail_offline_in_one_line(tmp_path):
    specs, _ = scan([BUILTIN_TASKS])
    hub = sorted(s.name for s in specs.values() if s.suite == "hub")
    assert hub == ["hub_aime25", "hub_gpqa_diamond", "hub_hmmt_feb25", "hub_ifeval",
                   "hub_livecodebench", "hub_mmlu_pro"]
    lm_eval_names = {s.settings.get("lm_eval_task") for s in specs.values() if s.suite == "hub"}
    assert {"mmlu_pro", "aime25", "ifeval"} <= lm_eval_names
    assert count_items(specs["hub_aime25"], GenOptions()) is None
    done = dsparity("run", "--model", "openai:m@http://127.0.0.1:9/v1", "--suite", "hub",
                    "--db", f"sqlite:///{tmp_path / 'r.db'}", env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs the Hugging Face dataset" in lines[0], done.stderr
    assert "hub_" in lines[0] and "fix:" in lines[0] and "Traceback" not in done.stderr


def test_tasks_show_prints_settings_lengths_and_an_example(tmp_path):
    code, out, err = cli("tasks", "show", "coding_stdio", "--items", "1")
    assert code == 0, err
    assert "coding_stdio" in out and "grader stdio" in out
    assert "Write a complete Python 3 program" in out
    data = json.loads(out.split("settings: ", 1)[1].splitlines()[0])
    assert data["suite"] == "coding"


def test_hub_row_converters_make_what_the_graders_read():
    """The hub suites' process_docs, on rows shaped like the public datasets (no download; the
    whole tasks against the datasets' real schemas: test_hub_tasks.py)."""
    import importlib.util

    import datasets

    spec = importlib.util.spec_from_file_location("hub_utils", BUILTIN_TASKS / "hub" / "utils.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    gpqa = hub.gpqa_docs(datasets.Dataset.from_list([
        {"Question": " Which? ", "Correct Answer": "right", "Incorrect Answer 1": "w1",
         "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}]))
    row = gpqa[0]
    assert row["choices"]["ABCD".index(row["answer"])] == "right" and sorted(row["choices"]) == [
        "right", "w1", "w2", "w3"]
    assert hub.gpqa_docs(datasets.Dataset.from_list([gpqa_row := {
        "Question": " Which? ", "Correct Answer": "right", "Incorrect Answer 1": "w1",
        "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}]))[0] == row  # fixed seed
    del gpqa_row
    lcb = hub.lcb_docs(datasets.Dataset.from_list([
        {"question_content": "q1", "public_test_cases": json.dumps(
            [{"input": "1\n", "output": "2\n", "testtype": "stdin"}])},
        {"question_content": "q2", "public_test_cases": json.dumps(
            [{"input": "f(1)", "output": "2", "testtype": "functional"}])}]))
    assert len(lcb) == 1 and lcb[0]["tests"] == [{"stdin": "1\n", "stdout": "2\n"}]
