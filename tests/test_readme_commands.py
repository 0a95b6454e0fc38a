"""Every command in the README runs as written (issue #20).

The commands are read from README.md and tasks/README.md when the tests run (readme_commands.py).
Each `dsparity` command is parsed by the real command tree: its subcommands and options exist,
values convert and pass their checks, model specs and store URLs parse, suites and tasks exist,
job files load. The cheap ones then run for real against a temporary store holding two runs of a
scripted endpoint (so `grade RUN` and `report CANDIDATE_RUN BASELINE_RUN` have runs to work on).
lm-eval commands (dsparity's wrapper and lm-eval's own) are parsed by lm-eval's CLI, their tasks
looked up and dsparity's `--model_args` checked; the dsparity-local one runs with `--limit 2` and
lm-eval's default `--device` on a tiny model. Flags named in prose exist on the tool named.
Other programs are not run, but every scripts/, bench/ and .ci/ path the docs name must exist
with the arguments given to it. Under `-m slow` the README's run of the embedded model and its
dsparity-local lm-eval command run exactly as written (`--limit 2` added).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import chdir, redirect_stdout
from functools import cache
from pathlib import Path

import pytest
from readme_commands import (
    DOCS,
    REPO,
    Command,
    doc_commands,
    fenced_blocks,
    prose_lines,
    split_commands,
    tool_paths,
    variants,
)
from tasks_helpers import fast_env, real_tokenizer_dir

COMMANDS = doc_commands()
DSPARITY = [c for c in COMMANDS if c.tool == "dsparity"]
WRAPPER = re.compile(r"python -m dsparity\.[\w.]*lm_eval_cli")  # dsparity's wrapper of lm-eval's CLI
LM_EVAL = [c for c in COMMANDS if WRAPPER.fullmatch(c.tool) or c.tool in ("lm_eval", "lm-eval")]
LOCAL_LM_EVAL = [c for c in LM_EVAL if WRAPPER.fullmatch(c.tool) and "dsparity-local" in c.words]
TOOLS = ("scripts/", "bench/", ".ci/")

# Programs the docs show that these tests do not run, and why.
NOT_RUN = {
    "python -m pytest": "the test command itself",
    "export": "sets a variable for the commands after it",
    "cd": "moves to a deployment folder",
    "vllm": "serves DeepSeek-V3.2-Exp on 8 GPUs",
    "python -m sglang.launch_server": "serves DeepSeek-V3.2-Exp on 8 GPUs",
    "hf": "downloads from the Hugging Face hub",
    "modelscope": "downloads from ModelScope",
    "pip": "installs packages",
}
# Placeholders in the docs -> plausible values for parsing. Run ids are filled in from the
# temporary store when a command runs for real.
PLACEHOLDERS = {
    "SPEC": "local:smollm2-135m-instruct",
    "RUN": "{run}",
    "CANDIDATE_RUN": "{run}",
    "BASELINE_RUN": "{baseline_run}",
    "FILE.yaml": "prices.yaml",
    "PATH": "samples.out",
    "[NAME]": "nightly-api",  # `jobs history [NAME]`: the README's own job
    "NAME": "smoke_arithmetic",  # `tasks show NAME`
    "/jobs": "jobs",  # the CronJob's mounted job folder: the README's job folder here
}
PLACEHOLDER = re.compile(r"^(\[.*\]|\.\.\.|[A-Z][A-Z_]*(\.[a-z]+)?)$")
# Commands whose --model is a model spec (warmup, convert and cost-curve take a name or folder).
SPEC_MODEL = {("run",), ("serve",)}
# dsparity commands cheap enough to run for real here. The rest are parsed only: generation
# (run, compare), servers (serve, dashboard), jobs that call their endpoints, warm-up, conversion,
# cost curves, and `tasks validate`, which builds every task (~20 s of CPU; test_tasks_malformed
# runs it over the built-in folders and expects no problem in them).
RUN_HERE = {("tasks", "list"), ("tasks", "show"), ("runs",), ("grade",), ("report",), ("export",),
            ("jobs", "history")}
# Other programs whose flags the prose names in code spans: not checked.
OTHER_PROGRAMS = {"pip", "modelscope", "hf", "vllm"}


def _id(command: Command) -> str:
    return f"{command.where} {' '.join(command.words[1:4])}"


def substituted(words: tuple[str, ...], command: Command, **runs: str) -> list[str]:
    """`words` after the program with placeholders replaced."""
    out = []
    for word in words[1:]:
        if word in PLACEHOLDERS:
            word = PLACEHOLDERS[word].format(run=runs.get("run", "0123456789ab"),
                                             baseline_run=runs.get("baseline_run", "ba5e11e0ba5e"))
        elif PLACEHOLDER.match(word) and not word.isdigit():
            pytest.fail(f"{command.where}: `{command.text}`: placeholder {word!r} has no value in "
                        "PLACEHOLDERS (add one, or write a runnable value)")
        out.append(word)
    return out


def parse_dsparity(args: list[str]):
    """Parse `dsparity ARGS` as the CLI does, down to the leaf command; return its context."""
    import typer.main

    from dsparity.cli import app

    command = typer.main.get_command(app)
    ctx = command.make_context("dsparity", list(args))
    while hasattr(command, "commands"):
        name, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def chain(ctx) -> tuple[str, ...]:
    return tuple(ctx.command_path.split()[1:])


def check_values(ctx, env: dict[str, str]) -> None:
    """What the options hold: model specs, store URLs, suites and tasks, job files."""
    from sqlalchemy.engine import make_url

    from dsparity.cli.base import split_list
    from dsparity.evals import jobs, tasks
    from dsparity.evals.specs import parse_spec

    params = ctx.params
    spec_keys = ("candidate", "baseline", "judge") + (("model",) if chain(ctx) in SPEC_MODEL else ())
    for key in spec_keys:
        value = params.get(key)
        for spec in [value] if isinstance(value, str) else value or []:
            parse_spec(spec, source=f"--{key}")
    for url in (params.get("db"), env.get("DSPARITY_DB")):
        if url:
            make_url(url)
    names = split_list(params.get("tasks")) or ([params["name"]] if chain(ctx) == ("tasks", "show")
                                                else None)
    if params.get("suite") or names:
        tasks.select(*tasks.scan([tasks.BUILTIN_TASKS]), suites=split_list(params.get("suite")),
                     names=names)
    if params.get("file"):
        jobs.load_job(params["file"])
    if params.get("folder"):
        found, problems = jobs.load_dir(params["folder"])
        assert found and not problems, [p.line() for p in problems]


def lm_eval_args(command: Command) -> list[str]:
    """The arguments lm-eval's CLI gets (after `python -m MODULE` or `lm_eval`)."""
    return list(command.words[3:] if WRAPPER.fullmatch(command.tool) else command.words[1:])


