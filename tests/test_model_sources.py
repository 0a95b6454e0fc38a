"""Model sources of `local:` specs: hub and ModelScope ids from pre-filled local caches, no network."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from dsparity.errors import DsparityError
from dsparity.evals.specs import parse_spec
from dsparity.model.loading import load_causal_lm, resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def _hf_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "hf-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _put_hf(cache: Path, tiny: Path, repo: str, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """The hub cache layout: models--ORG--NAME/{blobs,snapshots/<commit>,refs/<branch>}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in tiny.iterdir():  # files are symlinks into blobs/, as huggingface_hub writes them
        blob = blobs / f"{commit[:8]}-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snap


def test_hub_id_resolves_from_the_local_cache_and_pins_the_commit(tmp_path, monkeypatch, tiny_model_dir):
    cache = _hf_cache(tmp_path, monkeypatch)
    snap = _put_hf(cache, tiny_model_dir, "tiny-org/tiny-llama", COMMIT)
    _put_hf(cache, tiny_model_dir, "tiny-org/tiny-llama", OTHER, refs=("dev",))
    for name in ("tiny-org/tiny-llama", "hf:tiny-org/tiny-llama", "hf:tiny-org/tiny-llama@main"):
        r = resolve(name)
        assert Path(r.path) == snap and r.gguf_file is None
        assert r.revision == COMMIT and r.source == f"hf:tiny-org/tiny-llama@{COMMIT}"
    assert resolve("hf:tiny-org/tiny-llama@dev").revision == OTHER  # a branch
    assert resolve(f"tiny-org/tiny-llama@{OTHER}").revision == OTHER  # a commit
    model, tok, r = load_causal_lm("hf:tiny-org/tiny-llama")
    assert r.revision == COMMIT and model.config.hidden_size == 64 and tok.chat_template


def test_uncached_hub_id_fails_at_once_in_one_line(tmp_path, monkeypatch):
    _hf_cache(tmp_path, monkeypatch)
    for name in ("nobody/not-cached", "hf:nobody/not-cached@v2"):
        start = time.monotonic()
        with pytest.raises(DsparityError) as err:
            resolve(name)
        assert time.monotonic() - start < 2.0
        line = str(err.value)
        assert "\n" not in line and "not in the local Hugging Face cache" in line
        assert "hf download nobody/not-cached" in line


def test_bad_ids_are_rejected_in_one_line():
    for name in ("hf:no-slash", "modelscope:a/b/c", "hf:org/name@"):
        with pytest.raises(DsparityError, match="is not a"):
            resolve(name)


def _ms_cache(tmp_path: Path, monkeypatch) -> Path:
    pytest.importorskip("modelscope")
    cache = tmp_path / "modelscope"
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    return cache


def test_modelscope_id_resolves_from_the_local_cache(tmp_path, monkeypatch, tiny_model_dir):
    cache = _ms_cache(tmp_path, monkeypatch)
    # modelscope >= 1.38 layout: {cache}/models/ORG--NAME/snapshots/<revision>/
    snap = cache / "models" / "tiny-org--tiny-llama" / "snapshots" / "master"
    shutil.copytree(tiny_model_dir, snap)
    r = resolve("modelscope:tiny-org/tiny-llama")
    assert Path(r.path) == snap
    assert r.revision.startswith("master-") and r.source == f"modelscope:tiny-org/tiny-llama@{r.revision}"
    assert resolve("modelscope:tiny-org/tiny-llama").revision == r.revision  # stable
    tagged = cache / "models" / "tiny-org--tiny-llama" / "snapshots" / "v1.0"
    shutil.copytree(tiny_model_dir, tagged)
    assert resolve("modelscope:tiny-org/tiny-llama@v1.0").revision.startswith("v1.0-")
    model, _, loaded = load_causal_lm("modelscope:tiny-org/tiny-llama")
    assert loaded.revision == r.revision and model.config.num_hidden_layers == 2


def test_modelscope_legacy_cache_layout_resolves(tmp_path, monkeypatch, tiny_model_dir):
    cache = _ms_cache(tmp_path, monkeypatch)
    # modelscope <= 1.37 layout: {cache}/models/ORG/NAME with dots written as ___
    legacy = cache / "models" / "tiny-org" / "tiny___llama-0___1"
    shutil.copytree(tiny_model_dir, legacy)
    assert Path(resolve("modelscope:tiny-org/tiny.llama-0.1").path) == legacy


def test_uncached_modelscope_id_fails_at_once_in_one_line(tmp_path, monkeypatch):
    _ms_cache(tmp_path, monkeypatch)
    import modelscope  # noqa: F401  (import time is not what is measured)

    start = time.monotonic()
    with pytest.raises(DsparityError) as err:
        resolve("modelscope:deepseek-ai/DeepSeek-V3.2-Exp")
    assert time.monotonic() - start < 2.0
    line = str(err.value)
    assert "\n" not in line and "not in the local ModelScope cache" in line
    assert "modelscope download --model deepseek-ai/DeepSeek-V3.2-Exp" in line


def test_missing_modelscope_package_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_modelscope(name, *args, **kwargs):
        if name == "modelscope" or name.startswith("modelscope."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_modelscope)
    with pytest.raises(DsparityError, match=r"dsparity\[modelscope\]"):
        resolve("modelscope:org/name")


def test_folder_and_gguf_sources_keep_working(tmp_path, tiny_model_dir):
    r = resolve(str(tiny_model_dir))
    assert r.path == str(tiny_model_dir) and r.source.startswith("folder:")
    with pytest.raises(DsparityError, match="no such GGUF file"):
        resolve(str(tmp_path / "missing.gguf"))


def test_specs_accept_every_source_and_mode():
    for text in ("local:hf:org/name@abc?attention=window&sink=4",
                 "local:modelscope:deepseek-ai/DeepSeek-V3.2-Exp?attention=block&block_size=64",
                 "local:org/name?attention=oracle&topk=128"):
        spec = parse_spec(text)
        assert spec.kind == "local" and spec.name == text[len("local:"):text.index("?")]
