"""`--limit N`: a fixed, seeded sample of each task, stratified over a long-context task's lengths
and depths, the same on every machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dsparity.evals.tasks import load_tasks
from dsparity.evals.tasks.sample import pick


def test_plain_task_sample_is_seeded_nested_and_not_the_first_n():
    docs = [{"question": f"q{i}"} for i in range(50)]
    four = pick(docs, 4, task="t")
    assert four == pick(docs, 4, task="t") and four != [0, 1, 2, 3] and four == sorted(four)
    assert set(four) <= set(pick(docs, 9, task="t"))  # a bigger limit keeps the smaller one's items
    assert pick(docs, 4, task="other") != four  # each task its own sample
    assert pick(docs, 4, task="t", seed=5) != four
    assert pick(docs, None, task="t") == pick(docs, 50, task="t") == list(range(50))


def test_same_items_in_another_process_whatever_its_hash_seed():
    code = ("import json; from dsparity.evals.tasks.sample import pick; "
            "print(json.dumps(pick([{'q': i} for i in range(50)], 6, task='t')))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(done.stdout) == pick([{"q": i} for i in range(50)], 6, task="t")


def test_generated_reasoning_docs_are_dealt_over_their_generators():
    docs = [{"generator": g, "index": i} for i in range(10) for g in ("a", "b", "c")]
    kept = pick(docs, 3, task="r")
    assert {docs[i]["generator"] for i in kept} == {"a", "b", "c"}


def test_long_context_limit_covers_every_length_and_depth():
    docs = [{"target_tokens": length, "depth": round(j / 3, 4)}
            for length in (1024, 2048, 4096, 8192) for j in range(4)]
    kept = pick(docs, 4, task="longctx_x")
    assert sorted(docs[i]["target_tokens"] for i in kept) == [1024, 2048, 4096, 8192]
    assert sorted(docs[i]["depth"] for i in kept) == [0.0, 0.3333, 0.6667, 1.0]
    eight = pick(docs, 8, task="longctx_x")
    assert set(kept) <= set(eight)
    assert all(sum(docs[i]["target_tokens"] == n for i in eight) == 2 for n in (1024, 2048, 4096, 8192))


@pytest.fixture
def byte_tok(tmp_path):
    from tiny_models import byte_tokenizer

    folder = tmp_path / "bytetok"
    byte_tokenizer().save_pretrained(folder)
    (folder / "config.json").write_text("{}")
    return folder


def test_limit_4_on_a_long_context_task_runs_each_length(tmp_path, byte_tok, monkeypatch):
    monkeypatch.setenv("DSPARITY_TASK_CACHE", str(tmp_path / "task-cache"))
    monkeypatch.setenv("DSPARITY_TOKENIZER", str(byte_tok))
    monkeypatch.setenv("DSPARITY_LONGCTX_LENGTHS", "1K,2K,3K,4K")
    spec = load_tasks(names=["longctx_niah_single"], limit=4, size=4)[0]
    assert spec.n_docs == 16 and len(spec.items) == 4
    lengths = sorted(it.doc["target_tokens"] for it in spec.items)
    assert lengths == [1024, 2048, 3072, 4096]
    assert sorted(it.doc["depth"] for it in spec.items) == [0.0, 0.3333, 0.6667, 1.0]
    again = load_tasks(names=["longctx_niah_single"], limit=4, size=4)[0]
    assert [it.doc_hash for it in again.items] == [it.doc_hash for it in spec.items]
