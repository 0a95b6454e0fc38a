"""`dsparity serve` with the official openai client, and compare + report on stored runs."""

import asyncio
import json

import openai
import pytest
from loopback import ServerThread, scripted_app

from dsparity.evals.backends.local import LocalBackend
from dsparity.evals.comparison.pairing import compare_runs
from dsparity.evals.report import render
from dsparity.evals.runner import RunSettings, execute_run
from dsparity.evals.serving.server import create_app
from dsparity.evals.specs import parse_spec
from dsparity.evals.storage.store import Store
from dsparity.evals.tasks import load_tasks


@pytest.fixture(scope="module")
def served_tiny(tiny_model_dir):
    backend = LocalBackend(parse_spec(f"local:{tiny_model_dir}"))
    backend.load()
    with ServerThread(create_app(backend, "tiny")) as server:
        yield server, backend


def test_openai_client_plain_and_streaming(served_tiny):
    from dsparity.evals.backends.base import Request
    from dsparity.evals.backends.local import generate_batch

    server, backend = served_tiny
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    messages = [{"role": "user", "content": "Say something."}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12)
    direct = generate_batch(backend.model, backend.tokenizer,
                            [Request(messages=(("user", "Say something."),), max_tokens=12)])[0]
    assert plain.choices[0].message.content == direct.text  # greedy: the server adds nothing
    assert plain.usage.completion_tokens == direct.usage.completion_tokens > 0
    assert plain.usage.prompt_tokens == direct.usage.prompt_tokens > 0
    assert plain.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=messages, max_tokens=2)


def test_lm_eval_local_chat_completions_against_serve(served_tiny):
    from lm_eval.models.openai_completions import LocalChatCompletion

    server, _ = served_tiny
    lm = LocalChatCompletion(base_url=f"{server.base_url}/chat/completions", model="tiny",
                             tokenizer_backend=None, num_concurrent=2, max_retries=1)
    from lm_eval.api.instance import Instance

    reqs = [Instance("generate_until", {}, ([{"role": "user", "content": f"Count to {i}."}],
                                            {"until": ["\n\n"], "max_gen_toks": 8}), i)
            for i in range(3)]
    outs = lm.generate_until(reqs)
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)


def _right(prompt: str) -> str:
    from loopback import last_number_answer

    return last_number_answer(prompt)


def _wrong_on_arithmetic(prompt: str) -> str:
    answer = _right(prompt)
    return answer if "magic number" in prompt else str(int(answer) + 1)


def _run(store, app, tasks, label):
    async def go():
        with ServerThread(app) as server:
            spec = parse_spec(f"openai:scripted@{server.base_url}?label={label}")
            return await execute_run(spec, tasks, RunSettings(suite="smoke"), store,
                                     show_progress=False)

    return asyncio.run(go())


def test_compare_and_report_on_planted_regression(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    tasks = load_tasks(suites=["smoke"])
    good = _run(store, scripted_app(_right), tasks, "good")
    bad = _run(store, scripted_app(lambda p: _wrong_on_arithmetic(p) + "<script>alert(1)</script>"),
               tasks, "bad")
    result = compare_runs(store, bad.run_id, good.run_id, margin=0.05)
    by_task = {t["task"]: t for t in result["tasks"]}
    arith, needle = by_task["smoke_arithmetic"], by_task["smoke_needle"]
    assert arith["n"] == 10 and arith["mean_a"] == 0.0 and arith["mean_b"] == 1.0
    assert arith["verdict"] == "materially_worse" and arith["p_mcnemar"] < 0.01
    assert needle["diff"] == 0.0 and needle["verdict"] != "materially_worse"
    assert len(result["disagreements"]) == 10
    paths = render(result, tmp_path / "out", name="cmp")
    html = paths["html"].read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)" in html
    assert "http://" not in html.replace(result["candidate"]["model_spec"], "").replace(
        result["baseline"]["model_spec"], "").replace("http://www.w3.org/2000/svg", "")
    md = paths["md"].read_text()
    assert "| smoke_arithmetic | 10 | 0.0 | 100.0 | -100.0 |" in md
    data = json.loads(paths["json"].read_text())
    assert data["overall"]["verdict"] in ("materially_worse", "worse")


def test_a_a_comparison_is_not_called_a_difference(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    tasks = load_tasks(suites=["smoke"])
    a = _run(store, scripted_app(_right), tasks, "a")
    b = _run(store, scripted_app(_right), tasks, "b")
    assert a.run_id != b.run_id
    result = compare_runs(store, a.run_id, b.run_id, margin=0.05)
    for t in result["tasks"]:
        assert t["diff"] == 0.0 and t["verdict"] in ("equivalent", "inconclusive")


def test_a_a_on_a_large_suite_is_equivalent_and_a_planted_regression_is_worse(tmp_path):
    from task_folders import make_suite

    tasks = load_tasks(names=["bulk"], include=[make_suite(tmp_path / "t" / "bulk", 400)])
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")

    def corrupted(prompt: str) -> str:  # wrong on every 10th item
        return "41" if int(prompt.split()[1].rstrip(":")) % 10 == 0 else "42"

    def bulk_run(answer, label):
        async def go():
            with ServerThread(scripted_app(answer)) as server:
                spec = parse_spec(f"openai:scripted@{server.base_url}?label={label}&concurrency=16")
                return await execute_run(spec, tasks, RunSettings(suite="bulk"), store, show_progress=False)

        return asyncio.run(go()).run_id

    a, b = bulk_run(lambda p: "42", "a"), bulk_run(lambda p: "42", "b")
    bad = bulk_run(corrupted, "bad")
    same = compare_runs(store, a, b)  # default margin
    assert same["tasks"][0]["verdict"] == "equivalent" and same["overall"]["verdict"] == "equivalent"
    worse = compare_runs(store, bad, a)
    assert worse["tasks"][0]["diff"] == pytest.approx(-0.1)
    assert worse["tasks"][0]["verdict"] in ("worse", "materially_worse")
    assert worse["overall"]["verdict"] in ("worse", "materially_worse")


def test_pairwise_judge_in_the_comparison(tmp_path, monkeypatch):
    """A task that asks for a pairwise judge gets a win rate; a judge that always prefers the
    first answer shown ties every prompt through the order swap (rate exactly 0.5)."""
    from task_folders import make_suite

    folder = make_suite(tmp_path / "t" / "bulk", 6)
    yaml_file = folder / "bulk.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("grader: exact", "grader: exact\n    pairwise: true"))
    tasks = load_tasks(names=["bulk"], include=[folder])
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    ids = []
    for answer in (lambda p: "42", lambda p: "forty-two"):
        async def go(answer=answer):
            with ServerThread(scripted_app(answer)) as server:
                spec = parse_spec(f"openai:scripted@{server.base_url}?label=m{len(ids)}")
                return await execute_run(spec, tasks, RunSettings(suite="bulk"), store, show_progress=False)
        ids.append(asyncio.run(go()).run_id)
    with ServerThread(scripted_app(lambda p: '{"verdict": "A", "reason": "first"}', model="judge")) as judge:
        result = compare_runs(store, ids[0], ids[1], judge=f"openai:judge@{judge.base_url}")
    pairwise = result["tasks"][0]["pairwise"]
    assert pairwise["n"] == 6 and pairwise["ties"] == 6 and pairwise["win_rate"] == 0.5
    html = render(result, tmp_path / "out", name="r")["html"].read_text()
    assert "Pairwise judge" in html and "50.0" in html
