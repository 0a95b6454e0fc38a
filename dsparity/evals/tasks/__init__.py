"""Tasks: lm-eval YAML under `tasks/` -> typed items with prompts, targets and hashes.

Every file under `tasks/` is a plain lm-eval task (loaded through `TaskManager(include_path=...,
include_defaults=False)`); dsparity's own settings sit under `metadata.dsparity` where lm-eval
ignores them. Generated suites (reasoning, longctx) make their items through
`dsparity.evals.taskgen`, sized by `GenOptions` (`--size`) and cached on disk.

Task files are read as lm-eval reads them (`task_yaml`: `include:` templates), prompts are built by
lm-eval's own few-shot machinery (`task_prompts`), `filter_list` / `metric_list` are honoured
(the `lm_eval` grader) or refused with one line, and a name that none of dsparity's folders holds
is looked up in lm-eval's own registry (`task_registry`). `--limit` keeps a fixed, seeded sample
(`task_sample`), stratified over a long-context task's lengths.

The built-in task folder is found in the installed package (`dsparity/builtin_tasks`, what a
wheel ships) or, in a checkout, at the repository's `tasks/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Request, ScoreRequest, Span
from dsparity.evals.graders import GRADERS
from dsparity.evals.taskgen.cache import GenOptions
from dsparity.evals.tasks.files import function_folder, included_files, read_config
from dsparity.evals.tasks.sample import pick

_MARKER = "_dsparity_data.py"  # present in every built-in task folder, wherever it is installed


def _find_builtin_tasks() -> Path:
    here = Path(__file__).resolve()
    packaged = here.parents[2] / "builtin_tasks"  # dsparity/builtin_tasks in a wheel
    checkout = here.parents[3] / "tasks"  # the repository's tasks/ in a checkout
    for candidate in (packaged, checkout):
        if (candidate / _MARKER).exists():
            return candidate
    return checkout


BUILTIN_TASKS = _find_builtin_tasks()

REQUIRED_FIELDS = ("task", "doc_to_text", "doc_to_target")
# lm-eval's output types (generate_until when none is given, as in lm-eval), each with the grader
# a task gets when it names none: lm-eval's own filters and metrics for generation.
OUTPUT_TYPES = {"generate_until": "lm_eval", "multiple_choice": "loglikelihood",
                "loglikelihood": "loglikelihood", "loglikelihood_rolling": "fidelity"}
SCORE_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")
OPTIONAL_SUITES = {"hub"}  # only run when asked for by name: they need the Hugging Face hub
REGISTRY_SUITE = "lm_eval"  # tasks found in lm-eval's own registry, not in dsparity's folders
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
    settings: dict[str, Any]  # metadata.dsparity (with lm-eval's defaults filled in)
    yaml_path: Path
    n_docs: int = 0
    items: list[TaskItem] = field(default_factory=list)
    task_hash: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the YAML as lm-eval reads it
    output_type: str = "generate_until"
    registry: bool = False  # found in lm-eval's own task registry
    fewshot: dict[str, Any] = field(default_factory=dict)  # how the shots are chosen (after build)

    @property
    def hub_dataset(self) -> str | None:
        from dsparity.evals.tasks.hub import hub_dataset

        return hub_dataset(self.config, self.settings)

    @property
    def needs_hub(self) -> bool:
        return bool(self.settings.get("needs_hub")) or self.hub_dataset is not None

    @property
    def scored(self) -> bool:
        """A log-likelihood task (its items are ScoreRequests, not chat requests)."""
        return self.output_type in SCORE_TYPES


def sha(obj: Any) -> str:
    blob = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False,
                                                       default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def scan(task_dirs: list[Path]) -> tuple[dict[str, TaskSpec], list[DsparityError]]:
    """Read every task YAML; return the good ones by name and one error per broken file.

    A file another file includes and that names no task itself is a template, not a task."""
    specs: dict[str, TaskSpec] = {}
    problems: list[DsparityError] = []
    for folder in task_dirs:
        if not folder.is_dir():
            problems.append(DsparityError(str(folder), "", "no such task folder",
                                          "give a folder that holds task YAML files"))
            continue
        paths = sorted(p for p in folder.rglob("*.yaml") if "__pycache__" not in p.parts)
        templates = {inc for p in paths for inc in included_files(p)}
        for path in paths:
            try:
                spec = read_spec(path, templates=templates)
            except DsparityError as exc:
                exc.task_file = str(path)  # which task a problem in a data file belongs to
                if getattr(exc, "task_name", None) is None:  # so `--tasks NAME` reports the file
                    exc.task_name = _declared_task_name(path)
                problems.append(exc)
                continue
            if spec is not None:
                specs[spec.name] = spec
    return specs, problems


def _declared_task_name(path: Path) -> str | None:
    """The `task:` a broken file declares, if it can be read at all."""
    try:
        name = read_config(path).get("task")
    except Exception:  # unreadable YAML: the problem itself says so
        return None
    return name if isinstance(name, str) else None


def read_spec(path: Path, *, templates: set[Path] | frozenset = frozenset(),
              default_suite: str = "custom") -> TaskSpec | None:
    """One task file as lm-eval reads it (includes merged); None for a group or a template."""
    from dsparity.evals.tasks import fields as task_fields

    config = read_config(path)
    if "class" in config:
        raise DsparityError(str(path), "class", "a task written as a Python class is not supported "
                            "by dsparity", "write the task as lm-eval YAML fields")
    if "group" in config:
        return None  # a group file; its members are task files of their own
    if "task" not in config and path.resolve() in templates:
        return None  # an include template
    for key in REQUIRED_FIELDS:
        if key not in config:
            raise DsparityError(str(path), key, "missing required field",
                                f"add `{key}:` (lm-eval task schema)")
    if not isinstance(config["task"], str) or not config["task"]:
        raise DsparityError(str(path), "task", "must be the task's name", "write task: <name>")
    output_type = config.get("output_type", "generate_until")
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
    shots = config.get("num_fewshot")
    if shots is not None and (not isinstance(shots, int) or isinstance(shots, bool) or shots < 0):
        raise DsparityError(str(path), "num_fewshot", f"{shots!r} is not a whole number",
                            "write num_fewshot: <integer>")
    if config.get("gen_prefix") and output_type == "generate_until":
        raise DsparityError(str(path), "gen_prefix", "dsparity sends chat requests and cannot "
                            "pre-fill the start of the answer", "remove gen_prefix (or put the words "
                            "into doc_to_text)")
    suite = str(settings.get("suite", default_suite))
    try:
        settings = task_fields.check(path, config, output_type, grader, settings)
        _check_data(path, config, grader)
    except DsparityError as exc:
        exc.task_name, exc.suite = str(config["task"]), suite
        raise
    return TaskSpec(name=str(config["task"]), suite=suite, grader=grader, settings=settings,
                    yaml_path=path, config=config, output_type=output_type)


def _data_file(path: Path, config: dict) -> Path | None:
    data_file = (config.get("dataset_kwargs") or {}).get("data_file")
    if not data_file or "custom_dataset" not in config:
        return None
    # the loader reads it next to the `utils.py` its `!function` names (lm-eval resolves that
    # relative to the file that wrote it, which may be an included template)
    folder = function_folder(config["custom_dataset"]) or path.parent
    return folder / str(data_file)


def _check_data(path: Path, config: dict, grader: str) -> None:
    """A task's JSONL: every line an object with the fields its grader reads."""
    data = _data_file(path, config)
    if data is None:
        return
    # the folder of the loader that reads it (the YAML's, or an included template's)
    folder = function_folder(config["custom_dataset"]) or path.parent
    if folder.resolve() not in data.resolve().parents:
        raise DsparityError(str(path), "dataset_kwargs.data_file",
                            f"{(config.get('dataset_kwargs') or {}).get('data_file')} leaves the task folder",
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

    Optional suites (the hub ones) are only picked when named. A name none of dsparity's folders
    holds is looked up in lm-eval's own registry (a group there stands for its member tasks)."""
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
        chosen += _from_registry(missing, specs)
    unknown = [s for s in suites or [] if s not in {t.suite for t in specs.values()}]
    if unknown:
        raise DsparityError("--suite", unknown[0], "no such suite",
                            f"known suites: {', '.join(sorted({t.suite for t in specs.values()}))}")
    if not chosen:
        raise DsparityError("--suite/--tasks", "", "selects no task", "run `dsparity tasks list`")
    return sorted({s.name: s for s in chosen}.values(), key=lambda s: s.name)


def _from_registry(names: list[str], specs: dict[str, TaskSpec]) -> list[TaskSpec]:
    """Specs for task or group names found in lm-eval's installed registry (added to `specs`)."""
    from dsparity.evals.tasks import registry as task_registry

    found = task_registry.find(names)
    missing = [n for n in names if n not in found]
    if missing:
        known = ", ".join(sorted(specs)) or "none"
        raise DsparityError("--tasks", missing[0], "no such task in dsparity's task folders or in "
                            "lm-eval's own registry", f"known dsparity tasks: {known}; "
                            "lm-eval's: `lm-eval ls tasks`")
    out = []
    for paths in found.values():
        for path in paths:
            spec = read_spec(path, default_suite=REGISTRY_SUITE)
            if spec is None:
                continue
            spec.registry = True
            specs.setdefault(spec.name, spec)
            out.append(spec)
    return out


def _may_belong(path: str, suites: list[str] | None, names: list[str] | None) -> bool:
    p = Path(path)
    hints = set(suites or []) | set(names or [])
    return not hints or p.stem in hints or p.parent.name in hints or any(
        h in p.stem for h in hints)


def build_items(specs: list[TaskSpec], task_dirs: list[Path], *, limit: int | None,
                options: GenOptions | None = None) -> None:
    """Let lm-eval build the docs, prompts and targets; fill `spec.items` in place.

    `limit` keeps a fixed sample of each task's documents (`task_sample.pick`), not the first N."""
    from lm_eval.tasks import TaskManager

    from dsparity.evals.tasks import fields as task_fields

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    options = options or GenOptions.from_env()
    meta = options.as_metadata()
    dirs = list(dict.fromkeys([*task_dirs, *(s.yaml_path.parent for s in specs if s.registry)]))
    for spec in specs:
        _preflight(spec)
        if spec.grader == "lm_eval":
            task_fields.registered(spec.yaml_path, spec.config)
    manager = TaskManager(include_path=[str(d) for d in dirs], include_defaults=False,
                          metadata=meta or None)
    try:
        loaded = manager.load([s.name for s in specs])["tasks"]
    except Exception as exc:  # lm-eval raises many types; the user needs the file and the cause
        raise _load_error(specs, exc) from None
    for spec in specs:
        _build_task(spec, loaded[spec.name], limit, options)


def _build_task(spec: TaskSpec, task, limit: int | None, options: GenOptions) -> None:
    from dsparity.evals.tasks.prompts import describe, walk

    docs = list(task.eval_docs)
    spec.n_docs = len(docs)
    keep = pick(docs, limit, task=spec.name, seed=options.seed)
    make = _score_item if spec.scored else _make_item
    try:
        spec.items = [make(spec, task, doc_id, doc) for doc_id, doc in walk(task, docs, keep)]
    except DsparityError:
        raise
    except Exception as exc:  # the task's own templates or code failed on a document
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DsparityError(str(spec.yaml_path), spec.name, f"lm-eval could not build a prompt "
                            f"({type(exc).__name__}: {first})", "check doc_to_text / doc_to_target / "
                            "the few-shot settings against the data") from None
    spec.fewshot = describe(task)
    spec.task_hash = sha([spec.name, spec.settings, task.config.to_dict(keep_callable=False)
                          if hasattr(task.config, "to_dict") else {}, spec.fewshot,
                          [it.doc_hash for it in spec.items]])


def _preflight(spec: TaskSpec) -> None:
    """Fail in one line before lm-eval starts: hub data that cannot be had, checkers that cannot run."""
    from dsparity.evals.tasks import hub as task_hub

    repo = spec.hub_dataset
    if repo is not None:
        name = spec.config.get("dataset_name")
        task_hub.preflight(spec.yaml_path, spec.name, repo, str(name) if name else None)
    if spec.grader == "writing" and spec.settings.get("checker") == "ifeval":
        from dsparity.evals.graders.writing import ifeval_preflight

        ifeval_preflight(str(spec.yaml_path))


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
                             f"{spec.name} could not read the Hugging Face dataset "
                             f"{spec.hub_dataset!r} ({type(exc).__name__}: {first})",
                             "run where huggingface.co is reachable (HF_TOKEN for gated sets), "
                             "or fill the datasets cache there first")
    return DsparityError("tasks", ", ".join(s.name for s in specs),
                         f"lm-eval could not build the task ({type(exc).__name__}: {first})",
                         "run `dsparity tasks validate` for the file and field")


