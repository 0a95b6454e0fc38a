"""`run` / `compare` against loopback models that count and record every request: --no-cache and
--fresh, --temperature / --top-p reaching the API, --repeats with pass@k and per-item statistics,
and answers hidden in the reasoning channel earning nothing."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from loopback import ServerThread
from task_folders import make_suite, write_task
from tasks_helpers import cli

from dsparity.evals.storage.store import SampleKey, Store


def recording_app(answer, *, model: str = "m") -> FastAPI:
    """An OpenAI chat endpoint that keeps every request body; `answer(body, item)` returns the
    message (content, optional reasoning_content, optional finish_reason) or None for HTTP 500."""
    app = FastAPI()
    app.state.bodies = []
    lock = threading.Lock()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        with lock:
            app.state.bodies.append(body)
        m = re.search(r"Item (\d+):", body["messages"][-1]["content"])
        message = answer(body, int(m.group(1)) if m else -1)
        if message is None:
            return JSONResponse({"error": {"message": "down"}}, status_code=500)
        finish = message.pop("finish_reason", "stop")
        return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", **message},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}

    return app


def _flat(*args: str) -> tuple[int, str, str]:
    """`dsparity ARGS` in-process, its output with the terminal's line wrapping undone."""
    code, out, err = cli(*args)
    return code, " ".join(out.split()), " ".join(err.split())


def _run(tmp_path: Path, url: str, *extra: str, tasks: str = "bulk") -> tuple[int, str, str]:
    return _flat("run", "--model", f"openai:m@{url}?retries=0", "--tasks", tasks,
                 "--include", str(tmp_path / "tasks"), "--db", f"sqlite:///{tmp_path / 'r.db'}", *extra)


def _run_id(out: str) -> str:
    return re.search(r"run (\w+) \((?:created|resumed)\)", out).group(1)


def test_no_cache_asks_again_fresh_runs_resume_and_the_cache_keeps_the_newest_answer(tmp_path):
    make_suite(tmp_path / "tasks" / "bulk", 4)
    state = {"answer": "42", "down": set()}
    app = recording_app(lambda body, i: None if i in state["down"] else {"content": state["answer"]})
    with ServerThread(app) as server:
        def sent_by(*extra):
            before = len(app.state.bodies)
            code, out, err = _run(tmp_path, server.base_url, *extra)
            assert code == 0, err
            return len(app.state.bodies) - before, out, err

        n, out, _ = sent_by()
        first = _run_id(out)
        assert n == 4 and "created" in out
        n, out, _ = sent_by()  # the same command resumes: nothing is asked twice
        assert n == 0 and _run_id(out) == first and "resumed" in out
        n, out, _ = sent_by("--fresh")  # a new run, answered from the cache
        assert n == 0 and "4 from cache" in out and _run_id(out) != first

        state["answer"], state["down"] = "41", {1}  # the alias moved; one request fails
        n, out, _ = sent_by("--fresh", "--no-cache")
        fresh = _run_id(out)
        assert n == 4 and "0 from cache" in out and "1 errors" in out and "created" in out
        state["down"] = set()
        n, out, err = sent_by("--no-cache")  # without --fresh: the newest run resumes
        assert n == 1 and _run_id(out) == fresh and "resumed" in out
        n, out, err = sent_by("--no-cache")  # complete: nothing to send, and the note says why
        assert n == 0 and "add --fresh" in err

        n, out, _ = sent_by("--fresh")  # the cache now holds the newest answers
        assert n == 0 and "4 from cache" in out
        newest = _run_id(out)
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    assert {s["text"] for s in store.samples(fresh)} == {"41"}
    assert {s["text"] for s in store.samples(newest)} == {"41"}
    assert {s["text"] for s in store.samples(first)} == {"42"}
    assert len(store.grades(fresh)) == 4 and {g["score"] for g in store.grades(fresh).values()} == {0.0}
    assert len(store.list_runs()) == 4
    assert store.run(fresh)["settings"]["cache"] is False and store.run(first)["settings"]["cache"] is True


