"""`dsparity serve` under more hostile clients: one /v1/completions request that multiplies its
work by the number of prompts, out-of-range seeds and token ids. Each gets a clear 4xx, never a
500 or hours of model time."""

from __future__ import annotations

import httpx
import pytest
from loopback import ServerThread

from dsparity.evals.backends.local import LocalBackend
from dsparity.evals.serving.server import ServeLimits, create_app
from dsparity.evals.specs import parse_spec


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    backend = LocalBackend(parse_spec(f"local:{tiny_model_dir}"))
    backend.load()
    limits = ServeLimits(max_body_bytes=64 * 1024, max_tokens_cap=100, max_prompts=8)
    with ServerThread(create_app(backend, "tiny", limits)) as s:
        yield s


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60)


def test_many_prompts_times_max_tokens_is_refused_before_any_work(server):
    # each prompt within the cap, together 40 x 50 = 2000 new tokens: 20 times the cap
    r = post(server, "/completions", {"model": "tiny", "prompt": [[1]] * 40, "max_tokens": 50})
    assert r.status_code == 400 and "prompts" in r.json()["detail"]
    r = post(server, "/completions", {"model": "tiny", "prompt": [[1]] * 4, "max_tokens": 30})
    assert r.status_code == 400 and "cap of 100 new tokens per request" in r.json()["detail"]
    # scoring many spans at once (max_tokens 0 or 1) and a batch within the cap still work
    r = post(server, "/completions", {"model": "tiny", "prompt": [[1, 2]] * 8, "max_tokens": 1,
                                      "echo": True, "logprobs": 1, "temperature": 0})
    assert r.status_code == 200 and len(r.json()["choices"]) == 8
    r = post(server, "/completions", {"model": "tiny", "prompt": ["a", "b"], "max_tokens": 50})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


@pytest.mark.parametrize("seed", [1 << 80, -(1 << 70)])
def test_a_seed_out_of_range_is_a_client_error(server, seed):
    for path, body in (("/completions", {"prompt": "hi"}),
                       ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        r = post(server, path, {"model": "tiny", "max_tokens": 2, "seed": seed, **body})
        assert r.status_code == 422, (path, r.text)
    top = (1 << 64) - 1
    r = post(server, "/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2, "seed": top})
    assert r.status_code == 200


@pytest.mark.parametrize("tokens", [[-1], [10**12], [1 << 70]])
def test_detokenize_refuses_ids_outside_the_vocabulary(server, tokens):
    root = server.base_url.removesuffix("/v1")
    r = httpx.post(f"{root}/detokenize", json={"tokens": tokens}, timeout=30)
    assert r.status_code == 400 and "outside the vocabulary" in r.text
    assert httpx.post(f"{root}/detokenize", json={"tokens": [72, 105]}, timeout=30).status_code == 200
