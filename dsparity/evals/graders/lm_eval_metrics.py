"""The `lm_eval` grader: a generation task graded as lm-eval grades it, by its own filters and
metrics, for task files that name no dsparity grader (a stock lm-eval task, or any YAML written
for lm-eval).

What the task declares was read by lm-eval when the items were built and stored with each item
(`doc["_lm_eval"]`: the `filter_list` pipelines, the `metric_list` metrics with their keyword
arguments, the gold answer(s)), so re-grading needs neither the task file nor its code. The steps
are lm-eval 0.4.13's: each filter pipeline (`lm_eval.filters.build_filter_ensemble`, default the
`none` pipeline of `take_first`) turns the answer into the filtered response, and each metric is
computed on it as `ConfigurableTask.process_results` computes generate_until metrics (references
first, one gold or any of several golds). Each result is keyed `metric,filter` as lm-eval reports
it; the score is the task's `primary` (default: the first metric under the first filter).
"""

from __future__ import annotations

from typing import Any

from dsparity.evals.graders.base import Grade, GradeInput, register

DEFAULT_FILTERS = [{"name": "none", "filter": [{"function": "take_first"}]}]


def _filtered(pipeline: dict[str, Any], text: str, doc: dict[str, Any]) -> Any:
    from lm_eval.filters import build_filter_ensemble

    steps = [(f["function"], {k: v for k, v in f.items() if k != "function"} or None)
             for f in pipeline["filter"]]
    ensemble = build_filter_ensemble(pipeline["name"], steps)
    resps: Any = [[text]]
    for make in ensemble.filters:
        resps = list(make().apply(resps, [doc]))
    return resps[0]


def _metric(name: str, kwargs: dict[str, Any], gold: Any, result: Any, multiple: bool) -> float:
    from lm_eval.api.registry import get_metric

    fn = get_metric(name)
    if multiple:
        golds = gold if isinstance(gold, list) else [gold]
        if name == "exact_match":
            value = fn(references=golds, predictions=[result] * len(golds), **kwargs)[name]
            return 1.0 if value > 0.0 else 0.0
        scores = [_call(fn, name, kwargs, g, result) for g in golds]
        return 1.0 if any(scores) else 0.0
    return float(_call(fn, name, kwargs, gold, result))


def _call(fn, name: str, kwargs: dict[str, Any], gold: Any, result: Any) -> float:
    try:
        value = fn(references=[gold], predictions=[result], **kwargs)
    except TypeError:  # lm-eval's own fallback for metrics with the (gold, result) interface
        value = fn([gold, result])
    return float(value[name] if isinstance(value, dict) else value)


@register("lm_eval")
def grade_lm_eval(sample: GradeInput, settings: dict) -> Grade:
    info = sample.doc.get("_lm_eval") or {}
    metrics = info.get("metrics") or []
    if not metrics:
        return Grade(0.0, False, {"error": "no lm-eval metrics stored with this item"})
    doc = {k: v for k, v in sample.doc.items() if k != "_lm_eval"}
    text = sample.text
    gold, multiple = info.get("gold"), bool(info.get("multiple_target"))
    values: dict[str, float] = {}
    filtered: dict[str, Any] = {}
    for pipeline in info.get("filters") or DEFAULT_FILTERS:
        result = _filtered(pipeline, text, doc)
        if not isinstance(result, str) and not multiple:
            result = str(result)
        filtered[pipeline["name"]] = result
        for m in metrics:
            kwargs = {k: v for k, v in m.items() if k != "metric"}
            values[f"{m['metric']},{pipeline['name']}"] = _metric(m["metric"], kwargs, gold, result, multiple)
    primary = str(settings.get("primary") or next(iter(values)))
    if primary not in values:
        return Grade(0.0, False, {"error": f"primary metric {primary!r} is not one of {sorted(values)}",
                                  "metrics": values})
    score = values[primary]
    return Grade(score, score == 1.0, {"metrics": values, "primary": primary, "filtered": filtered,
                                       "gold": gold, "truncated": sample.finish_reason == "length"})
