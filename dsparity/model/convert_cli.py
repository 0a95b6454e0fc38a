"""`dsparity convert`: a DeepseekV3 (MLA) model -> a warmed-up DeepseekV32 (DSA) checkpoint.

V3.1-Terminus -> V3.2-Exp in miniature: attach a lightning indexer to every layer (`mla.py`),
warm it up against the model's own dense attention (`warmup.warm_up`), write a transformers
checkpoint that loads as ``DeepseekV32ForCausalLM`` (`export.py`). Registered by the main CLI
as ``app.command("convert")(convert)``. Bad input (an unsupported architecture, an existing
non-empty output folder, k < 1, a warm-up that could not train anything) is one line and nothing
is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsparity.errors import DsparityError


def _model_name(spec: str) -> str:
    """`local:NAME?key=value` or NAME -> NAME."""
    return spec.removeprefix("local:").split("?", 1)[0]


def _check_architecture(name: str) -> None:
    """Refuse anything but DeepseekV3 from its config alone, before loading any weights."""
    from dsparity.model.loading import resolve

    resolved = resolve(name)
    if resolved.gguf_file:
        return  # GGUF configs are only known once loaded: checked after loading
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(resolved.path, local_files_only=resolved.revision != "hub")
    except (OSError, ValueError) as exc:
        raise DsparityError(f"model {name}", "config.json", str(exc).splitlines()[0],
                            "give a model folder or a cached hub id") from exc
    _require_deepseek_v3(name, getattr(cfg, "model_type", "?"))


def _require_deepseek_v3(name: str, model_type: str) -> None:
    if model_type != "deepseek_v3":
        raise DsparityError(f"model {name}", "model_type", f"{model_type!r} is not DeepseekV3: "
                            "`dsparity convert` turns DeepseekV3 (MLA) models into DeepseekV32",
                            "give a DeepseekV3 model; Llama-family models convert in memory "
                            "(`dsparity warmup`, attention=dsa)")


def convert(
    model: Annotated[str, typer.Option("--model", "-m", help="local model spec or folder of a "
                                       "DeepseekV3 model")],
    out: Annotated[Path, typer.Option("--out", help="new (or empty) folder for the DeepseekV32 "
                                      "checkpoint")],
    topk: Annotated[int, typer.Option(min=1, help="index_topk k (keys each query attends to)")] = 256,
    warmup_steps: Annotated[int, typer.Option(min=0, help="dense warm-up steps (0 = keep the "
                                              "random indexer init)")] = 200,
    seq_len: Annotated[int, typer.Option(min=2, help="warm-up sequence length (> k)")] = 2048,
    train_sequences: Annotated[int, typer.Option(min=1, help="warm-up training sequences")] = 8,
    heldout_sequences: Annotated[int, typer.Option(min=1, help="held-out sequences")] = 2,
    index_n_heads: Annotated[int | None, typer.Option(
        min=1, help="indexer heads H_I [default: half the attention heads, V3.2-Exp's 64 of 128]")] = None,
    index_head_dim: Annotated[int | None, typer.Option(
        min=2, help="indexer head dim d_I [default: 2 x qk_rope_head_dim, V3.2-Exp's 128]")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Convert a DeepseekV3 model to DSA, warm its indexers up, write a DeepseekV32 checkpoint."""
    from dsparity.cli.base import console
    from dsparity.cli.base import out as results
    from dsparity.model import DSAConfig, WarmupConfig, convert_to_dsa, warm_up
    from dsparity.model.export import export_v32, v32_classes
    from dsparity.model.loading import load_causal_lm

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DsparityError(f"--out {out}", "path", "exists and is not an empty folder",
                            "choose a new folder or empty this one")
    if warmup_steps and topk >= seq_len:
        raise DsparityError(f"--topk {topk}", "--seq-len", f"k is not below the warm-up length "
                            f"{seq_len}, so no query row has anything to select",
                            "lower --topk, raise --seq-len, or pass --warmup-steps 0")
    name = _model_name(model)
    v32_classes(f"--out {out}")  # this transformers can write DeepseekV32 at all
    _check_architecture(name)
    lm, tokenizer, resolved = load_causal_lm(name)
    _require_deepseek_v3(name, getattr(lm.config, "model_type", "?"))
    cfg = lm.config
    heads = index_n_heads or max(1, cfg.num_attention_heads // 2)
    dim = index_head_dim or 2 * cfg.qk_rope_head_dim
    try:
        dsa = DSAConfig(index_topk=topk, index_n_heads=heads, index_head_dim=dim)
        convert_to_dsa(lm, dsa)
    except ValueError as exc:
        raise DsparityError(f"model {name}", "indexer", str(exc), "pick --index-n-heads / "
                            "--index-head-dim that fit the model") from exc
    report = None
    if warmup_steps:
        recipe = WarmupConfig(lengths=(seq_len,), train_sequences=train_sequences,
                              heldout_sequences=heldout_sequences, steps=warmup_steps,
                              sparse_sequences=0, sparse_steps=0)
        report = warm_up(lm, tokenizer, recipe, progress=progress)
    provenance = {"base_model": resolved.name, "base_revision": resolved.revision,
                  "warmup_report": report.to_dict() if report else None}
    export_v32(lm, out, tokenizer=tokenizer, provenance=provenance)
    if report:
        s, f = report.start, report.final
        console.print(f"warm-up ({warmup_steps} steps, L={seq_len}, k={topk}): indexer KL "
                      f"{s.kl:.3f} -> {f.kl:.3f}, attention-mass recall {s.recall:.3f} -> "
                      f"{f.recall:.3f} (oracle {f.oracle:.3f}, window+sink {f.window_sink:.3f})")
    results.print(f"wrote {out}: DeepseekV32ForCausalLM, index_topk={topk}, index_n_heads={heads}, "
                  f"index_head_dim={dim}, {cfg.num_hidden_layers} indexers"
                  f"{'' if report else ' (not warmed up)'}", highlight=False, soft_wrap=True)
