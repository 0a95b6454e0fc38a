"""Tasks: lm-eval YAML under `tasks/` -> typed items with prompts, targets and hashes.

Every file under `tasks/` is a plain lm-eval task (loaded through `TaskManager(include_path=...,
include_defaults=False)`); dsparity's own settings sit under `metadata.dsparity` where lm-eval
ignores them. Generated suites (reasoning, longctx) make their items through
`dsparity.evals.taskgen`, sized by `GenOptions` (`--size`) and cached on disk.

The built-in task folder is found in the installed package (`dsparity/builtin_tasks`, what a
wheel ships) or, in a checkout, at the repository's `tasks/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Request, ScoreRequest, Span
from dsparity.evals.graders import GRADERS
from dsparity.evals.taskgen.cache import GenOptions

_MARKER = "_dsparity_data.py"  # present in every built-in task folder, wherever it is installed


def _find_builtin_tasks() -> Path:
    here = Path(__file__).resolve()
    packaged = here.parents[1] / "builtin_tasks"  # dsparity/builtin_tasks in a wheel
    checkout = here.parents[2] / "tasks"  # the repository's tasks/ in a checkout
    for candidate in (packaged, checkout):
        if (candidate / _MARKER).exists():
            return candidate
    return checkout


BUILTIN_TASKS = _find_builtin_tasks()

REQUIRED_FIELDS = ("task", "output_type", "doc_to_text", "doc_to_target")
# lm-eval's output types: generation, and the log-likelihood family with its default grader.
OUTPUT_TYPES = {"generate_until": "exact", "multiple_choice": "loglikelihood",
                "loglikelihood": "loglikelihood", "loglikelihood_rolling": "fidelity"}
SCORE_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")
OPTIONAL_SUITES = {"hub"}  # only run when asked for by name: they need the Hugging Face hub
# Fields each grader reads from a task's documents (checked on the JSONL data when validating).
GRADER_DOC_FIELDS = {
    "code": ("prompt", "test", "entry_point"),
    "stdio": ("tests",),
    "writing": ("constraints",),
    "web": ("checklist",),
}
# Constraint types and the keys each needs (the writing grader's contract).
CONSTRAINT_TYPES = {
    "min_chars": ("value",), "max_chars": ("value",), "min_words": ("value",), "max_words": ("value",),
    "sections": ("headings",), "keyword_count": ("keyword",), "language": ("value",),
    "no_commas": (), "ends_with": ("value",), "starts_with": ("value",),
    "forbidden_words": ("value",), "min_paragraphs": ("value",),
}


@dataclass(frozen=True)
class TaskItem:
    task: str
    doc_id: int
    doc: dict[str, Any]
    target: str
    request: Request | ScoreRequest
    doc_hash: str
    prompt_hash: str


@dataclass
class TaskSpec:
    name: str
    suite: str
    grader: str
    settings: dict[str, Any]  # metadata.dsparity
    yaml_path: Path
    n_docs: int = 0
    items: list[TaskItem] = field(default_factory=list)
    task_hash: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the YAML as read (for list/show)
    output_type: str = "generate_until"

    @property
    def needs_hub(self) -> bool:
        return bool(self.settings.get("needs_hub"))

    @property
    def scored(self) -> bool:
        """A log-likelihood task (its items are ScoreRequests, not chat requests)."""
        return self.output_type in SCORE_TYPES


def sha(obj: Any) -> str:
    blob = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False,
                                                       default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _LmEvalLoader(yaml.SafeLoader):
    """Reads lm-eval YAML for validation without importing the `!function` targets."""


_LmEvalLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def scan(task_dirs: list[Path]) -> tuple[dict[str, TaskSpec], list[DsparityError]]:
    """Read every task YAML; return the good ones by name and one error per broken file."""
    specs: dict[str, TaskSpec] = {}
    problems: list[DsparityError] = []
    for folder in task_dirs:
        if not folder.is_dir():
            problems.append(DsparityError(str(folder), "", "no such task folder",
                                          "give a folder that holds task YAML files"))
            continue
        for path in sorted(folder.rglob("*.yaml")):
            try:
                spec = _read_spec(path)
            except DsparityError as exc:
                exc.task_file = str(path)  # which task a problem in a data file belongs to
                problems.append(exc)
                continue
            if spec is not None:
                specs[spec.name] = spec
    return specs, problems


def _read_spec(path: Path) -> TaskSpec | None:
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_LmEvalLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise DsparityError(str(path), where, f"not valid YAML ({getattr(exc, 'problem', exc)})",
                            "fix the YAML syntax") from None
    if not isinstance(config, dict):
        raise DsparityError(str(path), "", "a task file must be a YAML mapping",
                            "see tasks/smoke/smoke_arithmetic.yaml for the shape")
    if "group" in config and "task" not in config:
        return None  # a group file; its members are task files of their own
    for key in REQUIRED_FIELDS:
        if key not in config:
            raise DsparityError(str(path), key, "missing required field",
                                f"add `{key}:` (lm-eval task schema)")
    output_type = config["output_type"]
    if output_type not in OUTPUT_TYPES:
        raise DsparityError(str(path), "output_type", f"{output_type!r} is not an lm-eval output type",
                            f"use one of: {', '.join(OUTPUT_TYPES)}")
    if output_type == "multiple_choice" and "doc_to_choice" not in config:
        raise DsparityError(str(path), "doc_to_choice", "missing: a multiple_choice task needs its "
                            "choices", "add `doc_to_choice:` (a field name, a list, or a template)")
    if output_type in SCORE_TYPES and "process_results" in config:
        raise DsparityError(str(path), "process_results", "a custom process_results function is not "
                            "supported for log-likelihood tasks (dsparity re-grades stored scores "
                            "without the task's code)", "remove it and use acc / acc_norm metrics")
    settings = (config.get("metadata") or {}).get("dsparity") or {}
    if not isinstance(settings, dict):
        raise DsparityError(str(path), "metadata.dsparity", "must be a mapping",
                            "write dsparity settings as key: value pairs under metadata.dsparity")
    grader = settings.get("grader", OUTPUT_TYPES[output_type])
    if (grader in ("loglikelihood", "fidelity")) != (output_type in SCORE_TYPES):
        raise DsparityError(str(path), "metadata.dsparity.grader",
                            f"grader {grader!r} does not fit output_type {output_type!r}",
                            f"use grader {OUTPUT_TYPES[output_type]!r} (or leave it out)")
    if grader not in GRADERS:
        raise DsparityError(str(path), "metadata.dsparity.grader", f"unknown grader {grader!r}",
                            f"use one of: {', '.join(sorted(GRADERS))}")
    for key in ("max_tokens", "default_size", "seed"):
        value = settings.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise DsparityError(str(path), f"metadata.dsparity.{key}", f"{value!r} is not a whole number",
                                f"write {key}: <integer>")
    try:
        _check_data(path, config, grader)
    except DsparityError as exc:
        exc.task_name, exc.suite = str(config["task"]), str(settings.get("suite", "custom"))
        raise
    return TaskSpec(name=str(config["task"]), suite=str(settings.get("suite", "custom")),
                    grader=grader, settings=settings, yaml_path=path, config=config,
                    output_type=output_type)


def _data_file(path: Path, config: dict) -> Path | None:
    data_file = (config.get("dataset_kwargs") or {}).get("data_file")
    return path.parent / str(data_file) if data_file and "custom_dataset" in config else None


def _check_data(path: Path, config: dict, grader: str) -> None:
    """A task's JSONL: every line an object with the fields its grader reads."""
    data = _data_file(path, config)
    if data is None:
        return
    if path.parent.resolve() not in data.resolve().parents:
        raise DsparityError(str(path), "dataset_kwargs.data_file",
                            f"{data.relative_to(path.parent)} leaves the task folder",
                            "data files must stay inside the folder of their YAML")
    if not data.is_file():
        raise DsparityError(str(path), "dataset_kwargs.data_file", f"no such file {data.name!r}",
                            f"put the JSONL next to the YAML ({data})")
    needed = GRADER_DOC_FIELDS.get(grader, ())
    for lineno, row in iter_jsonl(data):
        for key in needed:
            if key not in row:
                raise DsparityError(f"{data}:{lineno}", key, "missing field",
                                    f"the {grader} grader reads `{key}` from every item")
        if grader == "writing":
            _check_constraints(data, lineno, row["constraints"])


