"""Fit a chat request to the model's context before it is sent.

A task may ask for more new tokens than the model can hold (the article tasks ask up to 65,536 of
any model; SmolLM2's context is 8,192): the request is capped at context - prompt tokens, and the
cut is recorded with the sample (its stored request gains `context_cut`) and counted in the
report. A prompt that alone fills the context is not sent at all: the sample is an error of class
`context_overflow`, which the report counts like any infrastructure error (never a wrong answer).

The prompt is counted only where it may not fit: a tokenizer never makes more tokens than the
prompt has UTF-8 bytes, plus a few per message for the chat template, so a request within that
bound is sent as it is without counting anything. Where the backend cannot count (an endpoint
without a /tokenize route), only what holds whatever the prompt is applied: no more new tokens
than the whole context.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dsparity.evals.backends.base import Completion, Request, Usage

TEMPLATE_TOKENS_PER_MESSAGE = 16  # role markers and separators of any chat template, at most
TEMPLATE_TOKENS = 32  # the generation prompt and a BOS
MIN_NEW_TOKENS = 1


@dataclass(frozen=True)
class Fit:
    request: Request  # what to send
    cut: dict[str, Any] | None = None  # how max_tokens was cut, when it was
    overflow: Completion | None = None  # set: do not send; store this error instead


def prompt_bound(request: Request) -> int:
    """More tokens than any tokenizer makes of this prompt with its chat template."""
    return sum(len(content.encode()) + TEMPLATE_TOKENS_PER_MESSAGE for _, content in request.messages) \
        + TEMPLATE_TOKENS


async def fit(backend, request: Request) -> Fit:
    context = backend.context_length() if hasattr(backend, "context_length") else None
    if not context or prompt_bound(request) + request.max_tokens <= context:
        return Fit(request)
    count = getattr(backend, "count_tokens", None)
    prompt = await count(request) if count is not None else None
    if prompt is None:  # not counted: only the bound that holds for any prompt
        if request.max_tokens < context:
            return Fit(request)
        return _capped(request, context - MIN_NEW_TOKENS, context, None)
    if prompt + MIN_NEW_TOKENS > context:
        return Fit(request, overflow=Completion(
            error=f"the prompt has {prompt} tokens; the model's context is {context}: not sent",
            error_class="context_overflow", usage=Usage(prompt_tokens=prompt)))
    if prompt + request.max_tokens <= context:
        return Fit(request)
    return _capped(request, context - prompt, context, prompt)


def _capped(request: Request, new_tokens: int, context: int, prompt: int | None) -> Fit:
    cut = {"asked": request.max_tokens, "sent": new_tokens, "context": context, "prompt_tokens": prompt}
    return Fit(replace(request, max_tokens=new_tokens), cut=cut)

