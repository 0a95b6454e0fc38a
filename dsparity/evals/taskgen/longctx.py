"""RULER-style long-context items at exact token lengths for a given tokenizer.

Kinds (after RULER, Hsieh et al. 2024): `niah_single`, `niah_multikey`, `niah_multivalue`
(needles in a haystack), `vt` (variable tracking through a chain of assignments), `cwe` (common
word extraction) and `qa` (which document holds a quoted passage, among distractor documents).
The haystack is installed text (standard-library docstrings, `tasks/longctx/haystack.json.gz`).

Length = tokens of the whole user message under the tokenizer, without the chat template and
without special tokens. Each prompt is grown or shrunk on the haystack's token stream until it
sits within `LENGTH_TOLERANCE` of the target; depth = share of the context before the needle.
Targets use the needle grader's convention: every value in "v1 | v2 | ..." must appear.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsparity.errors import DsparityError

LENGTH_TOLERANCE = 0.005  # generation aims well inside the promised 1%
KINDS = ("niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe", "qa")
ADJECTIVES = ["amber", "brisk", "cobalt", "dusty", "eager", "frosty", "gentle", "hollow", "ivory",
              "jolly", "keen", "lunar", "misty", "noble", "olive", "proud", "quiet", "rustic",
              "silver", "tidal", "umber", "vivid", "woven", "young", "zesty"]
NOUNS = ["anchor", "badger", "canyon", "dolphin", "ember", "falcon", "glacier", "harbor", "island",
         "jasmine", "kettle", "lantern", "meadow", "nectar", "orchid", "pebble", "quartz", "raven",
         "saddle", "thistle", "umbrella", "violin", "willow", "yarrow", "zephyr"]


@functools.lru_cache(maxsize=4)
def load_haystack(path: str) -> tuple[dict[str, str], ...]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.load(f)["documents"])


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """(tokenizer, identity) for a built-in model name, a model folder or a hub id."""
    from transformers import AutoTokenizer

    from dsparity.model.loading import resolve

    resolved = resolve(name)
    kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, local_files_only=resolved.revision != "hub",
                                            **kwargs)
    except OSError as exc:
        raise DsparityError(f"tokenizer {name}", "tokenizer", str(exc).splitlines()[0],
                            "give a model folder with a tokenizer, or set DSPARITY_TOKENIZER") from None
    return tok, f"{name}@{resolved.revision}"


class Counter:
    def __init__(self, tok):
        self.tok = tok

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def __call__(self, text: str) -> int:
        return len(self.ids(text))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def generate(task: str, kind: str, *, lengths: list[int], size: int, seed: int, tokenizer: str,
             haystack: Path):
    if kind not in KINDS:
        raise DsparityError(task, "metadata.dsparity.kind", f"unknown long-context kind {kind!r}",
                            f"use one of: {', '.join(KINDS)}")
    tok, tok_id = load_tokenizer(tokenizer)
    count = Counter(tok)
    docs = load_haystack(str(haystack))
    for length in lengths:
        for j in range(size):
            depth = round(j / (size - 1), 4) if size > 1 else 0.5
            rng = random.Random(f"{seed}:{task}:{length}:{j}")
            item = _MAKERS[kind](rng, length, depth, count, docs)
            n = count(item["prompt"])
            if abs(n - length) > 0.01 * length:
                raise DsparityError(task, f"length {length}", f"could only reach {n} tokens",
                                    "use a longer target length")
            yield {"id": f"{task}-{length}-{j}", "kind": kind, "target_tokens": length,
                   "length_tokens": n, "tokenizer": tok_id, "seed": seed, **item}


# -- building blocks ---------------------------------------------------------------------------

def _filler_stream(docs, rng: random.Random) -> str:
    """Haystack prose from a random starting document, wrapping around (repeats if needed)."""
    start = rng.randrange(len(docs))
    order = list(docs[start:]) + list(docs[:start])
    return "\n".join(d["text"] for d in order)


def _insert(context: str, pieces: list[tuple[float, str]], boundary: str = ". ") -> tuple[str, list[float]]:
    """Insert each piece at its depth (share of the context before it) on a boundary."""
    cuts = []
    for depth, piece in pieces:
        pos = int(depth * len(context))
        if 0 < pos < len(context):
            b = context.rfind(boundary, 0, pos)
            pos = b + len(boundary) if b >= 0 else 0
        cuts.append((min(pos, len(context)), piece))
    out, last, placed = [], 0, []
    total = len(context) + sum(len(p) + 1 for _, p in pieces)
    for pos, piece in sorted(cuts, key=lambda c: c[0]):
        out.append(context[last:pos])
        placed.append(round(sum(len(x) for x in out) / max(total, 1), 4))
        out.append(piece + " ")
        last = pos
    out.append(context[last:])
    return "".join(out), placed


def _fit(length: int, count: Counter, stream: str, render: Callable[[str], str]) -> str:
    """The prompt render(context) whose token count is closest to `length`, where context is a
    prefix of `stream` (repeated as needed) cut on its token stream."""
    ids = count.ids(stream)
    while len(ids) < 2 * length:
        ids = ids + ids
    fixed = count(render(""))
    n = max(0, length - fixed)
    best_context, best_gap = "", abs(fixed - length)
    for _ in range(8):
        context = count.decode(ids[:n]).strip()
        got = count(render(context))
        if abs(got - length) < best_gap:
            best_context, best_gap = context, abs(got - length)
        if got == length or best_gap <= LENGTH_TOLERANCE * length:
            break
        n = max(0, n + (length - got))
    return render(best_context)  # rendered last, so what `render` recorded belongs to this prompt


def _key(rng: random.Random, used: set[str]) -> str:
    while True:
        key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        if key not in used:
            used.add(key)
            return key


def _number(rng: random.Random, used: set[str]) -> str:
    while True:
        value = str(rng.randint(1_000_000, 9_999_999))
        if value not in used:
            used.add(value)
            return value


INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize "
         "them. I will quiz you about the numbers afterwards.\n\n")


def _niah(rng, length, depth, count, docs, *, n_keys: int, n_values: int) -> dict[str, Any]:
    used: set[str] = set()
    keys = [_key(rng, used) for _ in range(n_keys)]
    values = [[_number(rng, used) for _ in range(n_values)] for _ in keys]
    depths = [depth] + [rng.random() for _ in range(n_keys * n_values - 1)]
    needles = [f"One of the special magic numbers for {k} is: {v}."
               for k, vs in zip(keys, values, strict=True) for v in vs]
    if n_values > 1:
        question = (f"What are all the special magic numbers for {keys[0]} mentioned in the provided "
                    "text? List every one of them.")
    else:
        question = (f"What is the special magic number for {keys[0]} mentioned in the provided text? "
                    "Answer with the number only.")
    placed: list[float] = []

    def render(context: str) -> str:
        text, where = _insert(context, list(zip(depths, needles, strict=True)))
        placed[:] = where
        return f"{INTRO}{text}\n\n{question}"

    prompt = _fit(length, count, _filler_stream(docs, rng), render)
    order = sorted(range(len(depths)), key=lambda i: depths[i])
    actual = {order_i: placed[rank] for rank, order_i in enumerate(order)} if placed else {}
    return {"prompt": prompt, "question": question, "answer": " | ".join(values[0]),
            "depth": depth, "needle_depths": [actual.get(i, d) for i, d in enumerate(depths[:n_values])],
            "keys": keys}


def _vt(rng, length, depth, count, docs) -> dict[str, Any]:
    used: set[str] = set()
    names = []
    while len(names) < 5:
        name = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5))
        if name not in used:
            used.add(name)
            names.append(name)
    value = _number(rng, used)
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}."
                                              for i in range(1, len(names))]
    depths = sorted([depth] + [round(rng.uniform(depth, 1.0), 4) for _ in chain[1:]])
    question = (f"Find all variables that are assigned the value {value} in the text above, directly "
                "or through other variables. List their names.")
    intro = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"

    def render(context: str) -> str:
        text, _ = _insert(context, list(zip(depths, chain, strict=True)))
        return f"{intro}{text}\n\n{question}"

    prompt = _fit(length, count, _filler_stream(docs, rng), render)
    return {"prompt": prompt, "question": question, "answer": " | ".join(names), "depth": depth,
            "needle_depths": depths, "keys": names}


_VOCAB: dict[int, tuple[str, ...]] = {}


def _vocabulary(docs: tuple) -> tuple[str, ...]:
    if id(docs) not in _VOCAB:
        words = {w for d in docs for w in re.findall(r"\b[a-z]{6,12}\b", d["text"])}
        _VOCAB[id(docs)] = tuple(sorted(words))
    return _VOCAB[id(docs)]


def _cwe(rng, length, depth, count, docs) -> dict[str, Any]:
    vocab = list(_vocabulary(docs))
    rng.shuffle(vocab)
    common, rare_pool = vocab[:10], vocab[10:]
    question = ("What are the 10 most common words in the list above? Answer with the words only, "
                "separated by commas.")
    intro = "Below is a numbered list of words. Some words appear more often than others.\n\n"

    reps = max(4, min(30, length // 256))  # RULER uses 30 for long inputs; short ones need fewer
    rare_reps = 2

    def render_n(n_rare: int, n_once: int = 0) -> str:
        words = [w for w in common for _ in range(reps)] + rare_pool[:n_rare] * rare_reps
        words += rare_pool[n_rare:n_rare + n_once]  # singletons fill the last few tokens
        random.Random(n_rare * 7919 + n_once).shuffle(words)
        body = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(words))
        return f"{intro}{body}\n\n{question}"

    if count(render_n(0)) > length:
        raise DsparityError("longctx cwe", f"length {length}", "too short for 10 common words",
                            "use lengths of at least 1024 tokens for cwe")
    # Very long inputs outgrow the vocabulary: repeat the rare words more, always well below
    # the common words' count.
    while rare_reps < reps // 2 and count(render_n(len(rare_pool) - 1)) < length:
        rare_reps += 1

    def largest(fits) -> int:
        lo, hi = 0, len(rare_pool) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    n_rare = largest(lambda n: count(render_n(n)) <= length)
    n_once = largest(lambda m: n_rare + m < len(rare_pool) and count(render_n(n_rare, m)) <= length)
    prompt = render_n(n_rare, n_once)
    return {"prompt": prompt, "question": question, "answer": " | ".join(common), "depth": None,
            "needle_depths": [], "keys": common, "common_count": reps, "rare_count": rare_reps}


def _qa(rng, length, depth, count, docs) -> dict[str, Any]:
    for _ in range(1000):  # a document with a quotable sentence short enough for this length
        answer_i = rng.randrange(len(docs))
        gold = docs[answer_i]
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", gold["text"]) if s]
        candidates = [i for i, s in enumerate(sentences)
                      if 40 < len(s) <= 200 and "\n" not in s and count(s) <= max(16, length // 10)]
        if candidates:
            break
    else:
        raise DsparityError("longctx qa", f"length {length}", "no passage fits",
                            "use lengths of at least 1024 tokens for qa")
    k = rng.choice(candidates)
    passage = sentences[k]
    # The gold document is the passage with its neighbours, at most a quarter of the prompt.
    lo, hi = k, k + 1
    while True:
        grown = False
        for lo2, hi2 in ((lo - 1, hi), (lo, hi + 1)):
            if lo2 >= 0 and hi2 <= len(sentences) and \
                    count(" ".join(sentences[lo2:hi2])) <= length // 4:
                lo, hi, grown = lo2, hi2, True
        if not grown:
            break
    gold_text = " ".join(sentences[lo:hi])
    question = (f'Which document above contains the passage "{passage}"? Answer with the title of '
                "the document only.")
    rest = [d for i, d in enumerate(docs) if i != answer_i and passage not in d["text"]
            and d["title"] != gold["title"]]
    rng.shuffle(rest)
    stream = "\n\n".join(f"Document (title: {d['title']})\n{d['text']}" for d in rest)
    gold_doc = f"\n\nDocument (title: {gold['title']})\n{gold_text}\n\n"
    placed: list[float] = []

    def render(context: str) -> str:
        text, where = _insert(context, [(depth, gold_doc)], boundary="\n\n")
        placed[:] = where
        return f"Answer the question based on the given documents.\n\n{text}\n\n{question}"

    prompt = _fit(length, count, stream, render)
    return {"prompt": prompt, "question": question, "answer": gold["title"], "depth": depth,
            "needle_depths": placed[:1], "keys": [gold["title"]]}


_MAKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "niah_single": functools.partial(_niah, n_keys=1, n_values=1),
    "niah_multikey": functools.partial(_niah, n_keys=4, n_values=1),
    "niah_multivalue": functools.partial(_niah, n_keys=1, n_values=4),
    "vt": _vt,
    "cwe": _cwe,
    "qa": _qa,
}