def iter_jsonl(path: Path):
    """(line number, object) for every non-blank line of a task's JSONL data; the one reader of
    task data, used by validation here and by the task loader lm-eval calls (tasks/_dsparity_data.py)."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DsparityError(f"{path}:{lineno}", "", f"not valid JSON ({exc.msg})",
                                    "write one JSON object per line") from None
            if not isinstance(row, dict):
                raise DsparityError(f"{path}:{lineno}", "", "not a JSON object",
                                    "write one JSON object per line")
            yield lineno, row


def _check_constraints(data: Path, lineno: int, constraints: Any) -> None:
    if not isinstance(constraints, list):
        raise DsparityError(f"{data}:{lineno}", "constraints", "must be a list",
                            'write constraints: [{"type": "min_words", "value": 100}, ...]')
    for i, c in enumerate(constraints):
        kind = c.get("type") if isinstance(c, dict) else None
        if kind not in CONSTRAINT_TYPES:
            raise DsparityError(f"{data}:{lineno}", f"constraints[{i}].type",
                                f"unknown constraint {kind!r}",
                                f"use one of: {', '.join(sorted(CONSTRAINT_TYPES))}")
        for key in CONSTRAINT_TYPES[kind]:
            if key not in c:
                raise DsparityError(f"{data}:{lineno}", f"constraints[{i}].{key}",
                                    "missing field", f"a {kind} constraint needs `{key}`")


def count_items(spec: TaskSpec, options: GenOptions | None = None) -> int | None:
    """Items a task will have, without building them (None: only known after a hub download)."""
    options = options or GenOptions.from_env()
    kwargs = spec.config.get("dataset_kwargs") or {}
    data = _data_file(spec.yaml_path, spec.config)
    if data is not None:
        with data.open(encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    generator = kwargs.get("generator")
    if generator == "reasoning":
        return options.size or int(spec.settings.get("default_size", 12))
    if generator in ("longctx", "fidelity"):
        lengths = options.lengths or spec.settings.get("lengths") or (1024, 2048, 4096, 8192)
        return (options.size or int(spec.settings.get("default_size", 4))) * len(lengths)
    if generator == "humaneval":
        from dsparity.evals.taskgen.loaders import humaneval_rows

        return len(humaneval_rows())
    return None


def select(specs: dict[str, TaskSpec], problems: list[DsparityError], *,
           suites: list[str] | None, names: list[str] | None) -> list[TaskSpec]:
    """Pick tasks by suite and/or name; a broken file only matters if it may be one of them.

    Optional suites (the hub ones) are only picked when named."""
    chosen = [s for s in specs.values()
              if (not suites or s.suite in suites) and (not names or s.name in names)
              and (suites or names or s.suite not in OPTIONAL_SUITES)]
    for problem in problems:
        named = getattr(problem, "task_name", None) in (names or ()) or \
            getattr(problem, "suite", None) in (suites or ())
        if named or _may_belong(getattr(problem, "task_file", problem.source), suites, names):
            raise problem
    missing = [n for n in names or [] if n not in specs]
    if missing:
        raise DsparityError("--tasks", missing[0], "no such task",
                            f"known tasks: {', '.join(sorted(specs)) or 'none'}")
    unknown = [s for s in suites or [] if s not in {t.suite for t in specs.values()}]
    if unknown:
        raise DsparityError("--suite", unknown[0], "no such suite",
                            f"known suites: {', '.join(sorted({t.suite for t in specs.values()}))}")
    if not chosen:
        raise DsparityError("--suite/--tasks", "", "selects no task", "run `dsparity tasks list`")
    return sorted(chosen, key=lambda s: s.name)


def _may_belong(path: str, suites: list[str] | None, names: list[str] | None) -> bool:
    p = Path(path)
    hints = set(suites or []) | set(names or [])
    return not hints or p.stem in hints or p.parent.name in hints or any(
        h in p.stem for h in hints)


def build_items(specs: list[TaskSpec], task_dirs: list[Path], *, limit: int | None,
                options: GenOptions | None = None) -> None:
    """Let lm-eval build the docs, prompts and targets; fill `spec.items` in place."""
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    options = options or GenOptions.from_env()
    meta = options.as_metadata()
    manager = TaskManager(include_path=[str(d) for d in task_dirs], include_defaults=False,
                          metadata=meta or None)
    for spec in specs:
        if spec.needs_hub:
            _hub_preflight(spec)
    try:
        loaded = manager.load([s.name for s in specs])["tasks"]
    except Exception as exc:  # lm-eval raises many types; the user needs the file and the cause
        raise _load_error(specs, exc) from None
    for spec in specs:
        task = loaded[spec.name]
        docs = list(task.eval_docs)
        spec.n_docs = len(docs)
        if spec.scored:
            spec.items = _score_items(spec, task, docs, limit)
        else:
            spec.items = [_make_item(spec, task, i, doc) for i, doc in enumerate(docs[:limit])]
        spec.task_hash = sha([spec.name, spec.settings, task.config.to_dict(keep_callable=False)
                              if hasattr(task.config, "to_dict") else {},
                              [it.doc_hash for it in spec.items]])


def _load_error(specs: list[TaskSpec], exc: Exception) -> DsparityError:
    cause = exc
    while cause is not None and not isinstance(cause, DsparityError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, DsparityError):
        return cause
    first = (str(exc).strip().splitlines() or [""])[0]
    hub = [s for s in specs if s.needs_hub]
    if hub:
        spec = hub[0]
        return DsparityError(str(spec.yaml_path), "dataset_path",
                             f"{spec.name} needs the Hugging Face hub for "
                             f"{spec.config.get('dataset_path')!r} ({type(exc).__name__}: {first})",
                             "run where huggingface.co is reachable (HF_TOKEN for gated sets), "
                             "or fill the datasets cache there first")
    return DsparityError("tasks", ", ".join(s.name for s in specs),
                         f"lm-eval could not build the task ({type(exc).__name__}: {first})",
                         "run `dsparity tasks validate` for the file and field")


def _hub_preflight(spec: TaskSpec) -> None:
    """Fail in one line before lm-eval starts a download that cannot work."""
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if offline and not _in_datasets_cache(spec):
        raise DsparityError(str(spec.yaml_path), "dataset_path",
                            f"{spec.name} needs the Hugging Face hub for "
                            f"{spec.config.get('dataset_path')!r}, and HF_HUB_OFFLINE is set with "
                            "nothing cached", "run where huggingface.co is reachable, unset "
                            "HF_HUB_OFFLINE, or pick offline suites (dsparity tasks list)")
    if not offline:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=5).close()
        except OSError as exc:
            raise DsparityError(str(spec.yaml_path), "dataset_path",
                                f"{spec.name} needs the Hugging Face hub, which is unreachable "
                                f"({exc.__class__.__name__})",
                                "run where huggingface.co is reachable, or pick offline suites "
                                "(dsparity tasks list)") from None


def _in_datasets_cache(spec: TaskSpec) -> bool:
    """Whether a previous online run left this dataset in the local Hugging Face caches."""
    path = str(spec.config.get("dataset_path", ""))
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    names = {path.replace("/", "___").lower(), "datasets--" + path.replace("/", "--").lower()}
    for root in (datasets_cache, Path(os.environ.get("HF_HUB_CACHE") or home / "hub")):
        if root.is_dir() and any(p.name.lower() in names for p in root.iterdir()):
            return True
    return False


def _make_item(spec: TaskSpec, task, doc_id: int, doc: dict) -> TaskItem:
    description = task.config.description or ""
    prompt = description + str(task.doc_to_text(doc))
    target = task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0]
    gen = task.config.generation_kwargs or {}
    until = gen.get("until") or []
    request = Request(
        messages=(("user", prompt),),
        max_tokens=int(spec.settings.get("max_tokens", gen.get("max_gen_toks", 256))),
        temperature=float(gen.get("temperature", 0.0)) if gen.get("do_sample") else 0.0,
        stop=tuple([until] if isinstance(until, str) else until),
    )
    return TaskItem(task=spec.name, doc_id=doc_id, doc=dict(doc), target=str(target),
                    request=request, doc_hash=sha(dict(doc)), prompt_hash=sha(prompt))


def _score_items(spec: TaskSpec, task, docs: list[dict], limit: int | None) -> list[TaskItem]:
    """Log-likelihood items from lm-eval's own requests (its contexts, few-shot examples, target
    delimiter and choices), one ScoreRequest per document; no chat template.

    Generated documents that carry `tokens` (the fidelity suite) are scored as those very tokens,
    after the tokenizer's prefix token, so two models with one tokenizer score identical input."""
    n = len(docs) if limit is None else min(limit, len(docs))
    with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's own progress bar: not ours to show
        task.build_all_requests(limit=n, rank=0, world_size=1)
    spans: dict[int, list] = {}
    for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        spans.setdefault(inst.doc_id, []).append(inst.arguments)
    top_n = int(spec.settings.get("top_n", 0))
    items = []
    for doc_id in range(n):
        doc = dict(docs[doc_id])
        args = spans.get(doc_id)
        if not args:
            raise DsparityError(str(spec.yaml_path), f"document {doc_id}", "lm-eval built no request",
                                "check doc_to_text / doc_to_target / doc_to_choice")
        if "tokens" in doc:
            parts = (Span((int(doc["prefix_token"]),), tuple(int(t) for t in doc["tokens"])),)
        elif spec.output_type == "loglikelihood_rolling":
            parts = (Span("", str(a[0])) for a in args)
        else:
            parts = (Span(str(a[0]), str(a[1])) for a in args)
        request = ScoreRequest(tuple(parts), top_n=top_n,
                               rolling=spec.output_type == "loglikelihood_rolling")
        stored = {k: v for k, v in doc.items() if k != "tokens"}  # the request holds them
        stored["_lm_eval"] = _scoring_info(spec, task, doc)
        target = stored["_lm_eval"].get("target_text", "")
        items.append(TaskItem(task=spec.name, doc_id=doc_id, doc=stored, target=target,
                              request=request, doc_hash=sha(doc),
                              prompt_hash=sha(request.to_dict())))
    return items


