"""The local backend: batching of concurrent requests, streaming, stop strings, finish reasons."""

import asyncio

import pytest

from dsparity.evals.backends import Request
from dsparity.evals.backends import local as local_mod
from dsparity.evals.backends.local import LocalBackend, cut_at_stop, generate_batch
from dsparity.evals.specs import parse_spec


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = LocalBackend(parse_spec(f"local:{tiny_model_dir}?max_batch=4"))
    b.load()
    return b


def _req(i: int, **kw) -> Request:
    return Request(messages=(("user", f"Tell me about number {i} " * (1 + i % 3)),),
                   max_tokens=kw.pop("max_tokens", 10 + i), **kw)


def test_concurrent_requests_are_batched_and_match_one_by_one(backend, monkeypatch):
    singles = [generate_batch(backend.model, backend.tokenizer, [_req(i)])[0] for i in range(4)]
    calls = []
    real = local_mod.generate_batch
    monkeypatch.setattr(local_mod, "generate_batch",
                        lambda m, t, reqs, **kw: calls.append(len(reqs)) or real(m, t, reqs, **kw))

    async def together():
        return await asyncio.gather(*(backend.generate(_req(i)) for i in range(4)))

    batched = asyncio.run(together())
    assert calls == [4]
    for one, many in zip(singles, batched, strict=True):
        assert many.text == one.text
        assert many.usage.completion_tokens == one.usage.completion_tokens
        assert many.usage.prompt_tokens == one.usage.prompt_tokens
        assert many.finish_reason == one.finish_reason


def test_sampled_requests_are_not_batched(backend, monkeypatch):
    calls = []
    real = local_mod.generate_batch
    monkeypatch.setattr(local_mod, "generate_batch",
                        lambda m, t, reqs, **kw: calls.append(len(reqs)) or real(m, t, reqs, **kw))

    async def together():
        return await asyncio.gather(*(backend.generate(_req(i, temperature=0.7, seed=i)) for i in range(3)))

    asyncio.run(together())
    assert calls == [1, 1, 1]


def test_stream_equals_the_plain_answer_and_never_shows_cut_text(backend):
    plain = generate_batch(backend.model, backend.tokenizer, [_req(1, max_tokens=40)])[0]
    assert plain.finish_reason == "length" and len(plain.text) > 6
    stop = plain.text[3:5]  # a stop string that really occurs in this answer
    request = _req(1, max_tokens=40, stop=(stop,))

    async def collect():
        return [p async for p in backend.stream(request)]

    parts = asyncio.run(collect())
    final = parts[-1]
    text = "".join(p for p in parts[:-1])
    assert final.finish_reason == "stop" and final.text == cut_at_stop(plain.text, (stop,))[0]
    assert text == final.text and stop not in text


def test_cut_at_stop_picks_the_earliest():
    assert cut_at_stop("a, b. c", (".", ",")) == ("a", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)
