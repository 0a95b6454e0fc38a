"""Per-token log-probabilities of one scored span, and their compact stored form.

A `SpanScores` is what a backend returns for one `Span`: for each continuation token, its
log-probability given everything before it, whether it was the model's most likely token, and
optionally the N most likely tokens with their log-probabilities. Local models give token ids;
an API that answers with token strings gives strings (`top_ids` then holds strings).

Stored as one base64 string of a compressed npz (no pickle), so an 8K-token document with its
top-10 alternatives takes a few hundred kilobytes rather than megabytes of JSON.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class SpanScores:
    logprobs: np.ndarray  # [n] float64: log p(token_i | everything before it)
    greedy: np.ndarray  # [n] bool: token_i was the argmax
    tokens: np.ndarray | None = None  # [n] int32 ids, or str tokens (text-mode APIs)
    top_ids: np.ndarray | None = None  # [n, N] int32 (-1 padding) or str ("" padding)
    top_logprobs: np.ndarray | None = None  # [n, N] float32 (-inf padding)
    # Tokens before continuation token 0 in the model's input: token i is predicted by a query
    # that sees first_position + i keys (so a DSA model with top-k >= that equals dense there).
    first_position: int = 0

    @property
    def n(self) -> int:
        return int(self.logprobs.shape[0])

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())

    @property
    def is_greedy(self) -> bool:
        return bool(self.greedy.all())

    def positions(self) -> np.ndarray:
        """[n] how many tokens precede each scored token in the model's input (the keys its
        predicting query sees)."""
        return self.first_position + np.arange(self.n)

    def pack(self) -> dict:
        arrays = {"logprobs": self.logprobs.astype(np.float64), "greedy": self.greedy.astype(bool),
                  "first_position": np.array(self.first_position, dtype=np.int64)}
        for name in ("tokens", "top_ids", "top_logprobs"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return {"npz": base64.b64encode(buf.getvalue()).decode("ascii"), "n": self.n,
                "total": self.total, "greedy": self.is_greedy}

    @staticmethod
    def unpack(packed: dict) -> SpanScores:
        with np.load(io.BytesIO(base64.b64decode(packed["npz"])), allow_pickle=False) as z:
            get = lambda name: z[name] if name in z.files else None  # noqa: E731
            return SpanScores(logprobs=z["logprobs"], greedy=z["greedy"], tokens=get("tokens"),
                              top_ids=get("top_ids"), top_logprobs=get("top_logprobs"),
                              first_position=int(z["first_position"]))


def partition_kl(p_ids: np.ndarray, p_lps: np.ndarray, q_ids: np.ndarray,
                 q_lps: np.ndarray) -> np.ndarray:
    """KL(p || q) per position over the partition {tokens in both top-N lists} + {all others}.

    Both probabilities are known exactly on every cell of that partition (the listed tokens from
    the lists, "all others" as one minus their sum), and merging tokens into one cell can only
    lower KL (data processing inequality): a lower bound of the full KL that tightens as N grows
    and is exactly 0 for identical distributions.
    ids [n, N] (ids or strings), lps [n, N] (-inf padding) -> [n] nats.
    """
    out = np.zeros(p_ids.shape[0])
    for i in range(p_ids.shape[0]):
        p = {t: v for t, v in zip(p_ids[i].tolist(), p_lps[i].tolist(), strict=True) if math.isfinite(v)}
        q = {t: v for t, v in zip(q_ids[i].tolist(), q_lps[i].tolist(), strict=True) if math.isfinite(v)}
        kl, p_rest, q_rest = 0.0, 1.0, 1.0
        for t in p.keys() & q.keys():
            pt = math.exp(p[t])
            kl += pt * (p[t] - q[t])
            p_rest -= pt
            q_rest -= math.exp(q[t])
        if p_rest > 1e-12:
            kl += p_rest * math.log(p_rest / max(q_rest, 1e-30))
        out[i] = max(kl, 0.0)
    return out


def top1(ids: np.ndarray, lps: np.ndarray) -> np.ndarray:
    """[n] the most likely token per position from top-N lists."""
    return ids[np.arange(ids.shape[0]), np.argmax(lps, axis=1)]


def describe(request, scores: list[dict]) -> str:
    """A readable "answer" for a scored sample (what reports and the dashboard show as its
    text): each span's continuation with its summed log-probability, greedy ones marked."""
    lines = []
    for span, packed in zip(request.spans, scores, strict=False):
        what = (f"{len(span.continuation)} tokens" if span.tokenized else repr(span.continuation[:60]))
        mark = " (greedy)" if packed.get("greedy") else ""
        lines.append(f"{what}: {packed['total']:.3f} over {packed['n']} tokens{mark}")
    return "\n".join(lines)


def prompt_of(request: dict) -> str:
    """The prompt of a stored request dict, chat or scored (first span's context)."""
    if request.get("messages"):
        return request["messages"][-1]["content"]
    spans = request.get("spans") or [{}]
    if "context_tokens" in spans[0]:
        return f"<{len(spans[0]['context_tokens']) + len(spans[0]['continuation_tokens'])} tokens>"
    return spans[0].get("context") or spans[0].get("continuation", "")[:2000]
