"""Bad input, 30+ kinds: each gets one line naming the source and the fix, exits 2, and leaves
the results store exactly as it was."""

import sqlite3
import sys
from pathlib import Path

import pytest
from task_folders import TASK_YAML, write_task

from dsparity import cli
from dsparity.evals.storage.store import Store

TASK_FILES = {
    "bad_yaml": ("task: [unclosed\n", "not valid YAML"),
    "missing_field": (TASK_YAML.replace('doc_to_text: "{{{{question}}}}"\n', ""),
                      "doc_to_text: missing required field"),
    "unknown_grader": (TASK_YAML.replace("grader: {grader}", "grader: vibes"), "unknown grader"),
    "loglikelihood": (TASK_YAML.replace("generate_until", "loglikelihood"), "does not fit output_type"),
    "output_type": (TASK_YAML.replace("generate_until", "perplexity"), "not an lm-eval output type"),
    "settings_list": (TASK_YAML.replace("  dsparity:\n    suite: {suite}\n    grader: {grader}\n",
                                        "  dsparity: [1, 2]\n"), "must be a mapping"),
    "not_mapping": ("- just\n- a list\n", "must be a YAML mapping"),
}
DATA_FILES = {
    "broken_json": ('{"question": "q", "answer": "a"}\n{oops\n', "data.jsonl:2: not valid JSON"),
    "not_object": ('["q", "a"]\n', "not a JSON object"),
}


def _cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    cases: list[tuple[list[str], str]] = [
        # model specs
        (["run", "--model", "smollm2"], "must start with `local:` or `openai:`"),
        (["run", "--model", "local:"], "no model after"),
        (["run", "--model", "local:x?topk=many"], "topk"),
        (["run", "--model", "local:x?attention=sparse"], "attention"),
        (["run", "--model", "local:x?colour=red"], "unknown option"),
        (["run", "--model", "local:x?dtype=float8"], "dtype"),
        (["run", "--model", "openai:deepseek-chat"], "MODEL@BASE_URL"),
        (["run", "--model", "openai:m@ftp://host/v1"], "not an http(s) URL"),
        (["run", "--model", "openai:m@https://api.example.invalid/v1?api_key_env=DSPARITY_NO_SUCH_VAR"],
         "DSPARITY_NO_SUCH_VAR is not set"),
        (["run", "--model", "openai:m@http://127.0.0.1:9/v1?retries=-1"], "retries"),
        (["run", "--model", "local:/no/such/folder"], "not a built-in model"),
        (["run", "--model", "local:/no/such/model.gguf"], "no such GGUF file"),
        (["compare", "--candidate", "local:x?topk=0"], "--candidate"),
        (["compare", "--baseline", "openai:m"], "--baseline"),
        # CLI flags
        (["run", "--model", "local:x", "--limit", "abc"], "--limit"),
        (["run", "--model", "local:x", "--limit", "0"], "--limit"),
        (["run", "--model", "local:x", "--repeats", "0"], "--repeats"),
        (["compare", "--margin", "2"], "--margin"),
        (["compare", "--margin", "0"], "--margin"),
        (["compare", "--margin", "nan"], "--margin"),
        (["report", "feedface", "deadbeef", "--margin", "-0.1"], "--margin"),  # before the runs are read
        (["compare", "--budget", "-1"], "--budget"),
        (["run", "--model"], "--model"),
        (["frobnicate"], "No such command"),
        (["run", "--model", "local:x", "--suite", "nosuch"], "no such suite"),
        (["run", "--model", "local:x", "--tasks", "nosuch_task"], "no such task"),
        (["run", "--model", "local:x", "--include", str(tmp_path / "nowhere")], "no such task folder"),
        # stores and prices
        (["runs", "--db", "mysql+nodriver://x/y"], "--db"),
        (["report", "feedface", "deadbeef"], "no such run"),
        (["export", "feedface"], "no such run"),
        (["export", "feedface", "--format", "csv"], "--format"),
    ]
    prices_bad = tmp_path / "prices.yaml"
    prices_bad.write_text("m: {input: 1}\n")
    cases.append((["run", "--model", "openai:m@http://127.0.0.1:9/v1", "--prices", str(prices_bad)],
                  "bad price row"))
    prices_broken = tmp_path / "prices2.yaml"
    prices_broken.write_text("m: [unclosed\n")
    cases.append((["run", "--model", "openai:m@http://127.0.0.1:9/v1", "--prices", str(prices_broken)],
                  "cannot read the price table"))
    for name, (text, words) in TASK_FILES.items():
        root = write_task(tmp_path / name, name, yaml_text=text)
        cases.append((["run", "--model", "local:x", "--tasks", name, "--include", str(root)], words))
    for name, (data_text, words) in DATA_FILES.items():
        root = write_task(tmp_path / name, name, rows=data_text)
        cases.append((["run", "--model", "local:x", "--tasks", name, "--include", str(root)], words))
    escape = write_task(tmp_path / "escape", "escape", data="../" * 16 + "etc/hostname")
    cases.append((["run", "--model", "local:x", "--tasks", "escape", "--include", str(escape)],
                  "leaves the task folder"))
    return cases


def _dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return list(c.iterdump())


def test_every_bad_input_gets_one_line_and_the_store_is_untouched(tmp_path, monkeypatch, capsys):
    db = tmp_path / "store.db"
    Store(f"sqlite:///{db}")
    before = _dump(db)
    cases = _cases(tmp_path)
    assert len(cases) >= 30
    failures = []
    for args, words in cases:
        argv = ["dsparity", *args]
        if "--db" not in args:
            argv[2:2] = ["--db", f"sqlite:///{db}"]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ok = (exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:")
              and words in err and ("fix:" in err or "--help" in err) and "Traceback" not in err)
        if not ok:
            failures.append((args, exit_.value.code, err))
    assert not failures, "\n".join(f"{a} -> {c}: {e}" for a, c, e in failures)
    assert _dump(db) == before


@pytest.mark.parametrize("name,value,words", [
    ("DSPARITY_KERNELS", "fastest", "DSPARITY_KERNELS: 'fastest' is not a kernel mode"),
    ("DSPARITY_CROSSOVER_DECODE", "3k", "DSPARITY_CROSSOVER_DECODE: '3k' is not a key count"),
])
def test_bad_kernel_settings_in_the_environment_get_one_line(name, value, words):
    """Read when the kernels are imported, before any command runs: still one line, exit 2."""
    import os
    import subprocess

    env = {**os.environ, name: value}
    done = subprocess.run([str(Path(sys.executable).parent / "dsparity"), "tasks", "list"], env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and words in lines[0] and "fix:" in lines[0], \
        done.stderr
