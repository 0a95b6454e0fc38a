"""One call from a loaded dense model to a ready DSA model: convert, then load or warm up indexers.

The warmed-up indexers are cached per (base model revision, indexer shape, top-k, warm-up recipe)
under ``cache_root()/indexers``; the first use trains them (a few minutes on two CPU cores) and
writes the file atomically under a lock, so concurrent first users do the work once.
"""

from __future__ import annotations

import fcntl
import hashlib
from contextlib import contextmanager
from pathlib import Path

from dsparity.model.checkpoint import load_indexers, save_indexers
from dsparity.model.config import DSAConfig
from dsparity.model.convert import convert_to_dsa, set_dsa
from dsparity.model.indexer_init import default_dsa_config
from dsparity.model.loading import cache_root
from dsparity.model.plot import write_warmup_plot
from dsparity.model.warmup import WarmupConfig, warm_up


def indexer_cache_path(model, base_revision: str, warmup: WarmupConfig, cache_dir: Path) -> Path:
    """Keyed by the converted model's DSA config (the family defaults resolved, `convert.py`)."""
    config = model.dsa_runtime.config
    model_type = getattr(model.config, "model_type", "model")
    name = (f"{model_type}-{base_revision}-dsa{config.key()}-k{config.index_topk}"
            f"-w{warmup.key()}.safetensors")
    return cache_dir / name


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_dsa(model, tokenizer, *, base_revision: str, topk: int = 256,
                cache_dir: Path | None = None, progress: bool = True,
                config: DSAConfig | None = None, warmup: WarmupConfig | None = None):
    """Convert `model` to DSA in place and give it warmed-up indexers; returns the model.

    The result works with ``generate()`` and the KV cache (the indexer key cache rides along).
    ``model.dsa_revision`` is set to a short hash of the indexer weights file.
    """
    warmup = warmup or WarmupConfig()
    if config is None:  # the heads' shape where they can seed the indexers (indexer_init.py)
        config = default_dsa_config(model, topk) if warmup.init == "attention" else DSAConfig(index_topk=topk)
    if getattr(model, "dsa_runtime", None) is None:
        convert_to_dsa(model, config)
    else:
        set_dsa(model, topk=config.index_topk, enabled=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "indexers"
    path = indexer_cache_path(model, base_revision, warmup, cache_dir)
    if _try_load(model, path, base_revision):
        return stamp_indexers(model, path)
    with _file_lock(path.with_suffix(".lock")):
        if _try_load(model, path, base_revision):  # someone else finished while we waited
            return stamp_indexers(model, path)
        if progress:
            from rich.console import Console

            Console(stderr=True).print(
                f"[bold]DSA:[/] warming up the lightning indexers for {base_revision} "
                f"(first use only, a few minutes; cached in {path.parent})")
        report = warm_up(model, tokenizer, warmup, progress=progress)
        name = str(getattr(model.config, "_name_or_path", "") or "")
        save_indexers(model, path, base_model=name, base_revision=base_revision,
                      report=report.to_dict())
        write_warmup_plot(report.history, path.with_suffix(".svg"),
                          f"DSA indexer warm-up, k={config.index_topk}")
    return stamp_indexers(model, path)


def stamp_indexers(model, path: Path):
    """Record which indexer weights the model runs with (provenance for result rows)."""
    model.dsa_revision = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    model.dsa_indexer_file = str(path)
    return model


def _try_load(model, path: Path, base_revision: str) -> bool:
    if not path.exists():
        return False
    try:
        load_indexers(model, path, expect_revision=base_revision)
    except Exception:  # a corrupt or mismatched cache entry is rebuilt, not fatal
        return False
    return True
