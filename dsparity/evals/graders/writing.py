"""Writing graders: IFEval-style verifiable constraints (IFEval itself through lm-eval's own
instruction checkers), and the long-form (100k-character novel with a reminder every 10,000
characters) structure checks. Reasoning is stripped first."""

from __future__ import annotations

import importlib.util
import os
import re
import unicodedata
import zlib
from collections import Counter
from typing import Any

from dsparity.errors import DsparityError
from dsparity.evals.graders.base import Grade, GradeInput, register

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_WORD = re.compile(r"[^\W\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff]+")
_SCRIPTS = {  # language -> the Unicode-name prefixes of its letters
    "zh": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA"),
    "ko": ("HANGUL",),
    "ru": ("CYRILLIC",),
    "uk": ("CYRILLIC",),
    "ar": ("ARABIC",),
    "el": ("GREEK",),
    "he": ("HEBREW",),
    "hi": ("DEVANAGARI",),
    "th": ("THAI",),
    "bn": ("BENGALI",),
}


def count_words(text: str) -> int:
    """IFEval's `\\w+` words, except that every CJK character counts as one word."""
    return len(_WORD.findall(text)) + len(_CJK.findall(text)) + len(re.findall(r"[\u3040-\u30ff]", text))


def script_share(text: str, language: str) -> float:
    """Share of letters written in the language's script (Latin for en and other Latin-script languages)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    prefixes = _SCRIPTS.get(language, ("LATIN",))
    hits = sum(unicodedata.name(ch, "").startswith(prefixes) for ch in letters)
    return hits / len(letters)


def _headings(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"#{1,6}\s+(.*)", s)
        if m:
            out.append(m.group(1))
        elif s and len(s) <= 120:
            out.append(s)
    return [re.sub(r"[*_#:：]+", "", h).strip().lower() for h in out]


def _check(constraint: dict[str, Any], text: str) -> tuple[bool, Any]:
    kind = constraint.get("type")
    value = constraint.get("value")
    if kind == "min_chars":
        return len(text) >= value, len(text)
    if kind == "max_chars":
        return len(text) <= value, len(text)
    if kind == "min_words":
        return count_words(text) >= value, count_words(text)
    if kind == "max_words":
        return count_words(text) <= value, count_words(text)
    if kind == "sections":
        heads = _headings(text)
        missing = [h for h in constraint.get("headings", []) if h.strip().lower() not in heads]
        return not missing, {"missing": missing}
    if kind == "keyword_count":
        kw = constraint["keyword"]
        flags = 0 if constraint.get("case_sensitive") else re.IGNORECASE
        pattern = re.escape(kw) if _CJK.search(kw) else rf"(?<!\w){re.escape(kw)}(?!\w)"
        n = len(re.findall(pattern, text, flags))
        return constraint.get("min", 0) <= n <= constraint.get("max", float("inf")), n
    if kind == "language":
        share = script_share(text, value)
        return share >= constraint.get("min_share", 0.5 if value in _SCRIPTS else 0.9), round(share, 4)
    if kind == "no_commas":
        n = text.count(",") + text.count("，") + text.count("、")
        return n == 0, n
    if kind == "ends_with":
        return text.rstrip().endswith(value.rstrip()), text.rstrip()[-len(value) - 20 :]
    if kind == "starts_with":
        return text.lstrip().startswith(value.lstrip()), text.lstrip()[: len(value) + 20]
    if kind == "forbidden_words":
        found = [w for w in value if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.IGNORECASE)]
        return not found, found
    if kind == "min_paragraphs":
        n = len([p for p in re.split(r"\n\s*\n", text) if p.strip()])
        return n >= value, n
    raise ValueError(f"unknown writing constraint type {kind!r}")


CONSTRAINT_TYPES = (
    "min_chars",
    "max_chars",
    "min_words",
    "max_words",
    "sections",
    "keyword_count",
    "language",
    "no_commas",
    "ends_with",
    "starts_with",
    "forbidden_words",
    "min_paragraphs",
)


IFEVAL_PUNKT = "tokenizers/punkt_tab/english/"


def ifeval_preflight(source: str) -> None:
    """lm-eval's IFEval checkers can run here, offline; else one line saying what to install.

    Their module downloads NLTK's `punkt_tab` when it is imported and the data is missing (a
    network call in the middle of grading), and two instruction types split sentences with it;
    so the data must be installed first. `langdetect` and `immutabledict` come with
    `lm-eval[ifeval]`, which dsparity's install includes."""
    missing = [m for m in ("langdetect", "immutabledict", "nltk") if importlib.util.find_spec(m) is None]
    if missing:
        raise DsparityError(source, "checker: ifeval", f"lm-eval's IFEval checkers need "
                            f"{', '.join(missing)}, which is not installed",
                            "pip install 'lm-eval[ifeval]' (scripts/setup installs it)")
    import nltk

    try:
        nltk.data.find(IFEVAL_PUNKT)
    except LookupError:
        raise DsparityError(source, "checker: ifeval", "lm-eval's IFEval checkers need NLTK's "
                            "punkt_tab sentence model (english), which is not installed",
                            "run python -m nltk.downloader punkt_tab where the internet is reachable, "
                            "or set NLTK_DATA to a folder holding tokenizers/punkt_tab") from None