def parse_lm_eval(argv: list[str], monkeypatch):
    from lm_eval._cli.harness import HarnessCLI

    import dsparity.evals.harness.lm_eval_models  # noqa: F401  (registers dsparity's models)

    monkeypatch.setattr(sys, "argv", ["lm-eval", *argv])
    return HarnessCLI().parse_args()


@cache
def dsparity_flags() -> frozenset[str]:
    """Every option name of every dsparity command."""
    import typer.main

    from dsparity.cli import app

    def walk(command):
        subs = getattr(command, "commands", None)
        if subs is None:
            return {o for p in command.params for o in [*getattr(p, "opts", []),
                                                        *getattr(p, "secondary_opts", [])]}
        return set().union(*(walk(s) for s in subs.values()))

    return frozenset(walk(typer.main.get_command(app)))


@cache
def lm_eval_help() -> str:
    """`lm-eval run --help`, in-process."""
    from lm_eval._cli.harness import HarnessCLI

    buffer, argv = io.StringIO(), sys.argv
    sys.argv = ["lm-eval", "run", "--help"]
    try:
        with redirect_stdout(buffer), pytest.raises(SystemExit):
            HarnessCLI().parse_args()
    finally:
        sys.argv = argv
    return buffer.getvalue()


def tool_text(name: str) -> str | None:
    """The text of a repository tool named by path or by file name (`mla.py`)."""
    for root in (REPO, REPO / "bench", REPO / "scripts"):
        if (root / name).is_file():
            return (root / name).read_text()
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A current folder holding the README's job files (`# jobs/NAME.yaml` blocks), so that job
    commands name real files, and taking what commands write (reports, exports)."""
    root = tmp_path_factory.mktemp("readme-cwd")
    for lang, _, lines in fenced_blocks(REPO / "README.md"):
        head = re.match(r"#\s*(jobs/[\w.-]+\.ya?ml)\s*$", lines[0].strip()) if lines else None
        if lang == "yaml" and head:
            path = root / head.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory, workdir) -> dict[str, str]:
    """Environment of a temporary store holding two smoke runs (a scripted loopback endpoint under
    two labels), and their ids; generated tasks small, with the embedded model's tokenizer where
    it is cached."""
    from loopback import ServerThread, scripted_app
    from tiny_models import byte_tokenizer
    from typer.testing import CliRunner

    from dsparity.cli import app
    from dsparity.evals.storage.store import Store

    tmp = tmp_path_factory.mktemp("readme-store")
    tokenizer = real_tokenizer_dir()
    if tokenizer is None:
        tokenizer = tmp / "tokenizer"
        byte_tokenizer().save_pretrained(tokenizer)
        (tokenizer / "config.json").write_text("{}")  # DSPARITY_TOKENIZER wants a model folder
    env = {"DSPARITY_DB": f"sqlite:///{tmp / 'store.db'}", **fast_env(tmp, tokenizer)}
    with ServerThread(scripted_app()) as server, chdir(workdir):
        for label in ("candidate", "baseline"):
            spec = f"openai:scripted@{server.base_url}?label={label}"
            done = CliRunner().invoke(app, ["run", "--model", spec, "--suite", "smoke", "--limit", "2"],
                                      env=env)
            assert done.exit_code == 0, done.output
    runs = {r["label"]: r["id"] for r in Store(env["DSPARITY_DB"]).list_runs()}
    return {**env, "run": runs["candidate"], "baseline_run": runs["baseline"]}


def test_the_docs_show_the_commands_this_test_reads():
    """The reader finds the README's commands (an empty list would pass everything below)."""
    texts = [c.text for c in DSPARITY]
    assert len(texts) >= 10
    assert "dsparity tasks list" in texts
    assert LOCAL_LM_EVAL
    variables: dict[str, str] = {}
    line = "A=1 dsparity jobs run-due jobs/ --quiet >> log 2>&1 && M=local:x && ls $M &"
    assert split_commands("x:1", line, variables=variables) == [
        Command("x:1", ("dsparity", "jobs", "run-due", "jobs/", "--quiet"), (("A", "1"),)),
        Command("x:1", ("ls", "$M"))]  # assigned on the same line: not yet expanded, as in a shell
    assert split_commands("x:2", 'run "$M?k=1"', variables=variables)[0].words == ("run", "local:x?k=1")
    assert variants(("export", "RUN", "[--format", "a|b]")) == [
        ("export", "RUN"), ("export", "RUN", "--format", "a"), ("export", "RUN", "--format", "b")]


