"""Answer graders: exact / normalised match with strict and flexible extraction, needle match."""

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
    target = normalize(sample.target)
    strict = normalize(sample.text) == target
    extracted = flexible_answer(sample.text, sample.target)
    flexible = strict or extracted == target
    primary = settings.get("primary", "flexible")
    ok = flexible if primary == "flexible" else strict
    return Grade(float(ok), ok, {"strict": strict, "flexible": flexible, "extracted": extracted,
                                 "primary": primary})


@register("needle")
def needle(sample: GradeInput, settings: dict) -> Grade:
    """RULER's string-match-all: every expected value appears in the answer."""
    values = [v for v in re.split(r"\s*\|\s*", sample.target) if v]
    found = [v for v in values if v.lower() in sample.text.lower()]
    score = len(found) / len(values) if values else 0.0
    return Grade(score, score == 1.0, {"expected": values, "found": found})
