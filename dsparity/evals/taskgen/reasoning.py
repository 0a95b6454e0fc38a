"""Reasoning items from reasoning-gym's procedural generators, seeded and exactly gradable.

A task lists its generators (name + config) in `metadata.dsparity.generators`; items are dealt
round-robin over them, so any size keeps the mix. Each generator gets its own dataset seed derived
from the task seed and its position, and every item records generator, config, dataset seed and
index: `reasoning_gym.create_dataset(generator, seed=seed, size=index + 1, **config)[index]`
reproduces it.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any

from dsparity.errors import DsparityError


def generator_seed(task_seed: int, position: int) -> int:
    return task_seed * 1000 + position


def generate(task: str, generators: list[dict[str, Any]], *, size: int, seed: int):
    try:
        import reasoning_gym
    except ImportError:
        raise DsparityError(task, "reasoning-gym", "the reasoning suite needs reasoning-gym",
                            "pip install reasoning-gym") from None
    if not generators:
        raise DsparityError(task, "metadata.dsparity.generators", "no generators listed",
                            "list reasoning-gym generators as {name: ..., config: {...}}")
    counts = [len(range(p, size, len(generators))) for p in range(len(generators))]
    datasets = []
    for position, (gen, n) in enumerate(zip(generators, counts, strict=True)):
        name, config = gen["name"], dict(gen.get("config") or {})
        if n == 0:
            datasets.append(None)
            continue
        try:
            datasets.append(reasoning_gym.create_dataset(
                name, seed=generator_seed(seed, position), size=n, **config))
        except Exception as exc:  # unknown generator or a bad config key
            raise DsparityError(task, f"metadata.dsparity.generators[{position}]",
                                f"reasoning-gym could not build {name!r} ({exc})",
                                "use a generator name and config keys reasoning-gym knows") from None
    rg_version = version("reasoning-gym")
    for i in range(size):
        position, index = i % len(generators), i // len(generators)
        gen = generators[position]
        entry = datasets[position][index]
        yield {
            "id": f"{task}-{i}",
            "question": entry["question"],
            "answer": str(entry["answer"]),
            "generator": gen["name"],
            "config": dict(gen.get("config") or {}),
            "seed": generator_seed(seed, position),
            "index": index,
            "reasoning_gym": rg_version,
            "source_metadata": json.loads(json.dumps(entry.get("metadata") or {}, default=str)),
        }
