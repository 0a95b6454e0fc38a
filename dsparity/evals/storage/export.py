"""A stored run's samples as a file, one row per sample, in lm-eval's per-sample shape.

The fields lm-eval's `--log_samples` files have keep lm-eval's names and meaning: `doc_id`,
`doc`, `target`, `arguments` (`gen_args_N: {arg_0: prompt, arg_1: generation kwargs}`, or a
log-likelihood's context and continuation), `resps`, `filtered_resps`, `filter`, `metrics` (the
metric names), `doc_hash` / `prompt_hash` / `target_hash` (sha256, as lm-eval computes them) and
each metric's value under its own name. dsparity's own follow: `task`, `repeat`, `prompt`,
`reasoning`, `finish_reason`, `grade`, `error`, `error_class`, `tokens`, `latency_s`, `cached`,
`cost`, `context_cut`, `truncated`, the run and its model spec. Every value passes `redact_obj`:
a key a server echoed into an error, a password in a URL, never reach the file.

JSONL streams (rows are read a batch at a time); Parquet (pyarrow) holds one column per field,
nested values as JSON text, since documents and metrics differ from task to task.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dsparity.errors import DsparityError
from dsparity.evals.logprobs import prompt_of
from dsparity.evals.storage.store import Store
from dsparity.redact import redact_obj, secret

FORMATS = ("jsonl", "parquet")
# lm-eval's own fields and dsparity's: a metric of the same name stays inside `grade` only.
RESERVED = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
            "doc_hash", "prompt_hash", "target_hash", "task", "repeat", "prompt", "reasoning",
            "finish_reason", "grade", "error", "error_class", "tokens", "latency_s", "cached", "cost",
            "context_cut", "truncated", "run_id", "model_spec", "model_label", "dsparity_doc_hash",
            "dsparity_prompt_hash"}


def rows(store: Store, run_id: str) -> Iterator[dict[str, Any]]:
    """The run's samples as export rows, redacted, in (task, doc_id, repeat) order."""
    run = store.run(run_id)  # an unknown id: one line naming it, from the store
    _know_the_key(run["model_spec"])
    for sample in store.iter_samples(run["id"]):
        yield redact_obj(export_row(run, sample))


def _know_the_key(model_spec: str) -> None:
    """The API key the run's spec names (when this environment holds it) is a secret here too:
    a server may have echoed it into an answer or an error that an older dsparity stored."""
    from dsparity.evals.specs import parse_spec

    try:
        name = parse_spec(model_spec).opt("api_key_env")
    except DsparityError:
        return
    if name:
        secret(os.environ.get(str(name)))


