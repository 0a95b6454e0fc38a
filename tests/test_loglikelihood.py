"""Log-likelihood requests on every backend, checked against lm-eval's own models.

The oracle is lm-eval: its `hf` model on the same weights for the numbers, its `local-completions`
model (tokenized requests, its default) for the `/v1/completions` protocol of `dsparity serve`,
and its own task code for the choices, the target delimiter and acc / acc_norm.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from loopback import ServerThread, scripted_app
from task_folders import write_task
from tasks_helpers import cli

from dsparity.evals.backends.base import ScoreRequest, Span
from dsparity.evals.backends.local import LocalBackend
from dsparity.evals.backends.local_scoring import score_request
from dsparity.evals.backends.openai_api import OpenAIBackend
from dsparity.evals.logprobs import SpanScores
from dsparity.evals.serving.completions import logprobs_payload
from dsparity.evals.serving.server import create_app
from dsparity.evals.specs import parse_spec

PAIRS = [("The cat sat on the", " mat"), ("Question: 2+2=? Answer:", " 4"), ("", "hello world"),
         ("abc ", "def ghi"), ("x", " y z w v u")]

MC_YAML = """task: {name}
custom_dataset: !function utils.load
dataset_kwargs:
  data_file: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{gold}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1
  dsparity:
    suite: {suite}
