"""Log-likelihoods from a transformers model in this process, tokenized as lm-eval's `hf` model
tokenizes, on whatever attention path the model runs (dense, DSA, or a sparsity control).

- A context/continuation pair of text: trailing spaces of the context move to the continuation,
  the whole string is encoded and split after the context's tokens; an empty context becomes
  the prefix token (BOS, else EOS) (lm-eval `TemplateLM._encode_pair`, `HFLM.tok_encode`).
- A rolling text (perplexity): lm-eval's disjoint rolling windows of the model's maximum length,
  so every token is scored once with as much context as the model can see.
- Spans of token ids are scored as given: the task tokenized them.

One forward pass per window; the LM head runs over chunks of positions so an 8K-token window
never materialises its [L, vocab] logits at once.
"""

from __future__ import annotations

import numpy as np

from dsparity.evals.backends.base import ScoreRequest, Span
from dsparity.evals.logprobs import SpanScores

HEAD_CHUNK = 512  # positions per LM-head chunk: [512, 49152] float32 is 100 MB


def prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer, text: str) -> list[int]:
    """`HFLM.tok_encode` with its defaults: the tokenizer's own special tokens, none when the text
    already starts with the prefix token."""
    prefix = tokenizer.decode(prefix_token_id(tokenizer))
    if prefix and text.startswith(prefix):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    if not context:
        return [prefix_token_id(tokenizer)], tok_encode(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    context_enc = tok_encode(tokenizer, context)
    return context_enc, whole[len(context_enc):]


def max_length(model, tokenizer) -> int:
    """The longest input the model takes (lm-eval HFLM.max_length's order of lookups)."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else 2048


def windows(tokenizer, span: Span, rolling: bool, limit: int) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) pairs the model scores for one span, each within `limit`."""
    if span.tokenized:
        context, continuation = list(span.context), list(span.continuation)
        if not context:
            context = [prefix_token_id(tokenizer)]
        return [(context, continuation)]
    if rolling:
        from lm_eval import utils

        tokens = tok_encode(tokenizer, span.continuation)
        return [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
            token_list=tokens, prefix_token=prefix_token_id(tokenizer), max_seq_len=limit,
            context_len=1)]
    return [encode_pair(tokenizer, span.context, span.continuation)]


def score_request(model, tokenizer, request: ScoreRequest) -> list[SpanScores]:
    limit = max_length(model, tokenizer)
    out = []
    for span in request.spans:
        parts = [score_window(model, ctx, cont, request.top_n, limit)
                 for ctx, cont in windows(tokenizer, span, request.rolling, limit)]
        out.append(parts[0] if len(parts) == 1 else _concat(parts))
    return out


def score_window(model, context: list[int], continuation: list[int], top_n: int,
                 limit: int) -> SpanScores:
    """Log-probs of `continuation` after `context`, keeping the last `limit` input tokens (as
    lm-eval does: (context + continuation)[-(limit + 1):][:-1])."""
    import torch

    whole = (context + continuation)[-(limit + 1):]
    inputs = torch.tensor([whole[:-1]], device=model.device)
    n = min(len(continuation), len(whole) - 1)
    targets = torch.tensor(continuation[len(continuation) - n:])
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=inputs, use_cache=False).last_hidden_state[0, -n:]
        logprobs, greedy = np.empty(n), np.empty(n, dtype=bool)
        top_ids = np.full((n, top_n), -1, dtype=np.int32) if top_n else None
        top_lps = np.full((n, top_n), -np.inf, dtype=np.float32) if top_n else None
        head = model.get_output_embeddings()
        softcap = getattr(model.config, "final_logit_softcapping", None)
        for start in range(0, n, HEAD_CHUNK):
            stop = min(n, start + HEAD_CHUNK)
            logits = head(hidden[start:stop]).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            lp = torch.log_softmax(logits, dim=-1)
            tgt = targets[start:stop].to(lp.device)
            logprobs[start:stop] = lp.gather(-1, tgt[:, None])[:, 0].double().cpu().numpy()
            greedy[start:stop] = (lp.argmax(-1) == tgt).cpu().numpy()
            if top_n:
                values, ids = lp.topk(min(top_n, lp.shape[-1]), dim=-1)
                top_ids[start:stop, :ids.shape[1]] = ids.cpu().numpy()
                top_lps[start:stop, :ids.shape[1]] = values.cpu().numpy()
    return SpanScores(logprobs=logprobs, greedy=greedy, tokens=targets.numpy().astype(np.int32),
                      top_ids=top_ids, top_logprobs=top_lps, first_position=len(whole) - n)


def _concat(parts: list[SpanScores]) -> SpanScores:
    """Windows of one rolling text, joined; positions restart per window (each sees its own)."""
    cat = lambda name: None if getattr(parts[0], name) is None else np.concatenate(  # noqa: E731
        [getattr(p, name) for p in parts])
    return SpanScores(logprobs=cat("logprobs"), greedy=cat("greedy"), tokens=cat("tokens"),
                      top_ids=cat("top_ids"), top_logprobs=cat("top_logprobs"),
                      first_position=parts[0].first_position)
