"""Shared by the task folders: read a task's JSONL data next to its YAML, offline.

lm-eval resolves `!function utils.load` relative to the YAML file, so each suite folder has a
two-line `utils.py` that points here with its own folder.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_jsonl_splits(folder: Path, data_file: str, split: str = "test"):
    import datasets

    path = (folder / data_file).resolve()
    if folder.resolve() not in path.parents:
        raise ValueError(f"{data_file}: data files must stay inside {folder}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append(row)
    return {split: datasets.Dataset.from_list(rows)}
