"""The report's reproduce line is the command that made it: parsed back through `dsparity compare`'s
own parser it gives every setting again, and it shows no secret."""

import re
import shlex
from pathlib import Path

import typer.main
from loopback import ServerThread, scripted_app
from task_folders import make_suite
from tasks_helpers import cli

from dsparity.cli import app
from dsparity.evals.report import reproduce_command

# Flags the line leaves to whoever runs it again: where results and reports go, the CI gate, and
# whether to start a new run or resume the stored one.
NOT_REPRODUCED = {"db", "out_dir", "fail_on", "fresh"}


def compare_params(args: list[str]) -> dict:
    """What `dsparity compare ARGS` would run with, from its own parser (callbacks included)."""
    command = typer.main.get_command(app).commands["compare"]
    return command.make_context("compare", list(args)).params


def test_the_reproduce_line_parses_back_to_the_same_settings(tmp_path):
    folder = make_suite(tmp_path / "tasks" / "bulk", 8)
    prices = tmp_path / "prices.yaml"
    prices.write_text("scripted: {input_cache_hit: 0.1, input_cache_miss: 1.0, output: 2.0, currency: USD, "
                      "as_of: 2026-01-01}\n")
    with ServerThread(scripted_app(lambda p: "42")) as cand, \
            ServerThread(scripted_app(lambda p: "42")) as base:
        args = ["--candidate", f"openai:scripted@{cand.base_url}?label=cand&price=scripted",
                "--baseline", f"openai:scripted@{base.base_url}?label=base", "--tasks", "bulk",
                "--include", str(folder.parent), "--size", "3", "--seed", "7", "--limit", "6",
                "--margin", "0.1", "--repeats", "2", "--budget", "5", "--prices", str(prices),
                "--temperature", "0.5", "--top-p", "0.9", "--no-cache",
                "--judge", f"openai:scripted@{base.base_url}?label=judge"]
        code, out, err = cli("compare", *args, "--db", f"sqlite:///{tmp_path / 'r.db'}",
                             "--out", str(tmp_path / "reports"))
    assert code == 0, err
    md = next((tmp_path / "reports").glob("*.md")).read_text()
    line = re.search(r"reproduce: `(.+)`", md).group(1)
    assert "--suite" not in line and "--tasks bulk" in line
    words = shlex.split(line)
    assert words[:2] == ["dsparity", "compare"]
    again, asked = compare_params(words[2:]), compare_params(args)
    defaults = compare_params([])
    # Every flag compare takes is set above to something other than its default (a new flag
    # fails here until this test sets it and the reproduce line carries it).
    assert {k for k in asked if asked[k] != defaults[k]} == set(asked) - NOT_REPRODUCED - {"suite"}
    for name in set(asked) - NOT_REPRODUCED:
        want, got = asked[name], again[name]
        if name in ("include", "prices"):  # written absolute, so the line works from anywhere
            want = [Path(p).resolve() for p in want] if name == "include" else Path(want).resolve()
        assert got == want, (name, got, want)


def test_an_older_run_and_the_default_baseline_and_secrets(tmp_path):
    spec = "openai:m@https://user:s3cret-Passw0rd@llm.example/v1?label=cand"
    comparison = {"candidate": {"model_spec": spec, "settings": {"suite": "smoke", "limit": None, "seed": 0}},
                  "baseline": {"label": "dsparity-serve/smollm2-135m-instruct", "model_spec": "openai:x@h"},
                  "margin": 0.05, "margins_from_tasks": True}
    line = reproduce_command(comparison)  # recorded before runs kept their command: the suite
    assert "s3cret-Passw0rd" not in line and "user:***@llm.example" in line
    assert shlex.split(line)[4:] == ["--suite", "smoke"]  # the default baseline is served by compare
    params = compare_params(shlex.split(line)[2:])
    assert params["suite"] == "smoke" and params["baseline"] is None and params["margin"] is None
