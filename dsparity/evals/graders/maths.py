"""Math answers by symbolic equivalence with HF Math-Verify (gold first: the check is asymmetric).

Math-Verify bounds its own time with `signal.alarm`, which works only in the main thread (where
`grade_run` calls graders). Elsewhere the timeouts are switched off and the details say so.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from dsparity.evals.graders.base import Grade, GradeInput, register

_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed")
_FINAL = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:：]?\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_BOXED = "\\boxed"


def _mv():
    try:
        import math_verify
    except ImportError as exc:  # a declared dependency; say how to get it rather than fail obscurely
        raise RuntimeError("the math grader needs `math-verify` (pip install math-verify)") from exc
    return math_verify


def _timeouts() -> dict[str, Any]:
    if threading.current_thread() is threading.main_thread():
        return {}
    return {"parsing_timeout": None}


def parse_gold(gold: str) -> list:
    """Gold answers are usually bare LaTeX ("\\frac{1}{2}"): wrap them in `$…$` when undelimited."""
    mv = _mv()
    gold = gold.strip()
    wrapped = gold if _DELIMITED.search(gold) else f"${gold}$"
    parsed = mv.parse(wrapped, **_timeouts())
    return parsed or mv.parse(gold, **_timeouts())


def _last_boxed(text: str) -> str | None:
    """The last \\boxed{...} with balanced braces, as `$\\boxed{...}$`."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return f"${text[start : j + 1]}$"
    return None


def strict_span(text: str) -> str | None:
    """What the strict pipeline reads: the last \\boxed{} or else the last 'answer: …' line."""
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    finals = _FINAL.findall(text)
    return finals[-1] if finals else None


def verify_answer(gold: str, answer: str) -> dict[str, Any]:
    """Both pipelines: strict (last boxed / answer line) and flexible (Math-Verify over the
    whole answer). `answer` is the final answer (`GradeInput.text`: reasoning already cut away)."""
    mv = _mv()
    text = answer
    gold_parsed = parse_gold(gold)
    opts = _timeouts()
    verify_opts = {} if not opts else {"timeout_seconds": None}
    flexible_parsed = mv.parse(text, **opts) if text else []
    flexible = bool(
        gold_parsed and flexible_parsed and mv.verify(gold_parsed, flexible_parsed, **verify_opts)
    )
    span = strict_span(text)
    strict_parsed = mv.parse(span, **opts) if span else []
    strict = bool(gold_parsed and strict_parsed and mv.verify(gold_parsed, strict_parsed, **verify_opts))
    return {
        "strict": strict,
        "flexible": flexible,
        "gold_parsed": [str(x) for x in gold_parsed],
        "extracted_flexible": [str(x) for x in flexible_parsed],
        "extracted_strict": [str(x) for x in strict_parsed],
        "gold_unparsable": len(gold_parsed) < 2,
        "timeouts": "on" if not opts else "off (not the main thread)",
    }


@register("math")
def math_grader(sample: GradeInput, settings: dict) -> Grade:
    """Symbolic equivalence with Math-Verify, gold first.

    gold: `settings["gold_field"]` names a doc field (e.g. "answer"); default the sample's
    target, or `doc["answer"]` when the target is empty.
    settings: `primary` = "flexible" (default: Math-Verify over the whole answer) or "strict"
    (only the last \\boxed{} / "Answer:" line). Both verdicts are always recorded.
    An unparsable gold is recorded (`gold_unparsable`) and scores None: the task is broken, not the model.
    """
    field = settings.get("gold_field")
    gold = str(sample.doc.get(field, "")) if field else (sample.target or str(sample.doc.get("answer", "")))
    details = verify_answer(gold, sample.text)
    primary = settings.get("primary", "flexible")
    ok = details[primary]
    details |= {"primary": primary, "gold": gold, "truncated": sample.finish_reason == "length"}
    if details["gold_unparsable"]:
        return Grade(0.0, None, details)
    return Grade(float(ok), ok, details)
