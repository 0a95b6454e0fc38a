"""What dsparity does with lm-eval's scoring fields: honour them, or refuse in one line.

- A generation task that names no dsparity grader is graded by the `lm_eval` grader: its
  `filter_list` pipelines and `metric_list` metrics, as lm-eval applies them. Refused: a custom
  `process_results` (Python code dsparity cannot re-run on stored answers), filters or metrics
  that come from the task's code (`!function`, the `custom` filter), HF-Evaluate metrics (they
  download code), and metrics not averaged per item (corpus-level BLEU and the like).
- A generation task with a dsparity grader (`metadata.dsparity.grader`) is graded by that grader
  on the whole answer; its `metric_list` is what `lm-eval run` reports for the same file. A
  `filter_list` there would be skipped without a word, so it is refused.
- Log-likelihood tasks: the `loglikelihood` grader computes lm-eval's per-item metrics itself;
  any other metric, and any `filter_list`, is refused. The first metric listed is the task's
  primary one unless `metadata.dsparity.primary` says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsparity.errors import DsparityError
from dsparity.evals.tasks.files import is_function

SCORE_METRICS = {
    "multiple_choice": {"acc", "acc_norm", "acc_bytes", "exact_match", "acc_mutual_info"},
    "loglikelihood": {"acc", "perplexity"},
    # per-token scores are stored; lm-eval's corpus-level perplexities are computed from them
    "loglikelihood_rolling": {"word_perplexity", "byte_perplexity", "bits_per_byte"},
}
_NOT_KWARGS = ("metric", "aggregation", "higher_is_better", "hf_evaluate")


def _is_code(value: Any) -> bool:
    """A `!function` reference (code from the task), not a registered name or a plain value."""
    return is_function(value)


def check(path: Path, config: dict[str, Any], output_type: str, grader: str,
          settings: dict[str, Any]) -> dict[str, Any]:
    """Refuse what dsparity cannot honour; return the settings with lm-eval's defaults filled in."""
    where = str(path)
    filters, metrics = config.get("filter_list"), config.get("metric_list")
    if metrics is not None and not isinstance(metrics, list):
        raise DsparityError(where, "metric_list", "must be a list", "write metric_list: [{metric: ...}]")
    for i, m in enumerate(metrics or []):
        if not isinstance(m, dict) or not isinstance(m.get("metric"), str):
            raise DsparityError(where, f"metric_list[{i}].metric", "missing or not a name",
                                "write - metric: exact_match")
    if output_type != "generate_until":
        if filters:
            raise DsparityError(where, "filter_list", f"filters on a {output_type} task are not "
                                "supported by dsparity", "remove filter_list")
        allowed = SCORE_METRICS[output_type]
        for i, m in enumerate(metrics or []):
            if m["metric"] not in allowed:
                raise DsparityError(where, f"metric_list[{i}].metric", f"{m['metric']!r} is not one "
                                    f"dsparity computes for {output_type}",
                                    f"use {', '.join(sorted(allowed))}")
        if metrics and "primary" not in settings and output_type != "loglikelihood_rolling":
            return {**settings, "primary": metrics[0]["metric"]}
        return settings
    if grader != "lm_eval":
        if filters:
            raise DsparityError(where, "filter_list", f"dsparity grades this task with its {grader!r} "
                                "grader, which reads the whole answer, so these filters would be skipped",
                                "remove filter_list, or remove metadata.dsparity.grader to grade with "
                                "lm-eval's own filters and metrics")
        return settings
    if config.get("process_results") is not None:
        raise DsparityError(where, "process_results", "lm-eval grades this task with the task's own "
                            "Python function, which dsparity cannot re-run on stored answers",
                            "set metadata.dsparity.grader (exact, math, choice, ...) or use a hub_* "
                            "task (dsparity tasks list)")
    _check_filters(where, filters)
    for i, m in enumerate(metrics or []):
        if _is_code(m["metric"]) or m.get("hf_evaluate"):
            raise DsparityError(where, f"metric_list[{i}].metric", f"{m['metric']!r} comes from "
                                "code dsparity does not run (a !function or HF Evaluate)",
                                "use a metric lm-eval registers, such as exact_match")
        agg = m.get("aggregation", "mean")
        if agg != "mean":
            raise DsparityError(where, f"metric_list[{i}].aggregation", f"{agg!r}: dsparity averages "
                                "each item's score", "use aggregation: mean (per-item metrics)")
    return settings


def _check_filters(where: str, filters: Any) -> None:
    if filters is None:
        return
    if not isinstance(filters, list):
        raise DsparityError(where, "filter_list", "must be a list of {name, filter} pipelines",
                            "see lm-eval's gsm8k.yaml for the shape")
    for i, pipe in enumerate(filters):
        steps = pipe.get("filter") if isinstance(pipe, dict) else None
        if not isinstance(pipe, dict) or not isinstance(pipe.get("name"), str) or not isinstance(steps, list):
            raise DsparityError(where, f"filter_list[{i}]", "needs a name and a filter list",
                                "write - name: strict-match / filter: [{function: regex, ...}]")
        for j, step in enumerate(steps):
            fn = step.get("function") if isinstance(step, dict) else None
            if not isinstance(fn, str) or _is_code(fn) or fn == "custom" or any(
                    _is_code(v) for v in step.values()):
                raise DsparityError(where, f"filter_list[{i}].filter[{j}].function", f"{fn!r} is not a "
                                    "filter lm-eval registers (code from the task is not re-run)",
                                    "use lm-eval's filters: regex, take_first, lowercase, ...")


def registered(path: Path, config: dict[str, Any]) -> None:
    """Every metric and filter a `lm_eval`-graded task names is one lm-eval registers (checked
    before lm-eval loads the task: an unknown metric name makes it fetch HF Evaluate code)."""
    import lm_eval.api.metrics  # noqa: F401  (fills the registries)
    import lm_eval.filters  # noqa: F401
    from lm_eval.api.registry import filter_registry, metric_registry

    for i, m in enumerate(config.get("metric_list") or []):
        if m["metric"] not in metric_registry:
            raise DsparityError(str(path), f"metric_list[{i}].metric", f"{m['metric']!r} is not an "
                                "lm-eval metric", f"use one of: {', '.join(sorted(metric_registry))}")
    for i, pipe in enumerate(config.get("filter_list") or []):
        for j, step in enumerate(pipe["filter"]):
            if step["function"] not in filter_registry:
                raise DsparityError(str(path), f"filter_list[{i}].filter[{j}].function",
                                    f"{step['function']!r} is not an lm-eval filter",
                                    f"use one of: {', '.join(sorted(filter_registry))}")


def generation_info(task, doc: dict, config: dict[str, Any]) -> dict[str, Any]:
    """What the `lm_eval` grader needs for one item, decided by lm-eval's task object: the gold
    answer(s) as `process_results` computes them, the filters and the metrics with their kwargs."""
    gold = task.doc_to_target(doc)
    if task.config.doc_to_choice is not None and isinstance(gold, int):
        gold = task.doc_to_choice(doc)[gold]
    multiple = isinstance(gold, list)
    metrics = [{"metric": name, **{k: v for k, v in (task._metric_fn_kwargs.get(name) or {}).items()
                                   if k not in _NOT_KWARGS}}
               for name in task._metric_fn_list]
    return {"output_type": "generate_until", "filters": config.get("filter_list"), "metrics": metrics,
            "gold": [str(g) for g in gold] if multiple else str(gold), "multiple_target": multiple}
