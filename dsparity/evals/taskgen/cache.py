"""Generated items are written once to a cache folder (JSONL + manifest with hashes) and reused.

Key = a hash of everything that decides the items (task, generator version, seed, size, lengths,
tokenizer identity). The manifest records each item's hash and the file's sha256; a cache file that
no longer matches its manifest is regenerated, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Bump when a generator changes what it produces for the same parameters.
GENERATOR_VERSION = 3


@dataclass(frozen=True)
class GenOptions:
    """Run-time knobs for generated suites (None: the task's own default)."""

    size: int | None = None  # items per task (reasoning) / per length (longctx)
    seed: int | None = None
    lengths: tuple[int, ...] | None = None  # longctx target lengths in tokens
    tokenizer: str | None = None  # longctx: model name / folder whose tokenizer counts tokens

    @classmethod
    def from_env(cls, **overrides) -> GenOptions:
        """Defaults from DSPARITY_TASK_SIZE / _SEED, DSPARITY_LONGCTX_LENGTHS, DSPARITY_TOKENIZER."""
        env = os.environ
        lengths = env.get("DSPARITY_LONGCTX_LENGTHS")
        values: dict[str, Any] = {
            "size": int(env["DSPARITY_TASK_SIZE"]) if env.get("DSPARITY_TASK_SIZE") else None,
            "seed": int(env["DSPARITY_TASK_SEED"]) if env.get("DSPARITY_TASK_SEED") else None,
            "lengths": tuple(parse_length(v) for v in lengths.split(",") if v.strip())
            if lengths else None,
            "tokenizer": env.get("DSPARITY_TOKENIZER") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_metadata(self) -> dict[str, Any]:
        """What travels to the task loaders through lm-eval's TaskManager(metadata=...)."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if "lengths" in data:
            data["lengths"] = list(data["lengths"])
        return {"dsparity_options": data} if data else {}


def parse_length(text: str) -> int:
    """'4096', '4K', '128k' -> tokens (K = 1024)."""
    t = text.strip().lower()
    if t.endswith("k"):
        return int(float(t[:-1]) * 1024)
    return int(t)


def task_cache_dir() -> Path:
    env = os.environ.get("DSPARITY_TASK_CACHE")
    if env:
        return Path(env)
    from dsparity.model.loading import cache_root

    return cache_root() / "tasks"


def item_hash(row: dict[str, Any]) -> str:
    body = {k: v for k, v in row.items() if k != "hash"}
    blob = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def materialise(task: str, params: dict[str, Any],
                make: Callable[[], Iterable[dict[str, Any]]]) -> tuple[list[dict[str, Any]], Path]:
    """Return the rows for (task, params), generating and caching them on first use."""
    key_params = {"task": task, "generator_version": GENERATOR_VERSION, **params}
    key = hashlib.sha256(json.dumps(key_params, sort_keys=True).encode()).hexdigest()[:16]
    folder = task_cache_dir() / task
    data, manifest = folder / f"{key}.jsonl", folder / f"{key}.manifest.json"
    rows = _read_verified(data, manifest)
    if rows is not None:
        return rows, data
    rows = []
    for row in make():
        row = dict(row)
        row["hash"] = item_hash(row)
        rows.append(row)
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(data, text)
    _atomic_write(manifest, json.dumps({
        "params": key_params, "n_items": len(rows),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "item_hashes": [r["hash"] for r in rows],
    }, indent=1, sort_keys=True))
    return rows, data


def _read_verified(data: Path, manifest: Path) -> list[dict[str, Any]] | None:
    if not (data.exists() and manifest.exists()):
        return None
    try:
        meta = json.loads(manifest.read_text())
        text = data.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    if hashlib.sha256(text.encode()).hexdigest() != meta.get("sha256"):
        return None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