def export_row(run: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    request = s["request"] or {}
    doc = {k: v for k, v in (s["doc"] or {}).items() if k != "_lm_eval"}  # dsparity's grading notes
    details = s["grade_details"] if isinstance(s["grade_details"], dict) else {}
    if request.get("kind") == "score":
        arguments, resps, filtered = _scored(request, s["scores"] or [])
        filter_key = "none"
    else:
        arguments, resps = _generated(request, s["text"])
        filter_key, filtered = _filtered(details, s["text"])
    metrics = _metrics(details, filter_key, s)
    row: dict[str, Any] = {
        "doc_id": s["doc_id"], "doc": doc, "target": s["target"], "arguments": arguments,
        "resps": resps, "filtered_resps": filtered, "filter": filter_key, "metrics": list(metrics),
        "doc_hash": _sha(json.dumps(doc, indent=2, default=str, ensure_ascii=False)),
        "prompt_hash": _sha(str(arguments["gen_args_0"]["arg_0"])) if arguments else None,
        "target_hash": _sha(str(s["target"])),
    }
    row.update({name: value for name, value in metrics.items() if name not in RESERVED})
    row.update({
        "task": s["task"], "repeat": s["repeat"], "prompt": prompt_of(request),
        "reasoning": s["reasoning"], "finish_reason": s["finish_reason"],
        "grade": None if s["grader"] is None else {"grader": s["grader"], "score": s["score"],
                                                   "passed": _bool(s["passed"]), "details": details},
        "error": s["error"], "error_class": s["error_class"],
        "tokens": {"prompt": s["prompt_tokens"], "completion": s["completion_tokens"],
                   "reasoning": s["reasoning_tokens"], "usage": s["usage"]},
        "latency_s": s["latency_s"], "cached": bool(s["cached"]), "cost": s["cost"],
        "context_cut": request.get("context_cut"), "truncated": bool(s["truncated"]),
        "run_id": run["id"], "model_spec": run["model_spec"], "model_label": run["label"],
        "dsparity_doc_hash": s["doc_hash"], "dsparity_prompt_hash": s["prompt_hash"],
    })
    return row


def _generated(request: dict, text: str) -> tuple[dict, list]:
    """lm-eval's generate_until arguments: the chat as its API chat models send it (JSON of the
    messages) and the generation kwargs."""
    chat = json.dumps(request.get("messages") or [], ensure_ascii=False)
    temperature = float(request.get("temperature") or 0.0)
    kwargs = {"until": list(request.get("stop") or []), "max_gen_toks": request.get("max_tokens"),
              "do_sample": temperature > 0, "temperature": temperature}
    for key in ("top_p", "seed"):
        if request.get(key) is not None:
            kwargs[key] = request[key]
    return {"gen_args_0": {"arg_0": chat, "arg_1": kwargs}}, [[text]]


def _scored(request: dict, scores: list[dict]) -> tuple[dict, list, list]:
    """lm-eval's loglikelihood arguments (context, continuation) per span, and per span the
    (log-likelihood, is_greedy) pair it answers with."""
    arguments = {}
    for i, span in enumerate(request.get("spans") or []):
        tokens = "continuation_tokens" in span
        arguments[f"gen_args_{i}"] = {
            "arg_0": span["context_tokens"] if tokens else span.get("context", ""),
            "arg_1": span["continuation_tokens"] if tokens else span.get("continuation", "")}
    answers = [[float(sc["total"]), bool(sc["greedy"])] for sc in scores]
    return arguments, [[a] for a in answers], answers


def _filtered(details: dict, text: str) -> tuple[str, list]:
    """The filter the grade's primary metric used and its filtered answer (lm-eval graders keep
    them); otherwise lm-eval's default `none` filter, which takes the answer as it is."""
    primary = str(details.get("primary") or "")
    name = primary.partition(",")[2] or "none"
    filtered = details.get("filtered")
    if isinstance(filtered, dict) and name in filtered:
        return name, [filtered[name]]
    return name, [text]


def _metrics(details: dict, filter_key: str, s: dict) -> dict[str, Any]:
    """lm-eval's metric values under the filter shown (`exact_match,none` -> `exact_match`); a
    dsparity grader's score under the grader's name."""
    found = details.get("metrics")
    if isinstance(found, dict) and found:
        named = {}
        for key, value in found.items():
            metric, _, filt = str(key).partition(",")
            if filt in ("", filter_key):
                named[metric] = value
        if named:
            return named
    return {s["grader"]: s["score"]} if s["grader"] is not None else {}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _bool(value) -> bool | None:
    return None if value is None else bool(value)


def write(store: Store, run_id: str, fmt: str, out: Path | None,
          stdout: IO[str] | None = None) -> tuple[int, str]:
    """Write the run's rows; (rows written, where). `out` None with jsonl writes to `stdout`."""
    if fmt not in FORMATS:
        raise DsparityError("--format", fmt, "unknown format", f"use one of: {', '.join(FORMATS)}")
    if fmt == "parquet":
        return _parquet(rows(store, run_id), out), str(out)
    if out is None:
        return _jsonl(rows(store, run_id), stdout), "standard output"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # a failed export leaves no half file behind
    try:
        with partial.open("w", encoding="utf-8") as f:
            n = _jsonl(rows(store, run_id), f)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return n, str(out)


def _jsonl(items: Iterator[dict], f: IO[str]) -> int:
    n = 0
    for row in items:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        n += 1
    return n


def _parquet(items: Iterator[dict], out: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DsparityError("--format", "parquet", "needs the pyarrow package",
                            "pip install pyarrow, or export --format jsonl") from None
    every = list(items)
    names: dict[str, None] = {}  # every field of every row, in first-seen order
    for row in every:
        names.update(dict.fromkeys(row))
    table = pa.table({name: _column(pa, [_cell(row.get(name)) for row in every]) for name in names})
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        pq.write_table(table, partial)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return len(every)


def _column(pa, values: list) -> Any:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds (a metric that is a number here,
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values])  # text there)


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value