def ifeval(sample: GradeInput) -> Grade:
    """IFEval graded by lm-eval's own checkers (`lm_eval.tasks.ifeval.utils.process_results`,
    Zhou et al. 2023): the prompt-level strict score (every instruction followed) is the score,
    with the loose variant and the per-instruction results beside it. langdetect is seeded (0)
    first: unseeded, it can name another language for the same text on another run."""
    ifeval_preflight("writing grader (IFEval)")
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import utils as lm_ifeval

    doc = sample.doc
    text = sample.text
    kwargs = [dict(kw or {}) for kw in doc["kwargs"]]
    results = lm_ifeval.process_results(
        {"key": doc.get("key"), "instruction_id_list": list(doc["instruction_id_list"]),
         "prompt": doc["prompt"], "kwargs": kwargs}, [text])
    strict = bool(results["prompt_level_strict_acc"])
    return Grade(float(strict), strict, {
        "prompt_level_strict_acc": strict,
        "prompt_level_loose_acc": bool(results["prompt_level_loose_acc"]),
        "inst_level_strict_acc": [bool(x) for x in results["inst_level_strict_acc"]],
        "inst_level_loose_acc": [bool(x) for x in results["inst_level_loose_acc"]],
        "instructions": list(doc["instruction_id_list"]),
        "checker": "lm_eval.tasks.ifeval",
        "chars": len(text), "empty": not text, "truncated": sample.finish_reason == "length",
    })


@register("writing")
def writing(sample: GradeInput, settings: dict) -> Grade:
    """IFEval-style verifiable constraints (with settings `checker: ifeval`: IFEval's own
    instructions, checked by lm-eval's IFEval code; see `ifeval`).

    doc field `constraints` (or settings `constraints`): a list of `{"type": ..., ...}`:
    `min_chars`/`max_chars` (`value`, Unicode code points), `min_words`/`max_words` (`value`; `\\w+`
    words, each CJK character one word), `sections` (`headings`: required heading lines, markdown
    `#` or a short line of their own, case-insensitive), `keyword_count` (`keyword`, `min`, `max`,
    `case_sensitive`), `language` (`value` e.g. "zh"/"en": share of letters in that script >=
    `min_share`, default 0.5 for non-Latin scripts, 0.9 for Latin), `no_commas` (ASCII, full-width
    and ideographic), `ends_with`/`starts_with` (`value`), `forbidden_words` (`value`: list),
    `min_paragraphs` (`value`). score = fraction satisfied; passed = all; details per constraint.
    """
    if settings.get("checker") == "ifeval":
        return ifeval(sample)
    text = sample.text
    constraints = sample.doc.get("constraints") or settings.get("constraints") or []
    results = []
    for c in constraints:
        try:
            ok, observed = _check(c, text)
        except (KeyError, TypeError, ValueError) as exc:
            ok, observed = False, f"bad constraint: {exc}"
        results.append({"constraint": c, "ok": bool(ok), "observed": observed})
    n_ok = sum(r["ok"] for r in results)
    score = n_ok / len(results) if results else 0.0
    return Grade(
        score,
        bool(results) and n_ok == len(results),
        {
            "constraints": results,
            "chars": len(text),
            "words": count_words(text),
            "empty": not text,
            "truncated": sample.finish_reason == "length",
        },
    )


