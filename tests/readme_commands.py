"""The shell commands the docs show, read from the Markdown at test time.

Sources: ```bash blocks (backslash continuations joined, comment lines skipped), `dsparity ...`
lines in unlabelled blocks (tasks/README.md lists its commands that way), the command of each
cron line, systemd `ExecStart=` lines and a Kubernetes `args: [...]` list; inline code spans that
start with `dsparity ` are kept as mentions (parsed, never run). `a && b`, `;`, `||`, `&` and
pipes split a line into commands; redirections are dropped; leading `NAME=value` words are the
command's environment, and a line of assignments alone (or `export NAME=value`) sets variables
that later lines of the same block use as `$NAME`.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", REPO / "tasks" / "README.md")

SHELL = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECT = re.compile(r"^\d*(>>?|<)(&\d+)?$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Paths into the repository's own tools that the docs name; each must exist.
TOOL_PATH = re.compile(r"(?<![\w/.-])((?:scripts|bench|\.ci)/[\w.-]+)")


@dataclass(frozen=True)
class Command:
    where: str  # "README.md:37"
    words: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    mention: bool = False  # from an inline code span in prose: parsed, never run

    @property
    def text(self) -> str:
        return shlex.join(self.words)

    @property
    def tool(self) -> str:
        """What runs: `dsparity`, `python -m MODULE`, a repository path, or a program's name."""
        first = self.words[0]
        name = Path(first).name
        if name == "dsparity":
            return "dsparity"
        if name.startswith("python") and len(self.words) > 2 and self.words[1] == "-m":
            return f"python -m {self.words[2]}"
        if TOOL_PATH.fullmatch(first):
            return first
        return name


def fenced_blocks(path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(language, line number of the first content line, lines) per fenced block."""
    block: list[str] | None = None
    lang, first = "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if block is not None and stripped.startswith("```"):
            yield lang, first, block
            block = None
        elif block is None and stripped.startswith("```"):
            block, lang, first = [], stripped[3:].strip().lower(), number + 1
        elif block is not None:
            block.append(line)


def prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines outside fenced blocks."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside:
            yield number, line


def block_lines(lang: str, first: int, lines: list[str]) -> Iterator[tuple[int, str]]:
    """(line number, shell text) of each command line a block holds, by the block's language."""
    if lang in SHELL:
        yield from _joined(first, lines)
        return
    for number, line in enumerate(lines, first):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if lang == "cron":
            yield number, stripped.split(None, 5)[5]  # after minute hour day month weekday
        elif lang == "ini" and stripped.startswith("ExecStart="):
            yield number, stripped.removeprefix("ExecStart=")
        elif lang == "yaml" and (m := re.match(r"args:\s*\[(.*)\]\s*$", stripped)):
            yield number, " ".join(shlex.quote(w.strip()) for w in m.group(1).split(","))
        elif lang == "" and stripped.startswith("dsparity "):
            yield number, stripped


def _joined(first: int, lines: list[str]) -> Iterator[tuple[int, str]]:
    pending, start = "", first
    for number, line in enumerate(lines, first):
        if not pending:
            start = number
            if not line.strip() or line.strip().startswith("#"):
                continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def split_commands(where: str, text: str, *, mention: bool = False,
                   variables: dict[str, str] | None = None) -> list[Command]:
    """One shell line -> its simple commands; `variables` are read and set as a shell would."""
    variables = {} if variables is None else variables
    text = re.sub(r"\$\([^()]*\)", "SUBSTITUTED", text)  # $(openssl rand ...) is one word
    text = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)
    commands, words, env = [], [], []

    def done():
        if not words:
            variables.update(env)  # `M=value` alone: a shell variable
        else:
            commands.append(Command(where, tuple(words), tuple(env), mention))
            if words[0] == "export":
                variables.update(w.split("=", 1) for w in words[1:] if ASSIGNMENT.match(w))

    tokens = iter(shlex.split(text, comments=True))
    for token in tokens:
        if token in SEPARATORS:
            done()
            words, env = [], []
        elif REDIRECT.match(token):
            if "&" not in token:
                next(tokens, None)  # the file it redirects to
        elif not words and ASSIGNMENT.match(token):
            name, _, value = token.partition("=")
            env.append((name, value))
        else:
            words.append(token)
    done()
    return commands


def variants(words: tuple[str, ...]) -> list[tuple[str, ...]]:
    """A usage template's concrete forms: `[--opt a|b]` groups left out, then each alternative
    of each group added to the rest (`export RUN [--format jsonl|parquet]` gives three)."""
    base: list[str] = []
    groups: list[list[str]] = []
    for word in words:
        if word.startswith("[-") or (groups and not groups[-1][-1].endswith("]")):
            if word.startswith("[-"):
                groups.append([])
            groups[-1].append(word)
        else:
            base.append(word)
    found = [tuple(base)]
    for group in groups:
        text = " ".join(group)[1:-1]  # without the brackets
        choices = [w.split("|") for w in text.split()]
        for alternative in itertools.product(*choices):
            found.append((*base, *alternative))
    return found


def doc_commands(paths=DOCS) -> list[Command]:
    """Every command the docs show, in order; inline `dsparity ...` mentions last."""
    found: list[Command] = []
    mentions: list[Command] = []
    for path in paths:
        if not path.exists():
            continue
        name = path.relative_to(REPO).as_posix()
        for lang, first, lines in fenced_blocks(path):
            variables: dict[str, str] = {}
            for number, text in block_lines(lang, first, lines):
                found += split_commands(f"{name}:{number}", text, variables=variables)
        for number, line in prose_lines(path):
            for span in re.findall(r"`([^`]+)`", line):
                if span.startswith("dsparity "):
                    mentions += split_commands(f"{name}:{number}", span, mention=True)
    return found + mentions


def tool_paths(paths=DOCS) -> list[tuple[str, str]]:
    """(where, path) for each scripts/, bench/ or .ci/ path named in a block or a code span."""
    named = []
    for path in paths:
        if not path.exists():
            continue
        name = path.relative_to(REPO).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            named += [(f"{name}:{number}", p.rstrip(".")) for p in TOOL_PATH.findall(line)]
    return named
