"""Which documents `--limit N` keeps: a fixed, seeded sample instead of the first N.

Documents are ordered once per task and the first N of that order are taken, so a bigger limit
keeps every item of a smaller one and two machines (or two models) get the very same items.

- Long-context documents (`target_tokens`, or `length_tokens` for the fidelity suite) are dealt
  round-robin over their lengths, shortest first, so `--limit 4` on four lengths runs one item
  at each. Within a length the depths are walked from a starting depth that moves along with the
  length (length i starts at depth i of its sorted depths), so the first items also cover the
  depths: 4 lengths x 4 depths at `--limit 4` give each length and each depth once.
- Generated reasoning documents are dealt the same way over their generators.
- Anything else: a seeded shuffle (Python's `random.Random` with a text seed, which is the same
  on every platform and independent of PYTHONHASHSEED).

The kept documents keep their own index (doc_id), so items pair across runs by what they are.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

SAMPLE_SEED = 1234
STRATA_KEYS = ("target_tokens", "length_tokens", "generator")


def _stratum_key(docs: Sequence[dict[str, Any]]) -> str | None:
    first = docs[0] if docs else {}
    return next((k for k in STRATA_KEYS if k in first and all(k in d for d in docs)), None)


def sample_order(docs: Sequence[dict[str, Any]], *, task: str, seed: int | None = None) -> list[int]:
    """Every document index, in the order `--limit` takes them."""
    rng = random.Random(f"dsparity-limit:{task}:{SAMPLE_SEED if seed is None else seed}")
    key = _stratum_key(docs)
    if key is None:
        order = list(range(len(docs)))
        rng.shuffle(order)
        return order
    strata: dict[Any, list[int]] = {}
    for i, doc in enumerate(docs):
        strata.setdefault(doc[key], []).append(i)
    groups = [strata[k] for k in sorted(strata, key=_sortable)]
    dealt = []
    for position, members in enumerate(groups):
        if any("depth" in docs[i] for i in members):
            ordered = sorted(members, key=lambda i: (docs[i].get("depth") is None,
                                                      docs[i].get("depth") or 0.0, i))
            start = position * len(ordered) // len(groups)
            dealt.append(ordered[start:] + ordered[:start])
        else:
            shuffled = list(members)
            rng.shuffle(shuffled)
            dealt.append(shuffled)
    order = []
    for r in range(max(len(g) for g in dealt)):
        order.extend(g[r] for g in dealt if r < len(g))
    return order


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def pick(docs: Sequence[dict[str, Any]], limit: int | None, *, task: str,
         seed: int | None = None) -> list[int]:
    """The indices `--limit` keeps, ascending (all of them without a limit)."""
    if limit is None or limit >= len(docs):
        return list(range(len(docs)))
    return sorted(sample_order(docs, task=task, seed=seed)[:limit])
