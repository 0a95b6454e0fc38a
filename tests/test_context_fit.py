"""A task asking more new tokens than the model's context holds: cut to context - prompt and
flagged; a prompt longer than the context: classed `context_overflow`, never sent. In process,
through `dsparity serve` (its /tokenize counts the chat prompt) and against an endpoint that
cannot count."""

import asyncio
import json

import pytest
from fastapi import FastAPI, Request
from loopback import ServerThread
from task_folders import TASK_YAML, write_task

from dsparity.evals.backends.local import LocalBackend
from dsparity.evals.comparison.pairing import compare_runs
from dsparity.evals.report import render
from dsparity.evals.runner import RunSettings, execute_run
from dsparity.evals.serving.server import ServeLimits, create_app
from dsparity.evals.specs import parse_spec
from dsparity.evals.storage.store import Store
from dsparity.evals.tasks import load_tasks

CONTEXT = 96  # positions of the tiny model: a byte tokenizer, so about one token per character
ASKED = 65_536  # as the article tasks ask
SHORT = [f"Q{i}?" for i in range(3)]
LONG = "Tell me everything. " * 10  # 200 bytes: longer than the context


@pytest.fixture(scope="module")
def small_context_model(tmp_path_factory):
    from tiny_models import byte_tokenizer, tiny_model

    folder = tmp_path_factory.mktemp("models") / "tiny-96"
    model = tiny_model(max_position_embeddings=CONTEXT)
    model.generation_config.eos_token_id = 257
    model.generation_config.pad_token_id = 258
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    rows = "".join(json.dumps({"question": q, "answer": "42"}) + "\n" for q in [*SHORT, LONG])
    root = write_task(tmp_path_factory.mktemp("tasks"), "wordy", rows=rows,
                      yaml_text=TASK_YAML.replace("max_gen_toks: 8", f"max_gen_toks: {ASKED}"))
    return load_tasks(names=["wordy"], include=[root])


def _run(spec_text: str, tasks, store: Store, backend=None):
    spec = parse_spec(spec_text)
    return asyncio.run(execute_run(spec, tasks, RunSettings(suite="wordy"), store, backend=backend,
                                   show_progress=False))


def _by_prompt(store: Store, run_id: str) -> dict[str, dict]:
    return {r["request"]["messages"][-1]["content"]: r for r in store.samples(run_id)}


@pytest.mark.timeout(300)  # uncut, the tiny model would spend minutes generating 65,536 tokens
def test_new_tokens_are_cut_to_the_context_and_a_long_prompt_is_not_sent(small_context_model, tasks,
                                                                         tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    local = LocalBackend(parse_spec(f"local:{small_context_model}"))
    local.load()
    counts = {q: local.prompt_tokens(item.request) for item in tasks[0].items
              for q in [item.request.messages[-1][1]]}
    assert all(counts[q] < CONTEXT for q in SHORT) and counts[LONG] > CONTEXT

    serving = LocalBackend(parse_spec(f"local:{small_context_model}"))
    serving.load()
    here = _run(f"local:{small_context_model}", tasks, store, backend=local)
    with ServerThread(create_app(serving, "tiny", ServeLimits(max_tokens_cap=ASKED))) as server:
        served = _run(f"openai:tiny@{server.base_url}", tasks, store)

    for result in (here, served):
        assert result.sent == len(SHORT) and result.error_classes == {"context_overflow": 1}
        rows = _by_prompt(store, result.run_id)
        for q in SHORT:
            row = rows[q]
            assert row["error"] is None, row["error"]  # the server took the cut request
            cut = row["request"]["context_cut"]
            assert cut == {"asked": ASKED, "sent": CONTEXT - counts[q], "context": CONTEXT,
                           "prompt_tokens": counts[q]}
            assert row["request"]["max_tokens"] == ASKED  # the request as the task asked it
            assert 0 < row["completion_tokens"] <= cut["sent"]
        long = rows[LONG]
        assert long["error_class"] == "context_overflow" and "not sent" in long["error"]
        assert str(counts[LONG]) in long["error"] and long["prompt_tokens"] == counts[LONG]
        assert "context_cut" not in long["request"]

    comparison = compare_runs(store, here.run_id, served.run_id)
    for side in ("candidate", "baseline"):
        figures = comparison["usage"][side]["tasks"]["wordy"]
        assert figures["context_cut"] == len(SHORT) and figures["error_classes"] == {"context_overflow": 1}
    paths = render(comparison, tmp_path / "reports", name="cut")
    md = paths["md"].read_text()
    assert "New tokens cut to fit the model's context (cand / base): wordy 3 / 3;" in md
    assert 'id="context-cut"' in paths["html"].read_text()


def test_an_endpoint_that_cannot_count_gets_no_more_than_its_context(tasks, tmp_path):
    """/models says the context; there is no /tokenize: nothing is classed on a guess, and no
    request asks for more new tokens than the whole context."""
    app = FastAPI()
    app.state.max_tokens = []

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": CONTEXT}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.max_tokens.append(body["max_tokens"])
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    with ServerThread(app) as server:
        result = _run(f"openai:m@{server.base_url}", tasks, store)
    assert result.sent == len(SHORT) + 1 and result.errors == 0
    assert app.state.max_tokens == [CONTEXT - 1] * (len(SHORT) + 1)
    cuts = [r["request"]["context_cut"] for r in store.samples(result.run_id)]
    assert cuts == [{"asked": ASKED, "sent": CONTEXT - 1, "context": CONTEXT, "prompt_tokens": None}] * 4
