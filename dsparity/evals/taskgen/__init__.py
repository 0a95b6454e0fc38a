"""Generators behind the built-in generated suites (reasoning, longctx) and their on-disk cache.

The task folders under `tasks/` stay declarative (lm-eval YAML + small JSONL); the code that
makes items lives here so it is importable, tested, and shipped in the wheel. Every generated
item records how it was made (generator, config, seed) and a content hash; the same parameters
always give the same items.
"""

from dsparity.evals.taskgen.cache import GenOptions, materialise, task_cache_dir

__all__ = ["GenOptions", "materialise", "task_cache_dir"]