"""


def mc_rows(n: int = 12) -> str:
    words = ["red", "green", "blue", "violet", "orange", "black", "white", "grey"]
    rows = []
    for i in range(n):
        choices = [words[(i + j) % len(words)] * (1 + j % 2) for j in range(4)]
        rows.append({"question": f"Item {i}: which colour comes {['first', 'next', 'last'][i % 3]}?",
                     "choices": choices, "gold": i % 4})
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def hflm(tiny_model_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    backend = LocalBackend(parse_spec(f"local:{tiny_model_dir}"))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def served(local):
    with ServerThread(create_app(local, "tiny")) as server:
        yield server


def _instances(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_local_scores_equal_lm_eval_hf(hflm, local):
    ref = hflm.loglikelihood(_instances("loglikelihood", PAIRS))
    got = score_request(local.model, local.tokenizer, ScoreRequest(tuple(Span(c, x) for c, x in PAIRS)))
    for (ll, greedy), s in zip(ref, got, strict=True):
        assert s.total == pytest.approx(ll, abs=1e-4)
        assert s.is_greedy == greedy


def test_rolling_windows_equal_lm_eval_hf(hflm, local, monkeypatch):
    text = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 30
    monkeypatch.setattr(hflm, "_max_length", 64)  # several windows of 64 tokens
    (ref,) = hflm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]))
    monkeypatch.setattr(local.model.config, "max_position_embeddings", 64)
    (got,) = score_request(local.model, local.tokenizer, ScoreRequest((Span("", text),), rolling=True))
    assert got.n == len(local.tokenizer.encode(text))  # every token once
    assert got.total == pytest.approx(ref, abs=1e-3)


def test_served_scores_equal_local_scores(local, served):
    """`dsparity serve` /v1/completions through the openai backend: the same numbers, for token-id
    and text prompts, with top-N alternatives mapped back to ids."""
    tok = local.tokenizer
    ctx, cont = tuple(tok.encode("The cat sat on")), tuple(tok.encode(" the mat today"))
    requests = [ScoreRequest((Span(ctx, cont), Span(ctx[:3], cont)), top_n=5),
                ScoreRequest((Span("The cat sat on", " the mat"), Span("Q: A", " B")), top_n=3)]

    async def go():
        api = OpenAIBackend(parse_spec(f"openai:tiny@{served.base_url}"))
        await api.start()
        await api.check_scoring()
        try:
            return [(await api.score(r), await local.score(r)) for r in requests]
        finally:
            await api.close()

    for remote, here in asyncio.run(go()):
        assert remote.error is None and here.error is None
        for a, b in zip(remote.scores, here.scores, strict=True):
            x, y = SpanScores.unpack(a), SpanScores.unpack(b)
            assert x.n == y.n and x.first_position == y.first_position
            assert x.total == pytest.approx(y.total, abs=1e-4)
            assert list(x.greedy) == list(y.greedy)
    tokenized = SpanScores.unpack(asyncio.run(go())[0][0].scores[0])
    assert tokenized.top_ids.dtype.kind == "i"  # token_id:N names came back as ids


# Characters of two and three UTF-8 bytes: the tiny byte-level tokenizer gives each byte its own
# token, and a token that holds part of a character decodes alone to U+FFFD. The first pair is
# the shape of the default_retrieval item where served and local scores parted (a docstring with
# '´' in a 1K-token haystack, an ASCII answer).
SPLIT_PAIRS = [("The parameter ´timeout´ must be a number.\nThe magic number is:", " 5150445"),
               ("Café — naïve: the answer is", " 42"),
               ("Ünïcode context:", " grüße — ok"),
               ("plain context", " ends in é")]


def _served_vs_local(local, base_url: str, pairs) -> list[tuple[SpanScores, SpanScores]]:
    request = ScoreRequest(tuple(Span(c, x) for c, x in pairs), top_n=2)

    async def go():
        api = OpenAIBackend(parse_spec(f"openai:tiny@{base_url}"))
        await api.start()
        try:
            return await api.score(request), await local.score(request)
        finally:
            await api.close()

    remote, here = asyncio.run(go())
    assert remote.error is None and here.error is None
    return [(SpanScores.unpack(a), SpanScores.unpack(b))
            for a, b in zip(remote.scores, here.scores, strict=True)]


def _assert_same_scores(pairs) -> None:
    for x, y in pairs:
        assert (x.first_position, x.n) == (y.first_position, y.n)
        assert x.total == pytest.approx(y.total, abs=1e-4)
        assert list(x.greedy) == list(y.greedy)


def test_served_text_offsets_count_split_characters_once(local, served):
    """`dsparity serve` places every echoed token at its character offset in the prompt even
    where tokens split a character, so text spans score as they do locally."""
    import httpx

    prompt = SPLIT_PAIRS[0][0] + SPLIT_PAIRS[0][1]
    lp = httpx.post(f"{served.base_url}/completions", json={
        "model": "tiny", "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1},
        timeout=30).json()["choices"][0]["logprobs"]
    assert lp["text_offset"][-1] == len(prompt)  # the generated token starts where the prompt ends
    assert prompt[lp["text_offset"][-2]:] == "5"  # the prompt's last token
    _assert_same_scores(_served_vs_local(local, served.base_url, SPLIT_PAIRS))


def test_split_characters_from_a_server_counting_token_texts(local, monkeypatch):
    """A server whose text_offset adds up each token's own decoded text (vLLM does), so it runs
    one character ahead after every character split over two tokens: the openai backend still
    places an ASCII continuation exactly."""
    from dsparity.evals.serving import server as server_module

    def vllm_payload(tokenizer, choice, as_ids):
        payload = logprobs_payload(tokenizer, choice, as_ids)
        lengths = [len(tokenizer.decode([t])) for t in choice.tokens]
        payload["text_offset"] = [sum(lengths[:i]) for i in range(len(lengths))]
        return payload

    monkeypatch.setattr(server_module, "logprobs_payload", vllm_payload)
    with ServerThread(create_app(local, "tiny")) as server:
        _assert_same_scores(_served_vs_local(local, server.base_url, SPLIT_PAIRS[:2]))


def _mc_folder(tmp_path):
    return write_task(tmp_path / "tasks", "tiny_mc", rows=mc_rows(), yaml_text=MC_YAML)


def _lm_eval_samples(lm, folder):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=lm, tasks=["tiny_mc"], task_manager=TaskManager(
        include_path=str(folder), include_defaults=False), bootstrap_iters=0, log_samples=True)
    samples = sorted(out["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    return out["results"]["tiny_mc"], samples


def test_dsparity_local_picks_what_lm_eval_hf_picks(tmp_path, tiny_model_dir, hflm):
    folder = _mc_folder(tmp_path)
    results, samples = _lm_eval_samples(hflm, folder)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code, out, err = cli("run", "--model", f"local:{tiny_model_dir}", "--tasks", "tiny_mc",
                         "--include", str(folder), "--db", db)
    assert code == 0, err
    from dsparity.evals.storage.store import Store

    store = Store(db)
    (run,) = store.list_runs()
    grades = {k.doc_id: g for k, g in store.grades(run["id"]).items()}
    assert len(grades) == len(samples) == 12
    for s in samples:
        details = grades[s["doc_id"]]["details"]
        lm_eval_lls = [r[0][0] for r in s["resps"]]
        assert details["loglikelihoods"] == pytest.approx(lm_eval_lls, abs=1e-4)
        assert details["metrics"]["acc"] == s["acc"] and details["metrics"]["acc_norm"] == s["acc_norm"]
    mean_acc = sum(g["score"] for g in grades.values()) / len(grades)
    assert mean_acc == pytest.approx(results["acc,none"])


def test_lm_eval_local_completions_against_serve_matches_hf(tmp_path, hflm, served):
    """lm-eval's own `local-completions` (tokenized requests; it finds our /tokenize endpoints)
    scores the task against `dsparity serve` as its `hf` model does on the same weights."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    folder = _mc_folder(tmp_path)
    ref_results, ref = _lm_eval_samples(hflm, folder)
    api = LocalCompletionsAPI(base_url=f"{served.base_url}/completions", model="tiny",
                              num_concurrent=1, max_retries=1)
    assert api.tokenized_requests  # its default: token ids on the wire
    results, samples = _lm_eval_samples(api, folder)
    assert results["acc,none"] == ref_results["acc,none"]
    for a, b in zip(samples, ref, strict=True):
        assert [r[0][0] for r in a["resps"]] == pytest.approx([r[0][0] for r in b["resps"]], abs=1e-4)


