"""Broken task files fail alone, each with one line naming the file, the line or field, and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tasks_helpers import cli

from dsparity.errors import DsparityError
from dsparity.evals.tasks import BUILTIN_TASKS, load_tasks, scan

TEMPLATE = """task: {name}
custom_dataset: !function utils.load
dataset_kwargs:
  data_file: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
metadata:
  version: 1
  dsparity:
    suite: mine
    grader: {grader}
"""


def make_folder(tmp_path: Path) -> Path:
    root = tmp_path / "extra"
    folder = root / "mine"
    folder.mkdir(parents=True)
    shutil.copy(BUILTIN_TASKS / "_dsparity_data.py", root / "_dsparity_data.py")
    shutil.copy(BUILTIN_TASKS / "reasoning" / "utils.py", folder / "utils.py")
    (folder / "good.jsonl").write_text('{"prompt": "2+2?", "answer": "4"}\n')
    (folder / "good.yaml").write_text(TEMPLATE.format(name="good_task", data="good.jsonl",
                                                      grader="exact"))
    return folder


@pytest.mark.parametrize("name, yaml_text, data, expect", [
    ("bad_yaml", "task: bad_yaml\ndoc_to_text: [unclosed\n", None,
     ["bad_yaml.yaml: line 3", "not valid YAML", "fix: fix the YAML syntax"]),
    ("no_target", TEMPLATE.replace('doc_to_target: "{{{{answer}}}}"\n', ""), None,
     ["no_target.yaml: doc_to_target: missing required field", "fix: add `doc_to_target:`"]),
    ("bad_grader", TEMPLATE.replace("grader: {grader}", "grader: vibes"), None,
     ["bad_grader.yaml: metadata.dsparity.grader: unknown grader 'vibes'", "fix: use one of:"]),
    ("bad_jsonl", TEMPLATE, '{"prompt": "1", "answer": "1"}\n{"prompt": "2", oops}\n',
     ["bad_jsonl.jsonl:2: not valid JSON", "fix: write one JSON object per line"]),
    ("no_tests", TEMPLATE.replace("grader: {grader}", "grader: stdio"), '{"prompt": "p", "answer": "a"}\n',
     ["no_tests.jsonl:1: tests: missing field", "stdio grader reads `tests`"]),
    ("bad_constraint", TEMPLATE.replace("grader: {grader}", "grader: writing"),
     '{"prompt": "p", "answer": "", "constraints": [{"type": "min_words", "value": 5}, '
     '{"type": "rhymes"}]}\n',
     ["bad_constraint.jsonl:1: constraints[1].type: unknown constraint 'rhymes'", "fix: use one of:"]),
    ("no_data", TEMPLATE.replace("{data}", "missing.jsonl"), None,
     ["no_data.yaml: dataset_kwargs.data_file: no such file 'missing.jsonl'", "fix:"]),
    ("bad_tokens", TEMPLATE.replace("grader: {grader}", "grader: exact\n    max_tokens: lots"), None,
     ["bad_tokens.yaml: metadata.dsparity.max_tokens: 'lots' is not a whole number"]),
])
def test_one_broken_file_one_message_others_still_load(tmp_path, name, yaml_text, data, expect):
    folder = make_folder(tmp_path)
    if data is not None:
        (folder / f"{name}.jsonl").write_text(data)
    text = yaml_text.replace("{name}", name).replace("{data}", f"{name}.jsonl").replace(
        "{grader}", "exact").replace("{{{{", "{{").replace("}}}}", "}}")
    (folder / f"{name}.yaml").write_text(text)
    specs, problems = scan([BUILTIN_TASKS, folder])
    assert len(problems) == 1, [p.line() for p in problems]
    line = problems[0].line()
    assert "\n" not in line and all(e in line for e in expect), line
    assert "good_task" in specs and "smoke_arithmetic" in specs  # the rest still load
    assert load_tasks(names=["good_task"], include=[folder])[0].items[0].target == "4"
    if name not in ("bad_yaml",):
        with pytest.raises(DsparityError, match=name):
            load_tasks(names=[name], include=[folder])


def test_validate_command_lists_every_problem_and_exits_nonzero(tmp_path, monkeypatch):
    folder = make_folder(tmp_path)
    (folder / "bad_grader.yaml").write_text(TEMPLATE.format(name="bad_grader", data="good.jsonl",
                                                            grader="vibes"))
    (folder / "bad_jsonl.jsonl").write_text('{"prompt": "1", "answer": "1"}\nnot json\n')
    (folder / "bad_jsonl.yaml").write_text(TEMPLATE.format(name="bad_jsonl", data="bad_jsonl.jsonl",
                                                           grader="exact"))
    from tiny_models import byte_tokenizer

    tok = tmp_path / "bytetok"
    byte_tokenizer().save_pretrained(tok)
    (tok / "config.json").write_text("{}")
    env = {"DSPARITY_TASK_CACHE": str(tmp_path / "cache"), "DSPARITY_TOKENIZER": str(tok),
           "DSPARITY_LONGCTX_LENGTHS": "1024"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, out, _ = cli("tasks", "validate", "--include", str(folder))
    assert code == 1, out
    lines = out.strip().splitlines()
    assert any("bad_grader.yaml: metadata.dsparity.grader: unknown grader 'vibes'" in ln for ln in lines)
    assert any("bad_jsonl.jsonl:2: not valid JSON" in ln for ln in lines)
    assert lines[-1].endswith("2 problems")
    code, out, err = cli("tasks", "list", "--include", str(folder))
    assert code == 0 and "good_task" in out
    assert "broken:" in err and "bad_grader.yaml" in err


def test_a_task_asked_for_by_name_reports_its_broken_file_not_no_such_task(tmp_path):
    """The file's stem need not be the task's name: `--tasks NAME` still finds the broken file."""
    folder = make_folder(tmp_path)
    text = TEMPLATE.format(name="renamed_task", data="good.jsonl", grader="exact")
    (folder / "other_stem.yaml").write_text(text.replace('doc_to_target: "{{answer}}"\n', ""))
    with pytest.raises(DsparityError) as caught:
        load_tasks(names=["renamed_task"], include=[folder])
    line = caught.value.line()
    assert "other_stem.yaml: doc_to_target: missing required field" in line, line
