#!/usr/bin/env python
"""How much does the deployed indexer's FP8 (e4m3) q/k, with and without the Hadamard rotation,
change what it selects? Top-k overlap with the fp32 indexer, measured on a real model's activations.

    python bench/indexer_fp8.py                    # default model, untrained (random) indexers
    python bench/indexer_fp8.py --trained          # warmed-up indexers (prepare_dsa: cached or trained)
    python bench/indexer_fp8.py --model FOLDER     # any local model dsparity converts (e.g. DeepseekV3)

Every layer runs dense (the dense model's hidden states, `runtime.inspect`) and reports the k keys
its indexer would select in each format, so one layer's format never shifts another's input.
Overlap = |S_fmt & S_fp32| / |S_fp32| over query rows t >= k (earlier rows select everything),
per layer, then averaged; recall = attention mass the selection keeps (metrics.py). Formats follow
DeepSeek's inference code (dsa.md §3.3-3.4, `dsparity/model/fp8.py`): Hadamard after RoPE, then
per-128 ue8m0 scales and e4m3 values for both q and k.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMATS = {"fp32": (False, False), "hadamard": (False, True), "fp8": (True, False),
           "fp8+hadamard": (True, True)}


def selections(model, ids: torch.Tensor, k: int) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """{layer: indices [N, rows, k]} and {layer: mean recall} for query rows t >= k."""
    from dsparity.model.selection import attention_recall

    runtime = model.dsa_runtime
    picked: dict[int, list] = {}
    recall: dict[int, list] = {}

    def inspect(layer_idx, probs, indices):
        picked.setdefault(layer_idx, []).append(indices[:, k:].cpu())
        recall.setdefault(layer_idx, []).append(float(attention_recall(probs[:, k:], indices[:, k:]).mean()))

    runtime.inspect = inspect
    try:
        with torch.no_grad():
            for row in ids:
                model(row[None], use_cache=False, logits_to_keep=1)
    finally:
        runtime.inspect = None
    return ({i: torch.cat(v) for i, v in picked.items()},
            {i: sum(v) / len(v) for i, v in recall.items()})


def main(argv=None) -> int:
    from dsparity.model import DSAConfig, convert_to_dsa, prepare_dsa, set_dsa
    from dsparity.model.corpus import token_sequences
    from dsparity.model.fp8 import topk_overlap
    from dsparity.model.loading import DEFAULT_MODEL, load_causal_lm

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--topk", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--sequences", type=int, default=2, help="held-out sequences")
    p.add_argument("--trained", action="store_true", help="warmed-up indexers (prepare_dsa)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer, resolved = load_causal_lm(args.model)
    config = DSAConfig(index_topk=args.topk)
    if args.trained:
        prepare_dsa(model, tokenizer, base_revision=resolved.revision, topk=args.topk, config=config)
    else:
        convert_to_dsa(model, config)
    ids = token_sequences(tokenizer, "heldout", args.sequences, args.seq_len)
    d_i = model.dsa_runtime.config.index_head_dim
    print(f"{args.model} ({getattr(model.config, 'model_type', '?')}), "
          f"{'warmed-up' if args.trained else 'untrained'} indexers H_I="
          f"{model.dsa_runtime.config.index_n_heads} d_I={d_i}, L={args.seq_len}, k={args.topk}, "
          f"{args.sequences} held-out sequences", flush=True)
    results = {}
    for name, (fp8, rotate) in FORMATS.items():
        set_dsa(model, index_fp8=fp8, index_hadamard=rotate)
        results[name] = selections(model, ids, args.topk)
        print(f"  {name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    base, base_recall = results["fp32"]
    rows = []
    print("\n| format | top-k overlap with fp32 (mean over layers) | lowest layer | recall | recall fp32 |")
    print("|---|---|---|---|---|")
    for name, (picked, recall) in results.items():
        per_layer = [topk_overlap(picked[i], base[i]) for i in sorted(base)]
        row = dict(format=name, overlap=sum(per_layer) / len(per_layer), lowest=min(per_layer),
                   recall=sum(recall.values()) / len(recall),
                   recall_fp32=sum(base_recall.values()) / len(base_recall))
        rows.append(row)
        print(f"| {name} | {row['overlap']:.4f} | {row['lowest']:.4f} | {row['recall']:.4f} | "
              f"{row['recall_fp32']:.4f} |")
    print(f"\nwall {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(dict(model=args.model, trained=args.trained, topk=args.topk,
                              seq_len=args.seq_len, sequences=args.sequences, rows=rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
