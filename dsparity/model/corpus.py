"""Warm-up text that needs no download: the Python standard library's own sources.

Python's stdlib is installed everywhere this runs and is PSF-licensed; it is code plus long
docstrings, which gives the long-range structure (imports, definitions used far below) that the
indexer must learn to find. The split is by file, so held-out metrics never see a training file.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

Split = Literal["train", "heldout"]
HELDOUT_PERCENT = 10  # files whose path hashes into the last 10% are held out
# The fidelity suite's prose (tasks/fidelity/make_documents.py) is the language reference that
# pydoc ships: never train on it, whatever split its path hashes into.
NEVER_TRAIN = ("pydoc_data/",)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(split: Split, root: Path | None = None) -> list[Path]:
    """Sorted .py files of one split (site-packages and caches excluded)."""
    return list(_split_files(split, root or stdlib_root()))


@lru_cache(maxsize=8)
def _split_files(split: Split, root: Path) -> tuple[Path, ...]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or "__pycache__" in rel or rel.startswith(NEVER_TRAIN):
            continue
        bucket = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) % 100
        if (bucket < 100 - HELDOUT_PERCENT) == (split == "train"):
            out.append(path)
    return tuple(out)


def _texts(files: list[Path], seed: int) -> Iterator[str]:
    order = list(files)
    random.Random(seed).shuffle(order)  # mix modules, but the same mix every run
    for path in order:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) > 2000:  # tiny files add separators, not structure
            yield f"# file: {path.name}\n{text}\n\n"


def token_sequences(tokenizer, split: Split, count: int, length: int, *, seed: int = 0,
                    root: Path | None = None) -> torch.Tensor:
    """[count, length] token ids cut from concatenated files of `split` (deterministic)."""
    need = count * length
    ids: list[int] = []
    for text in _texts(stdlib_files(split, root), seed):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the {split} corpus gave only {len(ids)} tokens, {need} needed")
    return torch.tensor(ids[:need], dtype=torch.long).view(count, length)