def _make_item(spec: TaskSpec, task, doc_id: int, doc: dict) -> TaskItem:
    from dsparity.evals.tasks.fields import generation_info
    from dsparity.evals.tasks.prompts import chat_messages

    messages = chat_messages(spec, task, doc)
    target = task.doc_to_target(doc)
    if task.config.doc_to_choice is not None and isinstance(target, int):
        target = task.doc_to_choice(doc)[target]
    if isinstance(target, list):
        target = target[0] if target else ""
    gen = task.config.generation_kwargs or {}
    until = gen.get("until") or []
    request = Request(
        messages=messages,
        max_tokens=int(spec.settings.get("max_tokens", gen.get("max_gen_toks", 256))),
        temperature=float(gen.get("temperature", 0.0)) if gen.get("do_sample") else 0.0,
        stop=tuple([until] if isinstance(until, str) else until),
    )
    stored = dict(doc)
    if spec.grader == "lm_eval":
        stored["_lm_eval"] = generation_info(task, doc, spec.config)
    # One user message hashes as its text (as before system messages and shots existed), so stored
    # runs keep pairing by prompt.
    prompt = messages[0][1] if len(messages) == 1 and messages[0][0] == "user" else list(messages)
    return TaskItem(task=spec.name, doc_id=doc_id, doc=stored, target=str(target),
                    request=request, doc_hash=sha(dict(doc)), prompt_hash=sha(prompt))


