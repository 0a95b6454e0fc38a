"""Task folders built in tests: real lm-eval tasks of any size, written to a temporary folder."""

import json
from pathlib import Path

from dsparity.evals.tasks import BUILTIN_TASKS


def make_suite(folder: Path, n: int, name: str = "bulk") -> Path:
    """A task folder with n distinct one-line items (a real lm-eval task)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "_dsparity_data.py").write_text((BUILTIN_TASKS / "_dsparity_data.py").read_text())
    (folder / "utils.py").write_text((BUILTIN_TASKS / "smoke" / "utils.py").read_text())
    with (folder / "data.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"Item {i}: what is 40 + 2?", "answer": "42"}) + "\n")
    (folder / f"{name}.yaml").write_text(f"""task: {name}
custom_dataset: !function utils.load
dataset_kwargs:
  data_file: data.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  max_gen_toks: 8
metadata:
  version: 1
  dsparity:
    suite: {name}
    grader: exact
""")
    return folder