def _sampler(body: dict, item: int) -> dict:
    """Item i is right on the draws whose seed is below i: 0, 1, 2, 3 of 5 right for items 0-3."""
    return {"content": "42" if body.get("seed", 99) < item else "no"}


def test_temperature_and_top_p_reach_the_api_and_repeats_report_pass_at_k(tmp_path):
    make_suite(tmp_path / "tasks" / "bulk", 4)
    app = recording_app(_sampler)
    with ServerThread(app) as server:
        code, out, err = _run(tmp_path, server.base_url, "--temperature", "0.8", "--top-p", "0.9",
                              "--repeats", "5")
    assert code == 0, err
    bodies = app.state.bodies
    assert len(bodies) == 20
    assert {(b["temperature"], b["top_p"]) for b in bodies} == {(0.8, 0.9)}
    assert sorted(b["seed"] for b in bodies) == sorted(list(range(5)) * 4)  # one seeded draw each
    # pass@1 = mean of 0, 1/5, 2/5, 3/5; pass@5 = items with a right draw among 5 = 3 of 4
    assert "bulk: 30.0% of 20; pass@1 30.0%, pass@5 75.0%" in out
    run = Store(f"sqlite:///{tmp_path / 'r.db'}").run(_run_id(out))
    assert run["settings"]["temperature"] == 0.8 and run["settings"]["top_p"] == 0.9
    assert run["settings"]["repeats"] == 5


def test_greedy_repeats_are_said_to_repeat_and_a_single_sample_has_no_pass_at_k(tmp_path):
    make_suite(tmp_path / "tasks" / "bulk", 2)
    with ServerThread(recording_app(lambda body, i: {"content": "42"})) as server:
        code, out, err = _run(tmp_path, server.base_url, "--repeats", "2")
        assert code == 0 and "without --temperature" in err and "pass@1" in out
        code, out, err = _run(tmp_path, server.base_url, "--temperature", "0.5")
    assert code == 0 and "pass@" not in out


@pytest.mark.parametrize("args, words", [
    (["--top-p", "0"], "is not in (0, 1]"),
    (["--top-p", "1.5"], "is not in (0, 1]"),
    (["--temperature", "-0.1"], "--temperature"),
])
def test_bad_sampling_flags_fail_before_anything_is_stored(tmp_path, args, words):
    make_suite(tmp_path / "tasks" / "bulk", 2)
    app = recording_app(lambda body, i: {"content": "42"})
    with ServerThread(app) as server:
        for command in ("run", "compare"):
            target = (["--model", f"openai:m@{server.base_url}"] if command == "run" else
                      ["--candidate", f"openai:m@{server.base_url}", "--baseline",
                       f"openai:m@{server.base_url}"])
            code, out, err = cli(command, *target, "--tasks", "bulk", "--include",
                                 str(tmp_path / "tasks"), "--db", f"sqlite:///{tmp_path / 'r.db'}",
                                 *args)
            assert code == 2 and words in out + err
    assert not app.state.bodies and not (tmp_path / "r.db").exists()


def test_compare_with_draws_reports_pass_at_k_and_tests_items_not_draws(tmp_path):
    make_suite(tmp_path / "tasks" / "bulk", 4)
    with ServerThread(recording_app(_sampler)) as cand, \
            ServerThread(recording_app(lambda body, i: {"content": "42"})) as base:
        code, out, err = _flat("compare", "--candidate", f"openai:m@{cand.base_url}?label=cand",
                             "--baseline", f"openai:m@{base.base_url}?label=base", "--tasks", "bulk",
                             "--include", str(tmp_path / "tasks"), "--db",
                             f"sqlite:///{tmp_path / 'r.db'}", "--out", str(tmp_path / "out"),
                             "--temperature", "0.8", "--repeats", "5")
    assert code == 0, err
    assert "bulk: candidate pass@1 30.0%, pass@5 75.0%; baseline pass@1 100.0%, pass@5 100.0%" in out
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    row = report["tasks"][0]
    assert row["pass_at_k"]["candidate"] == pytest.approx({"pass@1": 0.3, "pass@5": 0.75})
    assert row["n"] == 4  # five draws of an item are one item in the paired test
    assert row["mean_a"] == pytest.approx(0.3) and row["mean_b"] == 1.0
    assert report["candidate"]["settings"]["temperature"] == 0.8
    md = next((tmp_path / "out").glob("*.md")).read_text()
    html = next((tmp_path / "out").glob("*.html")).read_text()
    assert "pass@5" in md and "pass@5" in html