# ---------------------------------------------------------------------------------------------
# long-form: the 100,000-character novel with a reminder every 10,000 characters

_REMINDER_WORDS = (
    r"reminder|progress|checkpoint|milestone|characters?\s+(?:so far|written)|字数|提醒|进度|已写|已完成|"
    r"字符"
)
_NUMBER = re.compile(r"(\d{1,3}(?:[,，]\d{3})+|\d+(?:\.\d+)?)\s*(万|萬|k|K|千)?")


def _stated_number(line: str) -> int | None:
    best = None
    for m in _NUMBER.finditer(line):
        value = float(re.sub(r"[,，]", "", m.group(1)))
        mult = {"万": 10_000, "萬": 10_000, "k": 1000, "K": 1000, "千": 1000}.get(m.group(2) or "", 1)
        n = int(value * mult)
        if best is None or n > best:
            best = n
    return best


def find_reminders(text: str, pattern: str | None = None) -> list[dict[str, Any]]:
    """Candidate reminder lines: a line matching `pattern` (when the prompt fixes a format) or a
    short line with a reminder word and a number. Offsets are code points before the line."""
    found, offset = [], 0
    rx = re.compile(pattern) if pattern else re.compile(_REMINDER_WORDS, re.IGNORECASE)
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if s and len(s) <= 200 and rx.search(s) and (pattern or _NUMBER.search(s)):
            found.append({"offset": offset, "line": s[:200], "stated": _stated_number(s)})
        offset += len(line)
    return found


def _match_positions(expected: list[int], reminders: list[dict[str, Any]], tol: int) -> list[int | None]:
    """For each expected position, the index of the nearest unused reminder within tol."""
    used: set[int] = set()
    out: list[int | None] = []
    for p in expected:
        best = None
        for i, r in enumerate(reminders):
            d = abs(r["offset"] - p)
            if i not in used and d <= tol and (best is None or d < abs(reminders[best]["offset"] - p)):
                best = i
        if best is not None:
            used.add(best)
        out.append(best)
    return out


def longest_repeat(text: str, limit: int = 200_000) -> int:
    """Length of the longest substring that occurs at least twice (suffix automaton, linear time)."""
    text = text[:limit]
    link, length, trans = [-1], [0], [{}]
    last = 0
    for ch in text:
        cur = len(length)
        length.append(length[last] + 1)
        link.append(0)
        trans.append({})
        p = last
        while p != -1 and ch not in trans[p]:
            trans[p][ch] = cur
            p = link[p]
        if p != -1:
            q = trans[p][ch]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(length)
                length.append(length[p] + 1)
                link.append(link[q])
                trans.append(dict(trans[q]))
                while p != -1 and trans[p].get(ch) == q:
                    trans[p][ch] = clone
                    p = link[p]
                link[q] = clone
                link[cur] = clone
        last = cur
    # a state reached by a suffix link (an inner node) occurs at least twice
    best = 0
    for state in range(1, len(length)):
        parent = link[state]
        if parent > 0:
            best = max(best, length[parent])
    return best


def window_stats(window: str, n: int = 50) -> dict[str, float]:
    """Degeneration statistics of one window: zlib ratio, repeated character n-gram share, distinct-2."""
    raw = window.encode("utf-8")
    grams = Counter(window[i : i + n] for i in range(max(len(window) - n + 1, 0)))
    total = sum(grams.values())
    repeated = sum(c for c in grams.values() if c > 1)
    words = _WORD.findall(window) + _CJK.findall(window)
    bigrams = list(zip(words, words[1:], strict=False))
    return {
        "chars": len(window),
        "compression_ratio": round(len(zlib.compress(raw, 9)) / len(raw), 4) if raw else 0.0,
        f"repeated_{n}gram_share": round(repeated / total, 4) if total else 0.0,
        "distinct_2": round(len(set(bigrams)) / len(bigrams), 4) if bigrams else 0.0,
    }


def _token_count(text: str, tokenizer: str | None) -> tuple[int | None, str]:
    if not tokenizer:
        return None, "no tokenizer configured (settings.tokenizer)"
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        return len(tok.encode(text, add_special_tokens=False)), tokenizer
    except Exception as exc:  # any loading problem: record it, the character checks still stand
        return None, f"tokenizer {tokenizer!r} unavailable: {type(exc).__name__}"