def _score_item(spec: TaskSpec, task, doc_id: int, doc: dict) -> TaskItem:
    """A log-likelihood item from lm-eval's own requests (its contexts with few-shot examples,
    target delimiter and choices), one ScoreRequest per document; no chat template.

    Generated documents that carry `tokens` (the fidelity suite) are scored as those very tokens,
    after the tokenizer's prefix token, so two models with one tokenizer score identical input."""
    from dsparity.evals.tasks.prompts import score_arguments

    doc = dict(doc)
    args = score_arguments(spec, task, doc_id, doc)
    if not args:
        raise DsparityError(str(spec.yaml_path), f"document {doc_id}", "lm-eval built no request",
                            "check doc_to_text / doc_to_target / doc_to_choice")
    if "tokens" in doc:
        parts = (Span((int(doc["prefix_token"]),), tuple(int(t) for t in doc["tokens"])),)
    elif spec.output_type == "loglikelihood_rolling":
        parts = tuple(Span("", str(a[0])) for a in args)
    else:
        parts = tuple(Span(str(a[0]), str(a[1])) for a in args)
    request = ScoreRequest(parts, top_n=int(spec.settings.get("top_n", 0)),
                           rolling=spec.output_type == "loglikelihood_rolling")
    stored = {k: v for k, v in doc.items() if k != "tokens"}  # the request holds them
    stored["_lm_eval"] = _scoring_info(spec, task, doc)
    return TaskItem(task=spec.name, doc_id=doc_id, doc=stored, target=stored["_lm_eval"].get(
        "target_text", ""), request=request, doc_hash=sha(doc), prompt_hash=sha(request.to_dict()))


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
           "read_spec", "scan", "select", "sha"]
