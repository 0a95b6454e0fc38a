"""Multiple choice: the letter the answer commits to, with strict and flexible extraction."""

from __future__ import annotations

import re
import string
import unicodedata

from dsparity.evals.graders.base import Grade, GradeInput, register

# letters in other scripts that models answer with (simple-evals' MMLU list plus Cyrillic/Greek
# look-alikes); full-width Latin letters are folded by NFKC
_LETTER_MAP = {
    "أ": "A",
    "ب": "B",
    "ج": "C",
    "د": "D",
    "ه": "E",  # Arabic
    "অ": "A",
    "ব": "B",
    "ড": "C",
    "ক": "D",  # Bengali
    "А": "A",
    "В": "B",
    "С": "C",
    "Д": "D",
    "Е": "E",  # Cyrillic
    "Α": "A",
    "Β": "B",
    "Γ": "C",
    "Δ": "D",
    "Ε": "E",  # Greek
    "甲": "A",
    "乙": "B",
    "丙": "C",
    "丁": "D",
}
_PREFIXES = [
    r"answer",
    r"final answer",
    r"correct answer",
    r"the answer",
    r"答案",
    r"最终答案",
    r"正确答案",
    r"答",
    r"回答",
    r"解答",
    r"正解",
    r"정답",
    r"답",
    r"respuesta",
    r"réponse",
    r"antwort",
    r"risposta",
    r"resposta",
    r"ответ",
    r"jawaban",
    r"cevap",
    r"उत्तर",
    r"উত্তর",
    r"الإجابة",
    r"الجواب",
    r"jibu",
    r"câu trả lời",
    r"đáp án",
]
_MARKUP = re.compile(r"\*\*|__|\\textbf\{|\\text\{|\\mathrm\{|\\boxed\{|\$|`|\\\(|\\\)|\\\[|\\\]")


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _letters(n: int) -> str:
    return string.ascii_uppercase[:n]


def _cls(letters: str) -> str:
    """A regex class of the valid letters and their other-script forms (mapped back by `_latin`)."""
    return re.escape(letters + "".join(k for k, v in _LETTER_MAP.items() if v in letters))


def _latin(ch: str) -> str:
    return _LETTER_MAP.get(ch, ch).upper()


def extract_strict(text: str, letters: str) -> str | None:
    """The last `Answer: X` (any listed language, markdown and LaTeX wrappers allowed)."""
    t = _MARKUP.sub("", normalize(text))
    prefix = "|".join(_PREFIXES)
    # a lower-case letter counts only when nothing word-like follows ("answer: a lot" is not A)
    pat = re.compile(
        rf"(?i:{prefix})\s*(?i:is)?\s*[:：]\s*[\(\[（]?\s*"
        rf"(?:([{_cls(letters)}])(?![\w'])|([{letters.lower()}])(?=\s*(?:$|[.)\]）,;:*])))",
        re.MULTILINE,
    )
    found = [_latin(m.group(1) or m.group(2)) for m in pat.finditer(t)]
    found = [x for x in found if x in letters]
    return found[-1] if found else None


def extract_flexible(text: str, letters: str, choices: list[str] | None = None) -> str | None:
    """Strict first; else the last boxed letter, 'the answer is (X)', 'option X', a final line
    that is only a letter, or a final line that names exactly one choice's text."""
    strict = extract_strict(text, letters)
    if strict:
        return strict
    t = normalize(text)
    boxed = re.findall(rf"\\boxed\{{\s*(?:\\text(?:bf)?\{{)?\s*\(?([{letters}])\)?\s*\}}", t)
    if boxed:
        return boxed[-1]
    t = _MARKUP.sub("", t)
    patterns = [
        rf"(?i:answer\s+(?:is|would be|should be))\s*[:：]?\s*(?i:option\s+|choice\s+)?"
        rf"[\(\[]?([{letters}])(?![\w'])",
        rf"(?i:option|choice)\s+[\(\[]?([{letters}])[\)\]]?\s+(?i:is|would be)\s+(?i:the\s+)?(?i:correct)",
        rf"(?i:correct\s+(?:option|choice|answer))\s+(?i:is\s+)?[:：]?\s*[\(\[]?([{letters}])(?![\w'])",
        rf"(?:选|选择|答案为|答案是)\s*[\(（]?([{letters}])",
    ]
    for pat in patterns:
        found = re.findall(pat, t)
        if found:
            return found[-1]
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    if lines and (m := re.fullmatch(rf"[\(\[（]?([{_cls(letters)}])[\)\]）]?[.:。]?", lines[-1])):
        return _latin(m.group(1))
    if choices and lines:
        last = lines[-1].lower()
        named = [letters[i] for i, c in enumerate(choices[: len(letters)]) if c and str(c).lower() in last]
        if len(named) == 1:
            return named[0]
    return None


@register("choice")
def choice(sample: GradeInput, settings: dict) -> Grade:
    """Multiple choice; the target is the correct letter (e.g. "C").

    doc fields (optional): `choices` (list of option texts: sets the valid letters and lets a final
    line that names one option's text count in the flexible pipeline).
    settings: `n_choices` (valid letters when the doc has no `choices`; default 10: A-J),
    `primary` = "strict" (last `Answer: X` only) or "flexible" (default). Both are recorded;
    no extraction = wrong, and `extracted` is None so format failures can be counted per model.
    """
    choices = sample.doc.get("choices")
    n = len(choices) if isinstance(choices, list) and choices else int(settings.get("n_choices", 10))
    letters = _letters(n)
    target = normalize(sample.target).strip().strip("().").upper()
    text = sample.text
    strict = extract_strict(text, letters)
    flexible = extract_flexible(text, letters, choices if isinstance(choices, list) else None)
    primary = settings.get("primary", "flexible")
    extracted = flexible if primary == "flexible" else strict
    ok = extracted == target
    return Grade(
        float(ok),
        ok,
        {
            "strict": strict == target,
            "flexible": flexible == target,
            "extracted_strict": strict,
            "extracted_flexible": flexible,
            "extracted": extracted,
            "primary": primary,
            "target": target,
            "truncated": sample.finish_reason == "length",
        },
    )