@register("longform")
def longform(sample: GradeInput, settings: dict) -> Grade:
    """The long novel with periodic reminders.

    settings or doc (settings win): `target_chars` (default 100000), `reminder_every` (10000),
    `tolerance` (characters a reminder may sit from its expected position, and its stated count
    from its true offset; default 1000), `length_tolerance` (fraction below target that still
    passes length; default 0), `reminder_pattern` (regex for the reminder line when the prompt
    fixes its format; default: a short line with a reminder word and a number), `tokenizer`
    (HF tokenizer name/path for a token count, loaded offline; optional). With a `rubric` and a
    judge (settings `judge` or env DSPARITY_JUDGE), excerpts from the start, middle and end
    (`excerpt_chars` each, default 2000) are judged too: `details.quality` (not in the score).
    Lengths are Unicode code points of the final answer (reasoning stripped), whitespace and
    markup included. score = mean of [length ok, reminder recall, stated-count accuracy];
    passed = length ok and every expected reminder matched with a correct count.
    """
    cfg: dict[str, Any] = {**sample.doc, **settings}
    target = int(cfg.get("target_chars", 100_000))
    every = int(cfg.get("reminder_every", 10_000))
    tol = int(cfg.get("tolerance", 1000))
    length_tol = float(cfg.get("length_tolerance", 0.0))
    text = sample.text
    n = len(text)
    length_ok = n >= target * (1 - length_tol)
    reminders = find_reminders(text, cfg.get("reminder_pattern"))
    expected = [every * k for k in range(1, n // every + 1)]
    matches = _match_positions(expected, reminders, tol)
    matched = [reminders[i] for i in matches if i is not None]
    for r in reminders:
        r["stated_ok"] = r["stated"] is not None and abs(r["stated"] - r["offset"]) <= tol
    recall = sum(i is not None for i in matches) / len(expected) if expected else 0.0
    stated_acc = sum(r["stated_ok"] for r in matched) / len(expected) if expected else 0.0
    tokens, token_note = _token_count(text, cfg.get("tokenizer"))
    windows = [window_stats(text[i : i + every]) for i in range(0, n, every)] if n else []
    score = (float(length_ok) + recall + stated_acc) / 3
    passed = length_ok and bool(expected) and recall == 1.0 and stated_acc == 1.0
    return Grade(
        score,
        passed,
        {
            "chars": n,
            "target_chars": target,
            "length_ok": length_ok,
            "tokens": tokens,
            "tokens_source": token_note,
            "truncated": sample.finish_reason == "length",
            "reminder_every": every,
            "tolerance": tol,
            "expected_positions": expected,
            "reminders": reminders[:500],
            "matched": [None if i is None else reminders[i]["offset"] for i in matches],
            "recall": round(recall, 4),
            "spurious": len(reminders) - len(matched),
            "stated_count_accuracy": round(stated_acc, 4),
            "windows": windows,
            "longest_repeat_chars": longest_repeat(text),
            "max_repeated_50gram_share": max((w["repeated_50gram_share"] for w in windows), default=0.0),
            "counting": "Unicode code points of the final answer, whitespace and markup included",
            "quality": _judge_excerpts(text, cfg, sample.doc),
        },
    )


def _judge_excerpts(text: str, cfg: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any] | None:
    """The rubric judge on the start, middle and end of a long text (None without rubric/judge)."""
    judge = cfg.get("judge") or os.environ.get("DSPARITY_JUDGE")
    if not cfg.get("rubric") or not judge or not text:
        return None
    from dsparity.evals.graders.judge import score_answer

    k = int(cfg.get("excerpt_chars", 2000))
    mid = max(len(text) // 2 - k // 2, 0)
    parts = [text[:k], text[mid : mid + k], text[-k:]] if len(text) > 3 * k else [text]
    excerpt = "\n\n[…]\n\n".join(parts)
    question = next((str(doc[f]) for f in ("prompt", "question", "instruction") if f in doc), "")
    return score_answer(
        question,
        excerpt,
        judge=judge,
        rubric=cfg["rubric"],
        doc=doc,
        scale=tuple(cfg.get("scale", (1, 10))),
        retries=int(cfg.get("retries", 2)),
    )
