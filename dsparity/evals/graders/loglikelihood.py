"""Graders of log-likelihood tasks, from stored per-token scores.

- `loglikelihood`: lm-eval's multiple-choice and single-continuation metrics, computed as lm-eval's
  `ConfigurableTask.process_results` computes them (acc = argmax of summed log-likelihoods,
  acc_norm = argmax per character of the choice, acc_bytes per UTF-8 byte, exact_match = the gold
  continuation is the greedy one, acc_mutual_info = argmax of conditional minus unconditional
  log-likelihood). The choices and the gold index were decided by lm-eval when the items were
  built (`tasks._scoring_info`), so re-grading needs no task code. The score is the task's
  `primary` metric (default: acc).
- `fidelity`: a whole scored text (lm-eval's `loglikelihood_rolling`). Its score is the mean
  log-probability per token (higher is better); the comparison reads the per-token numbers
  themselves (`evals.fidelity`), and the details keep lm-eval's perplexity inputs.
"""

from __future__ import annotations

import numpy as np

from dsparity.evals.graders.base import Grade, GradeInput, register
from dsparity.evals.logprobs import SpanScores


def _spans(sample: GradeInput) -> list[SpanScores]:
    return [SpanScores.unpack(p) for p in sample.scores or []]


@register("loglikelihood")
def grade_loglikelihood(sample: GradeInput, settings: dict) -> Grade:
    info = sample.doc.get("_lm_eval") or {}
    spans = _spans(sample)
    if not spans:
        return Grade(0.0, False, {"error": "no scores stored for this sample"})
    if info.get("output_type") == "loglikelihood":
        metrics = {"acc": float(spans[0].is_greedy), "perplexity": spans[0].total}
        details = {"loglikelihood": spans[0].total, "is_greedy": spans[0].is_greedy}
    else:
        metrics, details = multiple_choice_metrics(info, [s.total for s in spans],
                                                   [s.is_greedy for s in spans])
    primary = str(settings.get("primary", "acc"))
    if primary not in metrics:
        return Grade(0.0, False, {"error": f"primary metric {primary!r} is not one of {sorted(metrics)}"})
    score = float(metrics[primary])
    return Grade(score, score == 1.0, {**details, "metrics": metrics, "primary": primary})


def multiple_choice_metrics(info: dict, lls: list[float], greedy: list[bool]) -> tuple[dict, dict]:
    choices, gold = info["choices"], info["gold"]
    n = len(choices)
    conditional = np.array(lls[:n], dtype=float)
    metrics: dict[str, float] = {}
    if "acc_mutual_info" in info.get("metrics", []) and len(lls) == 2 * n:
        mutual = conditional - np.array(lls[n:], dtype=float)
        metrics["acc_mutual_info"] = float(int(np.argmax(mutual)) in gold)
    chars = np.array([float(len(c)) for c in choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
    pred, pred_norm, pred_byte = (int(np.argmax(conditional)), int(np.argmax(conditional / chars)),
                                  int(np.argmax(conditional / nbytes)))
    metrics.update(acc=float(pred in gold), acc_norm=float(pred_norm in gold),
                   acc_bytes=float(pred_byte in gold),
                   exact_match=float(any(greedy[i] for i in gold)))
    return metrics, {"pred": pred, "pred_norm": pred_norm, "gold": gold,
                     "loglikelihoods": conditional.tolist()}


@register("fidelity")
def grade_fidelity(sample: GradeInput, settings: dict) -> Grade:
    spans = _spans(sample)
    if not spans:
        return Grade(0.0, None, {"error": "no scores stored for this sample"})
    total = sum(s.total for s in spans)
    tokens = sum(s.n for s in spans)
    info = sample.doc.get("_lm_eval") or {}
    return Grade(total / max(tokens, 1), None,
                 {"loglikelihood": total, "tokens": tokens, "words": info.get("words"),
                  "bytes": info.get("bytes"), "nll_per_token": -total / max(tokens, 1)})