def test_lm_eval_bridge_loglikelihood(tiny_model_dir, hflm):
    from dsparity.evals.harness.lm_eval_models import DsparityLocalLM

    lm = DsparityLocalLM(model=str(tiny_model_dir), device="cpu")
    got = lm.loglikelihood(_instances("loglikelihood", PAIRS))
    ref = hflm.loglikelihood(_instances("loglikelihood", PAIRS))
    assert [g for _, g in got] == [g for _, g in ref]
    assert [x for x, _ in got] == pytest.approx([x for x, _ in ref], abs=1e-4)
    (rolling,) = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [("hello there world",)]))
    (ref_rolling,) = hflm.loglikelihood_rolling(_instances("loglikelihood_rolling", [("hello there world",)]))
    assert rolling == pytest.approx(ref_rolling, abs=1e-4)


def test_grader_metrics_equal_lm_eval_process_results(tmp_path):
    """The stored-scores grader gives what lm-eval's process_results gives, on lm-eval's task."""
    import numpy as np
    from lm_eval.tasks import TaskManager

    from dsparity.evals.graders.loglikelihood import multiple_choice_metrics

    folder = _mc_folder(tmp_path)
    task = TaskManager(include_path=str(folder), include_defaults=False).load(["tiny_mc"])["tasks"]["tiny_mc"]
    rng = np.random.default_rng(0)
    for doc in list(task.eval_docs):
        lls = rng.normal(-5, 3, size=4).tolist()
        greedy = rng.random(4) > 0.5
        ref = task.process_results(doc, list(zip(lls, greedy, strict=True)))
        info = {"choices": task.doc_to_choice(doc), "gold": [task.doc_to_target(doc)], "metrics": []}
        got, _ = multiple_choice_metrics(info, lls, list(greedy))
        assert got["acc"] == ref["acc"] and got["acc_norm"] == ref["acc_norm"]


