"""lm-eval's own task registry (its installed `lm_eval/tasks/` folder), searched by name.

Indexing all of it the way `TaskManager(include_defaults=True)` does reads ~14,000 YAML files and
takes half a minute on two cores, so dsparity never does that for its own folders: only a name
that none of them holds is looked up here, by a text search for a top-level `task: NAME` or
`group: NAME` line, and only the matching files are parsed (with their includes). A group expands
to its member tasks, as `lm-eval run --tasks GROUP` does.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from dsparity.errors import DsparityError
from dsparity.evals.tasks.files import read_config


def lm_eval_tasks_dir() -> Path | None:
    """lm-eval's installed task folder, found without importing lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    return folder if folder.is_dir() else None


def _top_level(text: str, key: str, name: str) -> bool:
    return re.search(rf"^{key}\s*:\s*['\"]?{re.escape(name)}['\"]?\s*(#.*)?$", text, re.MULTILINE) is not None


def _candidates(root: Path, names: set[str]) -> dict[Path, str]:
    out = {}
    for path in sorted(root.rglob("*.yaml")):
        if "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if any(n in text for n in names):
            out[path] = text
    return out


def find(names: list[str]) -> dict[str, list[Path]]:
    """name -> the YAML files of its tasks (one for a task, the members for a group), for each
    name lm-eval's registry holds; names it does not hold are left out."""
    root = lm_eval_tasks_dir()
    if root is None or not names:
        return {}
    texts = _candidates(root, set(names))
    found: dict[str, list[Path]] = {}
    for name in names:
        paths = _resolve(name, texts, root, depth=0)
        if paths:
            found[name] = paths
    return found


def _resolve(name: str, texts: dict[Path, str], root: Path, depth: int) -> list[Path]:
    if depth > 8:
        raise DsparityError(f"lm-eval task {name}", "group", "groups nest more than 8 deep",
                            "name the tasks themselves")
    for path, text in texts.items():
        if name in text and _top_level(text, "task", name) and "class" not in _keys(text):
            return [path]
    for path, text in texts.items():
        if name in text and _top_level(text, "group", name):
            config = read_config(path)
            members = config.get("task") or []
            members = members if isinstance(members, list) else [members]
            for i, member in enumerate(members):
                if not isinstance(member, str):
                    raise DsparityError(str(path), f"task[{i}]", "an inline task in a group is not "
                                        "supported by dsparity", "name each member task by its name")
            member_texts = _candidates(root, set(members))
            out: list[Path] = []
            for i, member in enumerate(members):
                more = _resolve(member, member_texts, root, depth + 1)
                if not more:
                    raise DsparityError(str(path), f"task[{i}]", f"member {member!r} is not an "
                                        "lm-eval task dsparity can find", "name the tasks themselves")
                out.extend(more)
            return out
    return []


def _keys(text: str) -> set[str]:
    return set(re.findall(r"^([A-Za-z_]+)\s*:", text, re.MULTILINE))
