"""Fidelity items: held-out documents cut to exact token lengths for one tokenizer.

Each item is one document's first `length` tokens (after the tokenizer's prefix token, as
lm-eval's rolling log-likelihood starts), so two models that share the tokenizer score the very
same tokens at the very same positions. Documents come from `tasks/fidelity/documents.jsonl.gz`
(prose, code and legal text; see `make_documents.py` there); items are dealt round-robin over
the kinds, so every length holds each kind, in an order fixed by the seed.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from dsparity.errors import DsparityError


def load_documents(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DsparityError(str(path), "", "fidelity documents missing",
                            "run tasks/fidelity/make_documents.py")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "text" in r]


def generate(task: str, *, lengths: list[int], size: int, seed: int, tokenizer: str,
             documents: Path) -> list[dict[str, Any]]:
    from dsparity.evals.backends.local_scoring import prefix_token_id
    from dsparity.evals.taskgen.longctx import load_tokenizer

    tok, tok_id = load_tokenizer(tokenizer)
    docs = load_documents(documents)
    encoded = [(d, tok(d["text"], add_special_tokens=False)["input_ids"]) for d in docs]
    prefix = prefix_token_id(tok)
    rows: list[dict[str, Any]] = []
    for length in lengths:
        fits = [(d, ids) for d, ids in encoded if len(ids) >= length]
        by_kind: dict[str, list] = {}
        for d, ids in fits:
            by_kind.setdefault(d["kind"], []).append((d, ids))
        rng = random.Random(f"{seed}:{length}")
        for group in by_kind.values():
            rng.shuffle(group)
        dealt = _round_robin([by_kind[k] for k in sorted(by_kind)])
        if len(dealt) < size:
            raise DsparityError(task, "lengths", f"only {len(dealt)} documents have {length} tokens "
                                f"under {tok_id}, {size} asked for",
                                "ask for fewer items (--size) or shorter lengths")
        for d, ids in dealt[:size]:
            rows.append({"title": d["title"], "kind": d["kind"], "source": d["source"],
                         "length_tokens": length, "tokenizer": tok_id, "prefix_token": prefix,
                         "tokens": ids[:length], "text": tok.decode(ids[:length])})
    return rows


def _round_robin(groups: list[list]) -> list:
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out