def test_every_command_is_checked_or_has_a_reason():
    unknown = [f"{c.where}: `{c.text}`" for c in COMMANDS
               if c.tool not in ("dsparity", *NOT_RUN) and c not in LM_EVAL
               and not c.tool.startswith(TOOLS)]
    assert not unknown, f"commands this test neither checks nor lists in NOT_RUN: {unknown}"


def test_repository_tools_named_in_the_docs_exist_with_their_arguments():
    missing = [f"{where}: {path}" for where, path in tool_paths() if not (REPO / path).is_file()]
    assert not missing, f"paths the docs name that do not exist: {missing}"
    for command in COMMANDS:
        if command.tool.startswith(TOOLS):
            text = (REPO / command.tool).read_text()
            for word in command.words[1:]:
                assert word in text, f"{command.where}: `{command.text}`: {command.tool} knows no {word!r}"


@pytest.mark.parametrize("command", DSPARITY, ids=_id)
def test_dsparity_command(command: Command, workdir, request):
    """Parsed by the real CLI (each form of a usage template); run for real when cheap (exit code
    0 against a temporary store)."""
    forms = variants(command.words)
    wants_help = "--help" in command.words  # parsing it prints the help and exits: it runs instead
    for form in [] if wants_help else forms:
        with chdir(workdir):
            try:
                ctx = parse_dsparity(substituted(form, command))
                check_values(ctx, dict(command.env))
            except Exception as exc:  # click's usage errors and dsparity's one-line errors alike
                if command.mention and type(exc).__name__ == "MissingParameter":
                    continue  # prose naming a command (`dsparity convert`), not a whole command line
                message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
                pytest.fail(f"{command.where}: `{' '.join(form)}` does not parse: {message}")
    if command.mention or len(forms) > 1 or not (wants_help or chain(ctx) in RUN_HERE):
        return
    from typer.testing import CliRunner

    from dsparity.cli import app

    env = {} if wants_help else request.getfixturevalue("store")
    with chdir(workdir):
        done = CliRunner().invoke(app, substituted(command.words, command, **env), env=env)
    assert done.exit_code == 0, f"{command.where}: `{command.text}`:\n{done.output}"
    assert done.output.strip()


