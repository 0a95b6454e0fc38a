"""Regenerate needle.jsonl: `python tasks/smoke/make_needle.py`. Deterministic (fixed seed).

RULER-style single needle: the "noise" haystack of repeated plain sentences, one key-value
sentence at a given depth. Lengths are in characters (about 4.3 per token for SmolLM2's
tokenizer); the longctx suite generates at exact token lengths.
"""

import json
import random
from pathlib import Path

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")
KEYS = ["amber-falcon", "quiet-river", "copper-lantern", "velvet-orchid"]


def make_item(i: int, chars: int, depth: float, rng: random.Random) -> dict:
    value = str(rng.randint(100000, 999999))
    needle = f"The special magic number for {KEYS[i]} is: {value}. "
    body = FILLER * (chars // len(FILLER) + 1)
    body = body[:chars]
    cut = body.rfind(". ", 0, int(depth * len(body))) + 2 if depth > 0 else 0
    context = body[:cut] + needle + body[cut:]
    return {
        "id": f"needle-{i}",
        "context": context.strip(),
        "question": f"What is the special magic number for {KEYS[i]}? Answer with the number only.",
        "answer": value,
        "target_chars": chars,
        "length_chars": len(context),
        "depth": depth,
    }


def main() -> None:
    rng = random.Random(7)
    plan = [(6000, 0.1), (6000, 0.6), (12000, 0.3), (12000, 0.9)]
    out = Path(__file__).with_name("needle.jsonl")
    with out.open("w") as f:
        for i, (chars, depth) in enumerate(plan):
            f.write(json.dumps(make_item(i, chars, depth, rng)) + "\n")


if __name__ == "__main__":
    main()
