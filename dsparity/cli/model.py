"""Model-side commands: `dsparity cost-curve`, and `dsparity warmup` / `dsparity convert` when the
model extras import."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from dsparity.cli.base import (
    OutDir,
    app,
    console,
    out,
)
from dsparity.model.loading import DEFAULT_MODEL


@app.command("cost-curve")
def cost_curve(
    model: Annotated[str, typer.Option("--model", help="Local model name or folder")] = DEFAULT_MODEL,
    length: Annotated[int, typer.Option(min=64, help="Tokens in the measured pass")] = 8192,
    chunk: Annotated[int, typer.Option(min=1, help="Prefill chunk (tokens per timed forward)")] = 512,
    topk: Annotated[int, typer.Option(min=1, help="DSA top-k")] = 256,
    decode_every: Annotated[int, typer.Option(min=1, help="Decode probe every N positions")] = 1024,
    price: Annotated[float, typer.Option(min=0.0, help="Price of this machine per hour ($)")] = 2.0,
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 1,
    trained: Annotated[bool, typer.Option(
        help="Use warmed-up indexers (prepare_dsa; warms up if not cached) instead of untrained "
             "ones; the cost does not depend on them")] = False,
    out_dir: OutDir = Path("results/cost-curve"),
) -> None:
    """Prefill and decode cost per token vs position, dense vs DSA (table + SVG plot)."""
    import torch

    from dsparity.kernels import cost
    from dsparity.model.loading import load_causal_lm

    torch.set_num_threads(threads)
    console.print(f"loading {model} ...")
    lm, tokenizer, resolved = load_causal_lm(model)
    dsa_model = None
    if trained:
        import copy

        from dsparity.model import prepare_dsa

        dsa_model = prepare_dsa(copy.deepcopy(lm), tokenizer, base_revision=resolved.revision, topk=topk)
    curve = cost.measure(lm, name=model, length=length, chunk=chunk, topk=topk, dsa_model=dsa_model,
                         decode_every=decode_every, price_per_hour=price, progress=console.print)
    paths = cost.write(curve, out_dir)
    out.print(cost.table(curve), highlight=False, soft_wrap=True)
    out.print(cost.summary(curve), highlight=False, soft_wrap=True)
    out.print(f"price assumption: ${price:g} per hour of this machine; report: {paths['html']}",
              highlight=False, soft_wrap=True)

def _register_optional_commands() -> None:
    with contextlib.suppress(ImportError):
        from dsparity.model.cli import warmup

        app.command("warmup")(warmup)
    with contextlib.suppress(ImportError):
        from dsparity.model.convert_cli import convert

        app.command("convert")(convert)


_register_optional_commands()
