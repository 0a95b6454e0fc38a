"""Task folders built in tests: real lm-eval tasks of any size, written to a temporary folder."""

import json
from pathlib import Path

from dsparity.evals.tasks import BUILTIN_TASKS

TASK_YAML = """task: {name}
custom_dataset: !function utils.load
dataset_kwargs:
  data_file: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  max_gen_toks: 8
metadata:
  version: 1
  dsparity:
    suite: {suite}
    grader: {grader}
"""


def write_task(root: Path, name: str, *, rows: str = '{"question": "q", "answer": "a"}\n',
               yaml_text: str | None = None, data: str = "data.jsonl", grader: str = "exact") -> Path:
    """`root/name/` with utils.py, data.jsonl and name.yaml (TASK_YAML unless `yaml_text`);
    returns `root`, the folder to pass as `--include`."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (root / "_dsparity_data.py").write_text((BUILTIN_TASKS / "_dsparity_data.py").read_text())
    (folder / "utils.py").write_text((BUILTIN_TASKS / "smoke" / "utils.py").read_text())
    (folder / "data.jsonl").write_text(rows)
    text = yaml_text if yaml_text is not None else TASK_YAML
    (folder / f"{name}.yaml").write_text(text.format(name=name, data=data, grader=grader, suite=name))
    return root


def make_suite(folder: Path, n: int, name: str = "bulk") -> Path:
    """A task folder with n distinct one-line items (a real lm-eval task); returns the folder."""
    rows = "".join(json.dumps({"question": f"Item {i}: what is 40 + 2?", "answer": "42"}) + "\n"
                   for i in range(n))
    write_task(folder.parent, name, rows=rows)
    return folder
