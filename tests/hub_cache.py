"""Local Hugging Face caches built in a test, laid out as an online run leaves them, so that
`datasets.load_dataset(path, name, split=...)` and `huggingface_hub.hf_hub_download` find them
with HF_HUB_OFFLINE=1 and no network.

- datasets: the Parquet builder (what `load_dataset` runs for a hub repository of parquet files)
  prepares the split files, which are then put where datasets 5.x's offline fallback looks for a
  repository's cache: `<HF_DATASETS_CACHE>/<namespace>___<name>/<config>/<version>/<hash>/`
  (`datasets/load.py::CachedDatasetModuleFactory`, `packaged_modules/cache/cache.py`).
- hub files: `<HF_HUB_CACHE>/datasets--<namespace>--<name>/snapshots/<commit>/<file>` with
  `refs/main` naming the commit (huggingface_hub's cache layout).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(name="hub_home")
def hub_home_fixture(tmp_path, monkeypatch) -> Path:
    """Private datasets and hub caches for one test (the libraries read these at call time)."""
    import datasets.config
    import huggingface_hub.constants

    root = tmp_path / "hf"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "datasets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return root


def write_dataset(repo: str, config: str, splits: dict[str, list[dict]], features=None) -> Path:
    """`repo` (config `config`) in the datasets cache, one split per entry, with these features."""
    import datasets
    import datasets.config
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache = Path(datasets.config.HF_DATASETS_CACHE)
    scratch = cache.parent / "scratch"
    files = {}
    for split, rows in splits.items():
        out = scratch / f"{split}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(out))
        files[split] = [str(out)]
    name = repo.split("/")[-1]
    builder = Parquet(cache_dir=str(scratch / "build"), dataset_name=name, config_name=config,
                      hash=COMMIT[:16], data_files=files, features=features)
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    namespace = repo.split("/")[0]
    target = cache / f"{namespace}___{builder.dataset_name}" / config / built.parts[-2] / built.parts[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), str(target))
    shutil.rmtree(scratch)
    return target


def write_hub_file(repo: str, filename: str, text: str) -> Path:
    """One file of a dataset repository in the hub's file cache."""
    import huggingface_hub.constants

    folder = Path(huggingface_hub.constants.HF_HUB_CACHE) / ("datasets--" + repo.replace("/", "--"))
    path = folder / "snapshots" / COMMIT / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return path