@pytest.mark.parametrize("command", LM_EVAL, ids=_id)
def test_lm_eval_command_parses(command: Command, monkeypatch):
    """lm-eval's own parser takes the flags; a dsparity model takes the model args; the tasks
    exist where the command looks for them."""
    from lm_eval.utils import simple_parse_args_string

    from dsparity.evals import tasks
    from dsparity.evals.harness.lm_eval_models import model_args_spec
    from dsparity.evals.tasks import registry

    args = parse_lm_eval(lm_eval_args(command), monkeypatch)
    if args.model.startswith("dsparity-"):
        model_args = args.model_args  # lm-eval parses key=value lists into a dict itself
        if isinstance(model_args, str):
            model_args = simple_parse_args_string(model_args)
        model_args_spec(args.model.removeprefix("dsparity-"), **model_args)
    names = args.tasks.split(",") if isinstance(args.tasks, str) else list(args.tasks)
    if args.include_path:
        held = tasks.scan([REPO / args.include_path])[0]
        names = [n for n in names if n not in held]
    missing = set(names) - set(registry.find(names))
    assert not missing, f"{command.where}: `{command.text}`: no task {sorted(missing)}"


def test_flags_named_in_prose_exist():
    """`--flag` in a code span of the prose: on a dsparity command, lm-eval's `run`, or the
    repository tool the span names (`bench/attention.py --crossover`, `mla.py --quick`)."""
    wrong = []
    for path in DOCS:
        for number, line in prose_lines(path):
            for span in re.findall(r"`([^`]+)`", line):
                words = span.replace("[", " ").split()
                if not words or words[0] == "dsparity" or words[0] in OTHER_PROGRAMS:
                    continue  # dsparity's mentions are parsed in full above
                flags = [w.split("=")[0].rstrip("]") for w in words if re.match(r"--[a-z]", w)]
                wrong += [f"{path.relative_to(REPO)}:{number}: {flag} in `{span}`" for flag in flags
                          if not known_flag(flag, words)]
    assert not wrong, f"flags the prose names that the tool it names does not take: {wrong}"


def known_flag(flag: str, words: list[str]) -> bool:
    def named(text: str | None) -> bool:
        return bool(text) and re.search(rf"{re.escape(flag)}(?![\w-])", text) is not None

    script = next((w for w in words[:2] if w.endswith((".py", ".sh"))), None)
    if script:
        return named(tool_text(script))
    if words[0] in ("lm_eval", "lm-eval"):
        return named(lm_eval_help())
    return (flag in dsparity_flags() or named(lm_eval_help())
            or any(named(tool_text(t)) for t in repository_tools()))


@cache
def repository_tools() -> tuple[str, ...]:
    return tuple(str(p.relative_to(REPO)) for folder in ("bench", "scripts")
                 for p in sorted((REPO / folder).iterdir()) if p.is_file())


def lm_eval_words(command: Command, **model_args: str) -> list[str]:
    """lm-eval's arguments, `--limit 2` added, `--model_args` keys replaced."""
    words = lm_eval_args(command)
    if model_args:
        at = words.index("--model_args") + 1
        args = dict(pair.split("=", 1) for pair in words[at].split(","))
        words[at] = ",".join(f"{k}={v}" for k, v in {**args, **model_args}.items())
    return words + ([] if "--limit" in words else ["--limit", "2"])