def _scoring_info(spec: TaskSpec, task, doc: dict) -> dict[str, Any]:
    """What the log-likelihood grader needs to score an item as lm-eval does, decided by lm-eval
    itself when the items are built (choices, gold index, metrics), so re-grading needs no task
    code."""
    info: dict[str, Any] = {"output_type": spec.output_type,
                            "metrics": sorted(getattr(task, "_metric_fn_list", {}) or {})}
    if spec.output_type == "multiple_choice":
        choices = [str(c) for c in task.doc_to_choice(doc)]
        gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
        golds = gold if isinstance(gold, list) else [gold]
        indices = [choices.index(g) if isinstance(g, str) and g in choices else
                   int(g) if isinstance(g, int) and 0 <= g < len(choices) else -100 for g in golds]
        if -100 in indices:
            raise DsparityError(str(spec.yaml_path), "doc_to_target",
                                f"gold {gold!r} is not one of the {len(choices)} choices",
                                "make doc_to_target an index into doc_to_choice or one of its texts")
        info.update(choices=choices, gold=indices, multiple_target=bool(task.multiple_target),
                    target_text=" | ".join(choices[i] for i in indices))
    elif spec.output_type == "loglikelihood":
        info["target_text"] = str(task.doc_to_target(doc))
    else:
        text = str(task.doc_to_target(doc))
        info.update(words=task.count_words(text), bytes=task.count_bytes(text))
    return info


def load_tasks(*, suites: list[str] | None = None, names: list[str] | None = None,
               limit: int | None = None, include: list[Path] | None = None,
               size: int | None = None, seed: int | None = None) -> list[TaskSpec]:
    task_dirs = [BUILTIN_TASKS, *(include or [])]
    specs, problems = scan(task_dirs)
    chosen = select(specs, problems, suites=suites, names=names)
    build_items(chosen, task_dirs, limit=limit, options=GenOptions.from_env(size=size, seed=seed))
    return chosen


__all__ = ["BUILTIN_TASKS", "TaskItem", "TaskSpec", "build_items", "count_items", "load_tasks",
           "scan", "select", "sha"]
