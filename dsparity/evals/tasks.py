"""Tasks: lm-eval YAML under `tasks/` -> typed items with prompts, targets and hashes.

Every file under `tasks/` is a plain lm-eval task (loaded through `TaskManager(include_path=...,
include_defaults=False)`); dsparity's own settings sit under `metadata.dsparity` where lm-eval
ignores them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Request
from dsparity.evals.graders import GRADERS

BUILTIN_TASKS = Path(__file__).resolve().parents[2] / "tasks"

REQUIRED_FIELDS = ("task", "output_type", "doc_to_text", "doc_to_target")


@dataclass(frozen=True)
class TaskItem:
    task: str
    doc_id: int
    doc: dict[str, Any]
    target: str
    request: Request
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
    if config["output_type"] != "generate_until":
        raise DsparityError(str(path), "output_type", f"{config['output_type']!r} is not supported",
                            "dsparity runs generation tasks: use generate_until")
    settings = (config.get("metadata") or {}).get("dsparity") or {}
    if not isinstance(settings, dict):
        raise DsparityError(str(path), "metadata.dsparity", "must be a mapping",
                            "write dsparity settings as key: value pairs under metadata.dsparity")
    grader = settings.get("grader", "exact")
    if grader not in GRADERS:
        raise DsparityError(str(path), "metadata.dsparity.grader", f"unknown grader {grader!r}",
                            f"use one of: {', '.join(sorted(GRADERS))}")
    return TaskSpec(name=str(config["task"]), suite=str(settings.get("suite", "custom")),
                    grader=grader, settings=settings, yaml_path=path)


def select(specs: dict[str, TaskSpec], problems: list[DsparityError], *,
           suites: list[str] | None, names: list[str] | None) -> list[TaskSpec]:
    """Pick tasks by suite and/or name; a broken file only matters if it may be one of them."""
    chosen = [s for s in specs.values()
              if (not suites or s.suite in suites) and (not names or s.name in names)]
    for problem in problems:
        if _may_belong(problem.source, suites, names):
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


def build_items(specs: list[TaskSpec], task_dirs: list[Path], *, limit: int | None) -> None:
    """Let lm-eval build the docs, prompts and targets; fill `spec.items` in place."""
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    manager = TaskManager(include_path=[str(d) for d in task_dirs], include_defaults=False)
    try:
        loaded = manager.load([s.name for s in specs])["tasks"]
    except Exception as exc:  # lm-eval raises many types; the user needs the file and the cause
        raise DsparityError("tasks", ", ".join(s.name for s in specs),
                            f"lm-eval could not build the task ({type(exc).__name__}: {exc})",
                            "run `dsparity tasks validate` for the file and field") from None
    for spec in specs:
        task = loaded[spec.name]
        docs = list(task.eval_docs)
        spec.n_docs = len(docs)
        spec.items = [_make_item(spec, task, i, doc) for i, doc in enumerate(docs[:limit])]
        spec.task_hash = sha([spec.name, spec.settings, task.config.to_dict(keep_callable=False)
                              if hasattr(task.config, "to_dict") else {},
                              [it.doc_hash for it in spec.items]])


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


def load_tasks(*, suites: list[str] | None = None, names: list[str] | None = None,
               limit: int | None = None, include: list[Path] | None = None) -> list[TaskSpec]:
    task_dirs = [BUILTIN_TASKS, *(include or [])]
    specs, problems = scan(task_dirs)
    chosen = select(specs, problems, suites=suites, names=names)
    build_items(chosen, task_dirs, limit=limit)
    return chosen