def run_lm_eval(command: Command, words: list[str], env: dict[str, str]) -> str:
    """Run it from the repository root (`--include_path tasks`); its stderr; the table checked."""
    done = subprocess.run([sys.executable, "-m", command.words[2], *words], cwd=REPO,
                          capture_output=True, text=True, timeout=1700, env={**os.environ, **env})
    assert done.returncode == 0, f"{command.where}: `{command.text}`:\n{done.stderr[-3000:]}"
    task = words[words.index("--tasks") + 1]
    assert re.search(rf"\|\s*{re.escape(task)}\s*\|", done.stdout), done.stdout[-2000:]
    return done.stderr


@pytest.mark.parametrize("command", LOCAL_LM_EVAL, ids=_id)
def test_readme_lm_eval_command_runs_on_a_tiny_model(command: Command, tiny_model_dir, tmp_path):
    """The README's dsparity-local command as written but for the model (a tiny one, window
    attention: no warm-up), `--limit 2` added. lm-eval hands the model its default
    `device=cuda:0`; without that device dsparity-local says so and runs on the CPU."""
    import torch

    model_args = {"model": str(tiny_model_dir)}
    if "attention=dsa" in " ".join(command.words):
        model_args["attention"] = "window"  # DSA's selection path and kernels, no indexer to train
    err = run_lm_eval(command, lm_eval_words(command, **model_args),
                      {"DSPARITY_CACHE": str(tmp_path / "cache")})
    if not torch.cuda.is_available():
        assert "device 'cuda:0' asked for, but torch sees no CUDA devices; running on cpu" in err


LOCAL_RUNS = [c for c in DSPARITY if c.words[1:2] == ("run",) and not c.mention
              and any(w.startswith("local:smollm2") for w in c.words)]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("command", LOCAL_RUNS, ids=_id)
def test_readme_local_run_runs(command: Command, workdir, tmp_path):
    """The README's run of the embedded model, as written, into a temporary store."""
    from typer.testing import CliRunner

    from dsparity.cli import app

    env = {"DSPARITY_DB": f"sqlite:///{tmp_path / 'store.db'}", "DSPARITY_TASK_CACHE": str(tmp_path)}
    with chdir(workdir):
        done = CliRunner().invoke(app, substituted(command.words, command), env=env)
    assert done.exit_code == 0, f"{command.where}: `{command.text}`:\n{done.output}"
    assert "(created)" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("command", LOCAL_LM_EVAL, ids=_id)
def test_readme_lm_eval_local_command_runs(command: Command, tmp_path):
    """As written plus `--limit 2`, with lm-eval's default device: the embedded model and its
    warmed-up indexers (the first use warms them up: 10-25 minutes on 2 busy cores)."""
    run_lm_eval(command, lm_eval_words(command), {"DSPARITY_TASK_CACHE": str(tmp_path)})


def test_the_parser_refuses_what_a_stale_readme_would_say(workdir):
    """The checks above fail on a renamed flag, a missing subcommand, a bad value or spec key."""
    from dsparity.evals.specs import parse_spec

    with chdir(workdir):
        ctx = parse_dsparity(["report", "a", "b", "--margin", "0.03"])
        assert chain(ctx) == ("report",) and ctx.params["margin"] == 0.03
        for bad in (["report", "a", "b", "--margn", "0.03"], ["reprot", "a", "b"],
                    ["report", "a", "b", "--margin", "five"], ["runs", "--dbb", "x"]):
            with pytest.raises(Exception, match="(?i)no such|valid"):
                parse_dsparity(bad)
        with pytest.raises(Exception, match="unknown option"):
            parse_spec("openai:m@http://127.0.0.1:8000/v1?concurency=32")
        ctx = parse_dsparity(["run", "--model", "local:x", "--suite", "smoke,nope"])
        with pytest.raises(Exception, match="no such suite"):
            check_values(ctx, {})
    assert "--margin" in dsparity_flags() and "--margn" not in dsparity_flags()
