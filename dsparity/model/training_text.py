"""Warm-up text that teaches the indexer to retrieve: installed text plus synthetic long-range reads.

The attention an indexer must learn to predict is mostly sink and local; the rows that decide a
retrieval task (a question reading its answer far back) are rare in ordinary text. So a training
sequence here is filler with facts planted at random depths and a question at the end whose answer
the model must copy from one of them, in the model's chat format or as raw text:

- filler: Python standard-library files of the corpus's train split (code and docstrings, PSF
  licence), minus the modules whose docstrings make the long-context tasks' haystack
  (`tasks/longctx/haystack.json.gz`), so evaluation never sees training text;
- facts: key-value lookups in many phrasings (sentences, `key: value` lines, JSON, assignments),
  chains of variables, values of digits, words or codes, keys that never follow the evaluation
  tasks' adjective-noun pattern;
- answer rows: the query positions that predict the answer's tokens, where retrieval happens;
  the warm-up weights them (`WarmupConfig.answer_weight`).

Everything is drawn from a seeded RNG: the same seed gives the same sequences on any machine
with the same Python.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from dsparity.model.corpus import Split, stdlib_files, stdlib_root

# Modules whose docstrings are the long-context haystack (tasks/longctx/make_haystack.py): their
# files never become training filler. Top-level names: a package is excluded whole.
_HAYSTACK_NAMES = """
abc argparse array ast asyncio base64 bisect bz2 calendar cmd codecs collections colorsys concurrent
configparser contextlib copy csv dataclasses datetime decimal difflib dis email enum filecmp fnmatch
fractions ftplib functools getopt gettext glob graphlib gzip hashlib heapq hmac html http imaplib
inspect io ipaddress itertools json logging lzma mailbox math mimetypes multiprocessing netrc numbers
operator optparse os pathlib pickle pkgutil platform plistlib poplib pprint queue quopri random re
reprlib sched secrets selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl
statistics string struct subprocess tarfile tempfile textwrap threading timeit tokenize traceback
types typing unittest urllib uuid warnings wave weakref xml zipfile zoneinfo
"""
HAYSTACK_PACKAGES = frozenset(_HAYSTACK_NAMES.split())

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "zi", "quo", "bel", "dra", "nix", "sul", "pra",
              "gor", "fen", "wyn", "ost", "ul", "mar", "the", "cas", "dor", "ely", "ith"]
_WORDS = ["granite", "harvest", "lattice", "meridian", "obsidian", "paragon", "quiver", "saffron",
          "tundra", "vertex", "walnut", "zenith", "cobalt", "ember", "fjord", "glyph", "halcyon",
          "indigo", "juniper", "kestrel", "lumen", "marble", "nimbus", "orchard"]


@dataclass
class TrainingSequence:
    ids: list[int]
    answer_rows: list[int] = field(default_factory=list)  # rows predicting the answer tokens
    kind: str = "text"


def filler_files(split: Split, root: Path | None = None) -> list[Path]:
    root = root or stdlib_root()
    return [p for p in stdlib_files(split, root)
            if p.relative_to(root).parts[0].removesuffix(".py") not in HAYSTACK_PACKAGES]


class FillerStream:
    """Token ids of concatenated filler files, read lazily and wrapped around."""

    def __init__(self, tokenizer, split: Split, rng: random.Random, root: Path | None = None):
        self.tok, self.rng = tokenizer, rng
        self.files = filler_files(split, root)
        rng.shuffle(self.files)
        self.ids: list[int] = []
        self.next_file = 0

    def take(self, n: int) -> list[int]:
        while len(self.ids) < n:
            path = self.files[self.next_file % len(self.files)]
            self.next_file += 1
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            self.ids.extend(self.tok(text + "\n\n", add_special_tokens=False)["input_ids"])
        out, self.ids = self.ids[:n], self.ids[n:]
        return out


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _value(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return str(rng.randint(10**(n := rng.randint(4, 8)) // 10, 10**n - 1))
    if kind < 0.75:
        return f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}"
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(rng.randint(5, 8)))


_FACTS = [
    ("The access code for {k} is {v}.", "What is the access code for {k}?"),
    ("Remember: {k}'s number is {v}.", "What is {k}'s number?"),
    ("{k}: {v}", "What value is listed for {k}?"),
    ('"{k}": "{v}",', 'In the record above, what is the value of "{k}"?'),
    ("In the ledger, {k} was recorded as {v}.", "How was {k} recorded in the ledger?"),
    ("{k} = {v}", "What is {k} set to?"),
    ("Note that the password of {k} is {v}.", "Which password does {k} have?"),
]


def _fact(rng: random.Random) -> tuple[str, str, str]:
    """(statement, question, answer) in one of several phrasings."""
    fact, question = rng.choice(_FACTS)
    k, v = _key(rng), _value(rng)
    return fact.format(k=k, v=v), question.format(k=k), v


def _chain(rng: random.Random) -> tuple[list[str], str, str]:
    """Variable tracking: v0 = VALUE, v1 = v0, ... ; which variable holds VALUE last?"""
    names = [_key(rng).upper() for _ in range(rng.randint(2, 4))]
    value = _value(rng)
    steps = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}."
                                             for i in range(1, len(names))]
    return steps, f"Which value does VAR {names[-1]} end up holding?", value


def retrieval_sequence(tok, filler: FillerStream, rng: random.Random, length: int,
                       chat: bool) -> TrainingSequence:
    """Filler with planted facts (one asked about) and the question + answer at the end."""
    if rng.random() < 0.25:
        statements, question, answer = _chain(rng)
        kind = "chain"
    else:
        facts = [_fact(rng) for _ in range(rng.randint(1, 4))]
        statements = [f for f, _, _ in facts]
        _, question, answer = facts[rng.randrange(len(facts))]
        kind = "lookup"
    if chat:
        messages = [{"role": "user", "content": "\x00\n\n" + question}]
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        head, tail = rendered.split("\x00")
        prefix = tok(head, add_special_tokens=False)["input_ids"]
        suffix = tok(tail, add_special_tokens=False)["input_ids"]
        ans = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    else:
        prefix = []
        suffix = tok("\n\nQuestion: " + question + "\nAnswer:", add_special_tokens=False)["input_ids"]
        ans = tok(" " + answer, add_special_tokens=False)["input_ids"]
    planted = [tok(" " + s + " ", add_special_tokens=False)["input_ids"] for s in statements]
    budget = length - len(prefix) - len(suffix) - len(ans) - sum(len(p) for p in planted)
    doc = filler.take(max(budget, 0))
    cuts = sorted(rng.randrange(len(doc) + 1) for _ in planted)
    body, last = [], 0
    for cut, piece in zip(cuts, planted, strict=True):  # in order: a chain reads forwards
        body += doc[last:cut] + piece
        last = cut
    body += doc[last:]
    ids = (prefix + body + suffix + ans)[:length]
    start = len(prefix) + len(body) + len(suffix)
    rows = [start - 1 + j for j in range(len(ans)) if start + j < len(ids)]
    return TrainingSequence(ids, rows, kind)


def training_sequences(tok, split: Split, count: int, lengths: list[int], *, seed: int = 0,
                       retrieval_share: float = 0.75, root: Path | None = None) -> list[TrainingSequence]:
    """`count` sequences cycling through `lengths`; most plant a retrieval, half of those in the
    chat format; the rest are plain filler (ordinary attention patterns)."""
    rng = random.Random(f"{seed}:{split}")
    filler = FillerStream(tok, split, rng, root)
    out = []
    for i in range(count):
        length = lengths[i % len(lengths)]
        if rng.random() < retrieval_share:
            out.append(retrieval_sequence(tok, filler, rng, length, chat=rng.random() < 0.5))
        else:
            out.append(TrainingSequence(filler.take(length), [], "text"))
    return out
