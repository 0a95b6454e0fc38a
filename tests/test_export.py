"""`dsparity export`: a run's samples with lm-eval's per-sample fields (checked against lm-eval's
own `log_samples` for the same task and answers), dsparity's own fields, secrets masked, JSONL and
Parquet; `dsparity runs` counts what is stored, not what was planned."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from loopback import ServerThread, scripted_app
from task_folders import make_suite
from tasks_helpers import cli

from dsparity.evals.backends.base import Completion
from dsparity.evals.storage.store import SampleKey, Store

N = 4
TASK = """task: plain
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
KEY = "sk-export-test-RECOGNISABLE-31337"


def answer(prompt: str) -> str:
    return "41" if prompt.startswith("Item 1:") else "42"  # one wrong answer of four


@pytest.fixture(scope="module")
def plain_task(tmp_path_factory) -> Path:
    """A stock lm-eval task (no dsparity grader: lm-eval's own metric grades it)."""
    folder = tmp_path_factory.mktemp("tasks") / "plain"
    folder.mkdir()
    data = folder / "test.jsonl"
    data.write_text("".join(json.dumps({"question": f"Item {i}: what is 40 + 2?", "answer": "42"}) + "\n"
                            for i in range(N)))
    (folder / "plain.yaml").write_text(TASK.format(data=data))
    return folder


def _lm_eval_samples(base_url: str, folder: Path) -> list[dict]:
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalChatCompletion
    from lm_eval.tasks import TaskManager

    lm = LocalChatCompletion(base_url=f"{base_url}/chat/completions", model="scripted",
                             tokenizer_backend=None, num_concurrent=1, max_retries=1)
    out = simple_evaluate(model=lm, tasks=["plain"], apply_chat_template=True, bootstrap_iters=0,
                          log_samples=True, task_manager=TaskManager(include_path=str(folder),
                                                                     include_defaults=False))
    return sorted(out["samples"]["plain"], key=lambda s: s["doc_id"])


def test_export_has_lm_eval_fields_as_lm_eval_logs_them(plain_task, tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    with ServerThread(scripted_app(answer)) as server:
        code, out, err = cli("run", "--model", f"openai:scripted@{server.base_url}?label=api",
                             "--tasks", "plain", "--include", str(plain_task.parent), "--db", db)
        assert code == 0, err
        ref = _lm_eval_samples(server.base_url, plain_task)
    run_id = out.split()[1]
    target = tmp_path / "out" / "plain.jsonl"
    code, _, err = cli("export", run_id[:6], "--out", str(target), "--db", db)
    assert code == 0 and f"exported {N} samples of run {run_id}" in err, err
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == [s["doc_id"] for s in ref] == list(range(N))
    for mine, theirs in zip(rows, ref, strict=True):
        for field in ("doc_id", "doc", "target", "filter", "metrics", "doc_hash", "prompt_hash",
                      "target_hash", "exact_match", "filtered_resps", "resps"):
            assert mine[field] == theirs[field], (field, mine[field], theirs[field])
        (ctx, kwargs), = theirs["arguments"]  # lm-eval's in-memory form of gen_args_0
        assert mine["arguments"]["gen_args_0"]["arg_0"] == ctx[0]  # a JsonChatStr: (chat JSON,)
        assert mine["arguments"]["gen_args_0"]["arg_1"]["until"] == kwargs["until"]
        assert mine["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"] == kwargs["max_gen_toks"]
        # dsparity's own fields
        assert mine["task"] == "plain" and mine["repeat"] == 0 and mine["error"] is None
        assert mine["grade"]["grader"] == "lm_eval" and mine["grade"]["score"] == mine["exact_match"]
        assert mine["tokens"]["completion"] > 0 and mine["latency_s"] > 0
        assert mine["model_spec"].startswith("openai:scripted@") and mine["model_label"] == "api"
        assert mine["prompt"] == mine["doc"]["question"] and mine["run_id"] == run_id
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 1.0, 1.0]

    parquet = tmp_path / "out" / "plain.parquet"
    code, _, err = cli("export", run_id, "--format", "parquet", "--out", str(parquet), "--db", db)
    assert code == 0, err
    import pyarrow.parquet as pq

    table = pq.read_table(parquet).to_pylist()
    assert [r["exact_match"] for r in table] == [1.0, 0.0, 1.0, 1.0]
    assert [json.loads(r["doc"]) for r in table] == [r["doc"] for r in rows]
    assert table[1]["resps"] == json.dumps([["41"]])