def _dump(db_path) -> str:
    import sqlite3

    if not db_path.exists():
        return ""
    with sqlite3.connect(db_path) as con:
        return "\n".join(con.iterdump())


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`dsparity ARGS` as a user runs it: (exit code, stderr)."""
    import sys

    from dsparity import cli as dsparity_cli

    monkeypatch.setattr(sys, "argv", ["dsparity", *args])
    capsys.readouterr()  # only what this command prints
    with pytest.raises(SystemExit) as exit_:
        dsparity_cli.main()
    return exit_.value.code, capsys.readouterr().err


def test_bad_input_one_line_and_store_unchanged(tmp_path, tiny_model_dir, monkeypatch, capsys):
    db_path = tmp_path / "r.db"
    db = f"sqlite:///{db_path}"
    folder = _mc_folder(tmp_path)
    code, _, err = cli("run", "--model", f"local:{tiny_model_dir}", "--tasks", "tiny_mc", "--include",
                       str(folder), "--db", db, "--limit", "2")
    assert code == 0, err
    before = _dump(db_path)

    # 1. a multiple-choice task without its choices
    no_choices = MC_YAML.replace('doc_to_choice: "{{{{choices}}}}"\n', "")
    bad = write_task(tmp_path / "bad", "no_choices", rows=mc_rows(2), yaml_text=no_choices)
    code, err = _main(monkeypatch, capsys, "run", "--model", f"local:{tiny_model_dir}", "--tasks",
                      "no_choices", "--include", str(bad), "--db", db)
    assert code == 2 and "doc_to_choice" in err and len(err.strip().splitlines()) == 1

    # 2. a completions endpoint that cannot echo log-probs (chat only)
    with ServerThread(scripted_app()) as chat_only:
        code, err = _main(monkeypatch, capsys, "run", "--model", f"openai:scripted@{chat_only.base_url}",
                          "--tasks", "tiny_mc", "--include", str(folder), "--db", db)
    assert code == 2 and "cannot echo prompt log-probs" in err and len(err.strip().splitlines()) == 1

    # 3. a document longer than the model's context
    long_yaml = MC_YAML.replace("output_type: multiple_choice", "output_type: loglikelihood_rolling") \
        .replace('doc_to_choice: "{{{{choices}}}}"\n', "").replace("metric_list:\n  - metric: acc\n"
                                                                  "  - metric: acc_norm\n", "")
    rows = json.dumps({"question": "q", "gold": 0, "choices": [],
                       "tokens": list(range(300)), "prefix_token": 257}) + "\n"
    toolong = write_task(tmp_path / "long", "too_long", rows=rows, yaml_text=long_yaml)
    import tiny_models  # the tiny model's context is 16384: one of 128 for this check

    small = tiny_models.save_tiny(tmp_path / "small-ctx")
    cfg = json.loads((small / "config.json").read_text())
    cfg["max_position_embeddings"] = 128
    (small / "config.json").write_text(json.dumps(cfg))
    spec = f"local:{small}"
    code, err = _main(monkeypatch, capsys, "run", "--model", spec, "--tasks", "too_long", "--include",
                      str(toolong), "--db", db)
    assert code == 2 and "do not fit the model's context of 128" in err, err
    assert len(err.strip().splitlines()) == 1
    assert _dump(db_path) == before


def test_served_completions_limits(local, served):
    import httpx

    url = f"{served.base_url}/completions"
    ok = httpx.post(url, json={"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 0, "echo": True,
                               "logprobs": 2}, timeout=30).json()
    lp = ok["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and all(isinstance(v, float) for v in lp["token_logprobs"][1:])
    assert len(lp["top_logprobs"][1]) >= 2
    assert all(not math.isnan(v) for v in lp["token_logprobs"][1:])
    bad_id = httpx.post(url, json={"model": "tiny", "prompt": [1, 99999], "max_tokens": 0, "echo": True},
                        timeout=30)
    assert bad_id.status_code == 400 and "vocabulary" in bad_id.text