@pytest.mark.parametrize("grader", ["exact", "needle", "contains"])
def test_an_answer_only_in_the_reasoning_scores_zero_end_to_end(tmp_path, grader):
    rows = "".join(json.dumps({"question": f"Item {i}: what is 40 + 2?", "answer": "42"}) + "\n"
                   for i in range(5))
    write_task(tmp_path / "tasks", "bulk", rows=rows, grader=grader)
    messages = {
        0: {"content": "42"},
        1: {"content": "I am not sure.", "reasoning_content": "40 + 2 = 42"},  # the API's channel
        2: {"content": "<think>It is 42.</think>I am not sure."},
        3: {"content": "<think>It is 42", "finish_reason": "length"},  # cut off while thinking
        4: {"content": "<think>40 + 2</think>\n42", "reasoning_content": "more thinking"},
    }
    with ServerThread(recording_app(lambda body, i: dict(messages[i]))) as server:
        code, out, err = _run(tmp_path, server.base_url)
    assert code == 0, err
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    run_id = _run_id(out)
    scores = {k.doc_id: g["score"] for k, g in store.grades(run_id).items()}
    assert scores == {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0}
    sample = next(s for s in store.samples(run_id) if s["doc_id"] == 1)
    assert sample["reasoning"] == "40 + 2 = 42"  # stored apart, never graded
    assert store.grades(run_id)[SampleKey("bulk", 1, 0)]["passed"] == 0


def test_temperature_and_top_p_reach_local_generation(tmp_path, tiny_model_dir):
    """In-process generation samples as asked: a top-p so small that only the likeliest token
    survives gives the greedy answers back; the full mass at a high temperature does not."""
    make_suite(tmp_path / "tasks" / "bulk", 3)

    def texts(*extra: str) -> list[str]:
        code, out, err = _flat("run", "--model", f"local:{tiny_model_dir}", "--tasks", "bulk",
                               "--include", str(tmp_path / "tasks"), "--db",
                               f"sqlite:///{tmp_path / 'r.db'}", *extra)
        assert code == 0, err
        samples = Store(f"sqlite:///{tmp_path / 'r.db'}").samples(_run_id(out))
        assert {(s["request"]["temperature"], s["request"]["top_p"]) for s in samples} == \
            {(float(extra[1]) if extra else 0.0, float(extra[3]) if extra else 1.0)}
        return [s["text"] for s in samples]

    greedy = texts()
    assert texts("--temperature", "2.0", "--top-p", "1e-9") == greedy
    assert texts("--temperature", "2.0", "--top-p", "1.0") != greedy


def test_fresh_compare_with_several_candidates_asks_the_baseline_once(tmp_path):
    make_suite(tmp_path / "tasks" / "bulk", 4)
    cand, base = recording_app(lambda b, i: {"content": "42"}), recording_app(lambda b, i: {"content": "42"})
    with ServerThread(cand) as c, ServerThread(base) as b:
        for expected_runs in (3, 6):
            code, out, err = _flat("compare", "--candidate", f"openai:m@{c.base_url}?label=c1",
                                   "--candidate", f"openai:m@{c.base_url}?label=c2", "--baseline",
                                   f"openai:m@{b.base_url}?label=b", "--tasks", "bulk", "--include",
                                   str(tmp_path / "tasks"), "--db", f"sqlite:///{tmp_path / 'r.db'}",
                                   "--out", str(tmp_path / "out"), "--fresh", "--no-cache")
            assert code == 0, err
            assert len(Store(f"sqlite:///{tmp_path / 'r.db'}").list_runs()) == expected_runs
    assert len(base.state.bodies) == 8 and len(cand.state.bodies) == 16  # 4 per run, twice
