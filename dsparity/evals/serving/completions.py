"""The legacy `/v1/completions` API of `dsparity serve`: what vLLM, SGLang and lm-eval's
`local-completions` use for log-likelihoods.

A prompt is text or token ids (one, or a batch). With `echo` the answer carries the prompt's own
tokens with their log-probabilities (the first token has none: nothing precedes it) and, with
`logprobs: N`, the N most likely tokens at each position; then `max_tokens` new tokens follow
(greedy or sampled), with theirs. `return_tokens_as_token_ids` (vLLM's extension) names tokens
as ``token_id:123`` so a client can map them back to ids exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_LOGPROBS = 20  # OpenAI's legacy API allows at most 20 alternatives per position


@dataclass
class CompletionChoice:
    text: str
    finish_reason: str
    tokens: list[int]  # prompt tokens (when echoed) then generated ones
    logprobs: list[float | None]
    top: list[list[tuple[int, float]] | None]
    prompt_tokens: int
    completion_tokens: int


def run_completion(model, tokenizer, ids: list[int], *, echo: bool, logprobs: int | None,
                   max_tokens: int, temperature: float, top_p: float, seed: int | None,
                   stop: list[str], cancel=None) -> CompletionChoice:
    """Score the prompt (when echoed) and generate up to `max_tokens` tokens after it."""
    from dsparity.evals.backends.local_scoring import score_window

    top_n = logprobs or 0
    tokens: list[int] = []
    lps: list[float | None] = []
    top: list[list[tuple[int, float]] | None] = []
    if echo:
        tokens, lps, top = [ids[0]], [None], [None]
        if len(ids) > 1:
            s = score_window(model, ids[:1], ids[1:], top_n, len(ids))
            tokens += ids[1:]
            lps += s.logprobs.tolist()
            top += _top_pairs(s.top_ids, s.top_logprobs, len(ids) - 1)
    new, new_lps, new_top, finish = _generate(model, tokenizer, ids, max_tokens, temperature, top_p,
                                              seed, stop, top_n, cancel)
    text = (tokenizer.decode(ids) if echo else "") + tokenizer.decode(new)
    return CompletionChoice(text=text, finish_reason=finish, tokens=tokens + new,
                            logprobs=lps + new_lps, top=top + new_top, prompt_tokens=len(ids),
                            completion_tokens=len(new))


def _generate(model, tokenizer, ids: list[int], max_tokens: int, temperature: float, top_p: float,
              seed: int | None, stop: list[str], top_n: int, cancel=None):
    """New tokens after `ids` with their log-probs under the model (before temperature)."""
    import torch

    if max_tokens <= 0:
        return [], [], [], "length"
    sampling = temperature > 0
    if sampling and seed is not None:
        torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_tokens, do_sample=sampling,
                                  return_dict_in_generate=True, output_logits=True,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if sampling:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop:
        kwargs.update(stop_strings=stop, tokenizer=tokenizer)
    if cancel is not None:
        from dsparity.evals.backends.local import cancel_criteria

        kwargs.update(stopping_criteria=[cancel_criteria([cancel])])
    inputs = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), **kwargs)
    new = out.sequences[0, len(ids):].tolist()
    eos = set(_as_list(model.generation_config.eos_token_id) + _as_list(tokenizer.eos_token_id))
    finish = "length"
    if (end := next((i for i, t in enumerate(new) if t in eos), None)) is not None:
        new, finish = new[:end + 1], "stop"
    text = tokenizer.decode(new, skip_special_tokens=True)
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    if cut >= 0:  # keep the tokens up to the one that completes the stop string
        while new and len(tokenizer.decode(new[:-1], skip_special_tokens=True)) >= cut:
            new.pop()
        finish = "stop"
    lps, top = [], []
    for step, token in enumerate(new):
        lp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
        lps.append(float(lp[token]))
        if top_n:
            values, idx = lp.topk(top_n)
            top.append(list(zip(idx.tolist(), values.tolist(), strict=True)))
        else:
            top.append(None)
    return new, lps, top, finish


def _top_pairs(ids: np.ndarray | None, lps: np.ndarray | None, n: int) -> list:
    if ids is None:
        return [None] * n
    return [[(int(i), float(v)) for i, v in zip(row_i, row_v, strict=True) if i >= 0 and math.isfinite(v)]
            for row_i, row_v in zip(ids, lps, strict=True)]


def logprobs_payload(tokenizer, choice: CompletionChoice, as_ids: bool) -> dict[str, Any]:
    """OpenAI's legacy `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset."""
    name = (lambda t: f"token_id:{t}") if as_ids else (lambda t: tokenizer.decode([t]))
    tokens = [name(t) for t in choice.tokens]
    echoed = choice.tokens[:len(choice.tokens) - choice.completion_tokens]  # as `text` is built
    offsets = text_offsets(tokenizer, echoed)
    offsets += text_offsets(tokenizer, choice.tokens[len(echoed):], len(tokenizer.decode(echoed)))
    top = [None if pairs is None else {name(t): v for t, v in pairs} for pairs in choice.top]
    return {"tokens": tokens, "token_logprobs": choice.logprobs, "top_logprobs": top,
            "text_offset": offsets}


def text_offsets(tokenizer, ids: list[int], at: int = 0) -> list[int]:
    """Where each token starts in `tokenizer.decode(ids)` (shifted by `at`), in characters.

    Not the sum of each token's own decoded length: a byte-level tokenizer splits a character of
    several UTF-8 bytes ('´', 'é', '—') over tokens that each decode alone to U+FFFD, and that sum
    runs one character ahead after every such split (a client cutting the prompt at a character
    offset then scores the wrong tokens). Decoded piece by piece instead, with the piece before
    as context (as vLLM's incremental detokenizer does): a token that leaves a character
    unfinished adds nothing until the token that completes it.
    """
    offsets = []
    prefix = read = 0  # ids[prefix:read]: the last piece that decoded to whole characters
    for i in range(len(ids)):
        offsets.append(at)
        text = tokenizer.decode(ids[prefix:i + 1])
        if text.endswith("\ufffd"):  # a character not finished yet
            continue
        at += len(text) - len(tokenizer.decode(ids[prefix:read]))
        prefix, read = read, i + 1
    return offsets


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
