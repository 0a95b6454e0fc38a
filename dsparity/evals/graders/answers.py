"""Answer graders: exact / normalised match with strict and flexible extraction, needle match,
whole-word containment. Each grades the final answer only: `GradeInput` has already cut a
reasoning channel inlined in the text (`<think>...</think>`) away, so an answer found only while
thinking earns nothing."""

from __future__ import annotations

import re
import unicodedata

from dsparity.evals.graders.base import Grade, GradeInput, register

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_MARKUP = re.compile(r"[*_`$\\]|\\boxed\{|^answer\s*[:：]\s*", re.IGNORECASE)


def normalize(text: str) -> str:
    """Case, width, markdown emphasis, surrounding punctuation and thousands separators."""
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = _MARKUP.sub("", text).strip()
    text = text.strip(" .。!！?？:;\"'()[]{}")
    if _NUMBER.fullmatch(text):
        text = _canonical_number(text)
    return re.sub(r"\s+", " ", text)


def _canonical_number(text: str) -> str:
    text = text.replace(",", "")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def flexible_answer(text: str, target: str) -> str:
    """The last number when the target is a number, else the last non-empty line."""
    clean = unicodedata.normalize("NFKC", text)
    if _NUMBER.fullmatch(normalize(target)):
        numbers = _NUMBER.findall(clean)
        return _canonical_number(numbers[-1]) if numbers else ""
    lines = [ln for ln in clean.splitlines() if ln.strip()]
    return normalize(lines[-1]) if lines else ""


@register("exact")
def exact(sample: GradeInput, settings: dict) -> Grade:
    """Strict: the whole answer equals the target after normalising. Flexible: the extracted
    final answer does. `settings["primary"]` (strict | flexible) picks the score; both are kept."""
    answer = sample.text
    target = normalize(sample.target)
    strict = normalize(answer) == target
    extracted = flexible_answer(answer, sample.target)
    flexible = strict or extracted == target
    primary = settings.get("primary", "flexible")
    ok = flexible if primary == "flexible" else strict
    return Grade(float(ok), ok, {"strict": strict, "flexible": flexible, "extracted": extracted,
                                 "primary": primary})


_WHOLE_NUMBER = re.compile(r"(?<!\d)\d+(?!\d)")


@register("needle")
def needle(sample: GradeInput, settings: dict) -> Grade:
    """RULER's string-match-all: every expected value appears in the answer. Two guards RULER
    lacks, for the parity question (a sparse model that cannot bind a key to its value may name
    every value it saw): a value that begins or ends with a digit counts only as a whole number
    ("91234567" does not hold 1234567), and an answer that also names another number of the same
    length that the doc's text holds (another key's value) scores 0 (`hedged`)."""
    answer = sample.text.lower()
    values = [v for v in re.split(r"\s*\|\s*", sample.target) if v]
    found = [v for v in values if _holds(answer, v.lower())]
    shown = "\n".join(v for v in sample.doc.values() if isinstance(v, str))  # prompt, context, ...
    hedged = _hedged(sample.text, values, shown)
    score = 0.0 if hedged or not values else len(found) / len(values)
    return Grade(score, score == 1.0, {"expected": values, "found": found, "hedged": hedged})


def _holds(answer: str, value: str) -> bool:
    head = "(?<!\\d)" if value[0].isdigit() else ""
    tail = "(?!\\d)" if value[-1].isdigit() else ""
    return re.search(f"{head}{re.escape(value)}{tail}", answer) is not None


def _hedged(answer: str, values: list[str], prompt: str) -> list[str]:
    """Numbers the answer names besides the expected ones that the prompt showed, with the
    expected ones' digit count: candidates listed, not one retrieved."""
    if not values or not all(v.isdigit() for v in values):
        return []
    widths = {len(v) for v in values}
    named = set(_WHOLE_NUMBER.findall(unicodedata.normalize("NFKC", answer))) - set(values)
    candidates = [n for n in named if len(n) in widths]
    in_prompt = set(_WHOLE_NUMBER.findall(prompt)) if candidates else set()
    return sorted(n for n in candidates if n in in_prompt)


@register("contains")
def contains(sample: GradeInput, settings: dict) -> Grade:
    """Any of the accepted answers ("a | b") appears in the answer as a whole word or number,
    ignoring case: "The capital of France is Paris." earns "Paris"; "15" does not earn "5"."""
    answer = unicodedata.normalize("NFKC", sample.text).lower()
    accepted = [v.strip() for v in sample.target.split("|") if v.strip()]
    hit = next((v for v in accepted
                if re.search(rf"(?<![\w.]){re.escape(v.lower())}(?![\w]|\.\d)", answer)), None)
    return Grade(float(hit is not None), hit is not None, {"accepted": accepted, "matched": hit})
