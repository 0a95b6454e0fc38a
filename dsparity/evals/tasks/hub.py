"""Tasks whose data lives on the Hugging Face hub: stop in one line before a download that cannot
work, and recognise a dataset an earlier online run left in the local caches.

The caches are the ones `datasets.load_dataset(path, name)` reads offline (HF_DATASETS_OFFLINE /
HF_HUB_OFFLINE set): `$HF_DATASETS_CACHE/<namespace>___<snake_case name>/<config>/<version>/<hash>/`
(datasets 5.x `packaged_modules/cache`), and the hub's file cache
`$HF_HUB_CACHE/datasets--<namespace>--<name>/snapshots/` that `huggingface_hub.hf_hub_download` reads.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from dsparity.errors import DsparityError

_PACKAGED = {"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "xml", "sql"}


def hub_dataset(config: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """The hub dataset a task reads, or None when its data is local or generated."""
    path = config.get("dataset_path")
    if settings.get("needs_hub"):
        return str(path) if path else None
    if not path or "custom_dataset" in config:
        return None
    if str(path) in _PACKAGED:
        files = (config.get("dataset_kwargs") or {}).get("data_files")
        flat = [files] if isinstance(files, str) else list(files.values()) if isinstance(files, dict) \
            else list(files or [])
        flat = [f for v in flat for f in (v if isinstance(v, list) else [v])]
        return str(path) if any(str(f).startswith(("hf://", "http://", "https://")) for f in flat) else None
    return None if Path(str(path)).exists() else str(path)


def _snake(name: str) -> str:
    """The cache folder's spelling of a dataset name (datasets' own function)."""
    from datasets.naming import camelcase_to_snakecase

    return camelcase_to_snakecase(name)


def _caches() -> tuple[Path, Path]:
    """The datasets cache and the hub file cache, as the libraries themselves resolve them."""
    import datasets.config
    import huggingface_hub.constants

    return Path(datasets.config.HF_DATASETS_CACHE), Path(huggingface_hub.constants.HF_HUB_CACHE)


def in_local_cache(repo: str, name: str | None = None) -> bool:
    """Whether an earlier run left `repo` (and config `name`, when given) in a local cache."""
    parts = repo.split("/")
    parts[-1] = _snake(parts[-1])
    datasets_cache, hub_cache = _caches()
    root = datasets_cache / "___".join(parts)
    configs = [root / name] if name else list(root.glob("*")) if root.is_dir() else []
    if any(c.is_dir() and any(c.glob("*/*/dataset_info.json")) for c in configs):
        return True
    snapshots = hub_cache / ("datasets--" + repo.replace("/", "--")) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def preflight(yaml_path: Path, task: str, repo: str, name: str | None) -> None:
    """Fail in one line before lm-eval starts a download that cannot work."""
    what = f"{repo!r}" + (f" (config {name!r})" if name else "")
    if offline():
        if not in_local_cache(repo, name):
            raise DsparityError(str(yaml_path), "dataset_path",
                                f"{task} needs the Hugging Face dataset {what}, which is not in the "
                                "local datasets cache, and HF_HUB_OFFLINE is set",
                                "run once where huggingface.co is reachable to fill the cache "
                                "(HF_TOKEN for gated sets), or pick offline suites (dsparity tasks list)")
        return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError as exc:
        if in_local_cache(repo, name):
            raise DsparityError(str(yaml_path), "dataset_path",
                                f"{task}: huggingface.co is unreachable ({exc.__class__.__name__}); "
                                f"{what} is in the local cache", "set HF_HUB_OFFLINE=1 to read the "
                                "cache without the hub") from None
        raise DsparityError(str(yaml_path), "dataset_path",
                            f"{task} needs the Hugging Face dataset {what}, and huggingface.co is "
                            f"unreachable ({exc.__class__.__name__})",
                            "run where huggingface.co is reachable, or pick offline suites "
                            "(dsparity tasks list)") from None