def test_export_masks_secrets_and_refuses_an_unknown_run(tmp_path):
    """A key that reached the store (an older dsparity, a server echoing it) and a database
    password in an error never reach the file; the run's own api_key_env is read to know it."""
    db = tmp_path / "r.db"
    store = Store(f"sqlite:///{db}")
    spec = "openai:m@http://127.0.0.1:9/v1?api_key_env=MY_EXPORT_KEY"
    rid, _ = store.find_or_create_run("k", model_spec=spec, label="m", identity={}, suite="s",
                                      tasks={"t": {"grader": "exact", "n_items": 2}}, settings={},
                                      provenance={"argv": ["dsparity", "--db", "postgresql://u:pw1234567@h/x"]})
    fields = dict(doc_hash="d", prompt_hash="p", target="42", doc={"question": f"use {KEY}"},
                  request={"messages": [{"role": "user", "content": f"key {KEY}"}]})
    store.record(rid, SampleKey("t", 0, 0), fields, Completion(text=f"the key is {KEY}"), None)
    store.record(rid, SampleKey("t", 1, 0), fields, Completion(
        error="cannot reach postgresql://admin:hunter2hunter2@db.internal/x", error_class="connection"), None)
    env = {"MY_EXPORT_KEY": KEY, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())}
    outputs = []
    for fmt in ("jsonl", "parquet"):
        target = tmp_path / f"x.{fmt}"
        done = subprocess.run([sys.executable, "-m", "dsparity.cli", "export", rid, "--format", fmt,
                               "--out", str(target), "--db", f"sqlite:///{db}"], env=env,
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        data = target.read_bytes()
        assert KEY.encode() not in data and b"hunter2hunter2" not in data and b"***" in data
        outputs.append(done.stdout + done.stderr)
    rows = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert rows[1]["error_class"] == "connection" and "admin:***@db.internal" in rows[1]["error"]
    assert rows[0]["resps"] == [["the key is ***"]]

    missing = subprocess.run([sys.executable, "-m", "dsparity.cli", "export", "feedface", "--db",
                              f"sqlite:///{db}"], env=env, capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
    lines = [ln for ln in missing.stderr.splitlines() if ln.strip()]
    assert missing.returncode == 2 and len(lines) == 1 and "no such run" in lines[0], missing.stderr
    assert not (tmp_path / "results").exists()  # nothing written for it


def test_runs_lists_stored_samples_and_errors_not_the_plan(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    folder = make_suite(tmp_path / "t" / "bulk", 10)
    with ServerThread(scripted_app(lambda p: "42")) as server:
        code, out, err = cli("run", "--model", f"openai:scripted@{server.base_url}?label=full",
                             "--tasks", "bulk", "--include", str(folder.parent), "--db", db, "--repeats", "2")
        assert code == 0, err
    store = Store(db)
    rid, _ = store.find_or_create_run("partial", model_spec="openai:m@http://x/v1", label="partial",
                                      identity={}, suite="bulk", tasks={"bulk": {"n_items": 10}},
                                      settings={"repeats": 3}, provenance={})
    fields = dict(doc_hash="d", prompt_hash="p", target="42", doc={}, request={})
    for i in range(4):
        answer = Completion(text="42") if i else Completion(error="boom", error_class="server_error")
        store.record(rid, SampleKey("bulk", i, 0), fields, answer, None)
    code, listing, err = cli("runs", "--db", db)
    assert code == 0, err
    head = [c.strip() for c in next(ln for ln in listing.splitlines() if "┃ run" in ln).split("┃")[1:-1]]
    table = {cells[0]: cells for line in listing.splitlines() if line.startswith("│")
             and (cells := [c.strip() for c in line.split("│")[1:-1]])[0]}
    assert head[4:7] == ["samples", "errors", "planned"]
    assert table[out.split()[1]][4:7] == ["20", "0", "20"]
    assert table[rid][4:7] == ["4", "1", "30"]  # and the whole id, to copy

