"""lm-eval task YAML read as lm-eval reads it, without importing lm-eval or the tasks' code.

`include:` is resolved like lm-eval 0.4.13's `lm_eval/tasks/_yaml_loader.py::load_yaml`: a path
(or a list of them) relative to the including file, each included file read recursively, their
keys merged in order, the including file's own keys last (local keys win), `task_list` not
inherited, and one set of seen files per top-level read (lm-eval reports a file reached twice as
an include cycle, so dsparity does too). `!function name` is kept as the string lm-eval's
index keeps (`<folder of the file that says it>/name`), so nothing is imported to validate a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dsparity.errors import DsparityError


class FunctionRef(str):
    """A `!function` reference: the path string lm-eval's index keeps, marked as code."""


def _loader(base: Path) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function",
                           lambda loader, node: FunctionRef(base / loader.construct_scalar(node)))
    return Loader


def read_one(path: Path) -> dict[str, Any]:
    """One YAML file, includes unresolved; a DsparityError naming the line if it is not YAML."""
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader(path.resolve().parent))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise DsparityError(str(path), where, f"not valid YAML ({getattr(exc, 'problem', exc)})",
                            "fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DsparityError(str(path), "", f"cannot be read ({type(exc).__name__})",
                            "give a readable UTF-8 YAML file") from None
    if not isinstance(config, dict):
        raise DsparityError(str(path), "", "a task file must be a YAML mapping",
                            "see tasks/smoke/smoke_arithmetic.yaml for the shape")
    return config


def read_config(path: Path, *, _seen: set[Path] | None = None) -> dict[str, Any]:
    """The task config with every `include:` merged in (lm-eval's order and precedence)."""
    path = path.expanduser().resolve()
    seen = set() if _seen is None else _seen
    seen.add(path)
    config = read_one(path)
    if "include" not in config:
        return config
    includes = config.pop("include")
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str) or not inc:
            raise DsparityError(str(path), "include", f"{inc!r} is not a file name",
                                "write include: <file> (relative to this file) or a list of them")
        target = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if target.resolve() in seen:
            raise DsparityError(str(path), "include", f"include cycle at {inc!r} (lm-eval reads each "
                                "file once per task)", "include each template once")
        if not target.is_file():
            raise DsparityError(str(path), "include", f"no such file {inc!r}",
                                f"put it at {target} (includes are relative to the including file)")
        try:
            included = read_config(target, _seen=seen)
        except DsparityError as exc:  # name the task file too: that is the file a user opened
            raise DsparityError(str(path), f"include {inc!r}", exc.line(), exc.fix) from None
        included.pop("task_list", None)
        merged.update(included)
    merged.update(config)
    return merged


def included_files(path: Path) -> set[Path]:
    """The files a YAML file includes (directly), resolved; unreadable files include nothing."""
    try:
        config = read_one(path)
    except DsparityError:
        return set()
    includes = config.get("include")
    out = set()
    for inc in includes if isinstance(includes, list) else [includes] if includes else []:
        if isinstance(inc, str) and inc:
            out.add((Path(inc) if Path(inc).is_absolute() else path.parent / inc).resolve())
    return out


def is_function(value: Any) -> bool:
    return isinstance(value, FunctionRef)


def function_folder(value: Any) -> Path | None:
    """The folder a `!function` reference was written in (None for anything else)."""
    return Path(value).parent if isinstance(value, FunctionRef) else None
