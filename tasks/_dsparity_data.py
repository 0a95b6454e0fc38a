"""Shared by the task folders: read a task's JSONL data next to its YAML, or generate it, offline.

lm-eval resolves `!function utils.load` relative to the YAML file, so each suite folder has a
small `utils.py` that points here with its own folder. Generated suites (`dataset_kwargs:
{generator: ...}`) call into `dsparity.evals.taskgen`, which caches what it makes.
"""

from __future__ import annotations

import json
from pathlib import Path


def _as_dataset(rows: list[dict], split: str):
    import datasets

    # Nested fields (constraints, tests, configs) differ in shape between rows; Arrow would force
    # one schema on them, so those go through as JSON text and are decoded back on the way out.
    nested = sorted({k for r in rows for k, v in r.items() if isinstance(v, (dict, list))})
    flat = [{k: (json.dumps(v, ensure_ascii=False) if k in nested else v) for k, v in r.items()}
            for r in rows]
    ds = datasets.Dataset.from_list(flat)
    return {split: _JsonFields(ds, nested) if nested else ds}


class _JsonFields:
    """A read-only view of a Dataset that decodes JSON-encoded nested fields per row."""

    def __init__(self, ds, fields):
        self._ds, self._fields = ds, fields

    def __len__(self):
        return len(self._ds)

    def _decode(self, row: dict) -> dict:
        return {k: (json.loads(v) if k in self._fields and isinstance(v, str) else v)
                for k, v in row.items()}

    def __iter__(self):
        for row in self._ds:
            yield self._decode(row)

    def __getitem__(self, i):
        if isinstance(i, int):
            return self._decode(self._ds[i])
        return self._ds[i]

    def __getattr__(self, name):
        return getattr(self._ds, name)


def read_jsonl(path: Path) -> list[dict]:
    from dsparity.evals.tasks import iter_jsonl

    return [row for _, row in iter_jsonl(path)]


def load_jsonl_splits(folder: Path, data_file: str, split: str = "test"):
    path = (folder / data_file).resolve()
    if folder.resolve() not in path.parents:
        raise ValueError(f"{data_file}: data files must stay inside {folder}")
    return _as_dataset(read_jsonl(path), split)


def load_any(folder: Path, *, data_file: str | None = None, generator: str | None = None,
             task: str | None = None, split: str = "test", **kwargs):
    """`dataset_kwargs: {data_file: x.jsonl}` or `{generator: NAME, task: TASK}`."""
    if data_file:
        return load_jsonl_splits(folder, data_file, split)
    from dsparity.evals.taskgen.loaders import generated_rows

    return _as_dataset(generated_rows(folder, generator=generator or "", task=task or "", **kwargs),
                       split)
