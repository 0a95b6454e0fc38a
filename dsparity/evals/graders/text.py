"""Text helpers shared by graders: the final answer without the reasoning channel."""

from __future__ import annotations

import re

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """The answer after the reasoning: everything after the last `</think>`; `<think>…</think>`
    blocks removed; an unclosed `<think>` (reasoning cut off) leaves nothing."""
    if not text:
        return ""
    lowered = text.lower()
    if "</think>" in lowered:
        return _trim(text[lowered.rfind("</think>") + len("</think>") :])
    text = _THINK_BLOCK.sub("", text)
    if text.lstrip().lower().startswith("<think>"):
        return ""
    return _trim(text)


def _trim(text: str) -> str:
    """Blank lines around the text go; the first line's indentation stays (a code body)."""
    return re.sub(r"\A(?:[ \t]*\r?\n)+", "", text).rstrip()
