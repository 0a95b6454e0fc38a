"""Indexer weights on disk: one safetensors file per (base model revision, DSA config, warm-up).

Only the indexers are stored (a few MB); the file's metadata names the base model and the hash of
its weights, so loading onto a different base fails loudly instead of selecting garbage. Writes
are atomic (temp file + rename), so a crash never leaves a half-written cache entry.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from dsparity.model.config import DSAConfig
from dsparity.model.convert import dsa_layers

FORMAT = "dsparity-indexers/1"


def indexer_state(model) -> dict[str, torch.Tensor]:
    """{"layers.{i}.{param}": tensor} for every layer's indexer."""
    out = {}
    for layer in dsa_layers(model):
        for name, tensor in layer.indexer.state_dict().items():
            out[f"layers.{layer.layer_idx}.{name}"] = tensor.detach().cpu().contiguous()
    return out


def save_indexers(model, path: str | Path, *, base_model: str, base_revision: str,
                  report: dict | None = None) -> Path:
    from safetensors.torch import save_file

    import dsparity

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "base_model": base_model,
        "base_revision": base_revision,
        "base_model_type": str(getattr(model.config, "model_type", "")),
        "num_layers": str(len(list(dsa_layers(model)))),
        "hidden_size": str(model.config.hidden_size),
        "dsa_config": json.dumps(model.dsa_runtime.config.to_dict(), sort_keys=True),
        "warmup_report": json.dumps(report or {}),
        "dsparity_version": dsparity.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(indexer_state(model), str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # a shared cache entry, not a private temp file
    os.replace(tmp, path)
    return path


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dsparity indexer file (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    meta["dsa_config"] = json.loads(meta.get("dsa_config", "{}"))
    meta["warmup_report"] = json.loads(meta.get("warmup_report", "{}"))
    return meta


def load_indexers(model, path: str | Path, *, expect_revision: str | None = None) -> dict:
    """Copy saved indexer weights into a converted model; returns the file's metadata."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if expect_revision is not None and meta["base_revision"] != expect_revision:
        raise ValueError(f"{path}: indexers were trained on base revision {meta['base_revision']}"
                         f", this model is {expect_revision}")
    saved = DSAConfig.from_dict(meta["dsa_config"])
    current = model.dsa_runtime.config
    if saved.indexer_fields() != current.indexer_fields():
        raise ValueError(f"{path}: indexer shape {saved.indexer_fields()} does not match the "
                         f"model's DSA config {current.indexer_fields()}")
    state = load_file(str(path))
    layers = list(dsa_layers(model))
    if int(meta["num_layers"]) != len(layers):
        raise ValueError(f"{path}: {meta['num_layers']} layers saved, model has {len(layers)}")
    for layer in layers:
        prefix = f"layers.{layer.layer_idx}."
        layer.indexer.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                       if k.startswith(prefix)})
    return meta
