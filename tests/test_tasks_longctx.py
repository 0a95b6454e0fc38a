"""Long-context generators: exact token lengths, recorded depths, retrievable needles, seeds, cache."""

from __future__ import annotations

import json
import re

import pytest
from tasks_helpers import real_tokenizer_dir

from dsparity.errors import DsparityError
from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.taskgen import cache, longctx
from dsparity.evals.tasks import BUILTIN_TASKS

HAYSTACK = BUILTIN_TASKS / "longctx" / "haystack.json.gz"


@pytest.fixture(autouse=True)
def _private_task_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARITY_TASK_CACHE", str(tmp_path / "task-cache"))


@pytest.fixture(scope="module")
def byte_tokenizer_dir(tmp_path_factory):
    from tiny_models import byte_tokenizer

    folder = tmp_path_factory.mktemp("bytetok")
    byte_tokenizer().save_pretrained(folder)
    (folder / "config.json").write_text("{}")  # resolve() treats a folder with config.json as a model
    return folder


def _generate(kind, lengths, tokenizer, size=3, seed=1):
    return list(longctx.generate(f"longctx_{kind}", kind, lengths=lengths, size=size, seed=seed,
                                 tokenizer=str(tokenizer), haystack=HAYSTACK))


def _check_items(rows, tokenizer):
    tok, _ = longctx.load_tokenizer(str(tokenizer))
    needle = get_grader("needle")
    for row in rows:
        n = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        assert n == row["length_tokens"]
        assert abs(n - row["target_tokens"]) <= 0.01 * row["target_tokens"], row["id"]
        # The reference answer passes the checker, and every expected value is in the prompt.
        assert needle(GradeInput(row["answer"], row["answer"], row), {}).score == 1.0
        values = [v for v in row["answer"].split(" | ") if v]
        assert all(v in row["prompt"] for v in values), row["id"]
        assert needle(GradeInput("nothing here", row["answer"], row), {}).score == 0.0
        if row["kind"] in ("niah_single", "niah_multikey", "niah_multivalue"):
            # the first needle sits at its recorded depth (share of the context before it)
            prompt = row["prompt"]
            start, end = prompt.index("\n\n") + 2, prompt.rindex("\n\n")
            pos = prompt.find(f"is: {values[0]}.")
            assert start <= pos < end
            measured = (pos - start) / (end - start)
            assert abs(measured - row["needle_depths"][0]) < 0.1, (row["id"], measured)
            if row["kind"] == "niah_single":
                assert abs(measured - row["depth"]) < 0.1, (row["id"], measured)


@pytest.mark.parametrize("kind", longctx.KINDS)
def test_lengths_within_one_percent_and_needles_retrievable_byte_tokenizer(kind, byte_tokenizer_dir):
    rows = _generate(kind, [1024, 3000], byte_tokenizer_dir, size=2)
    assert len(rows) == 4
    assert {r["target_tokens"] for r in rows} == {1024, 3000}
    depths = [r["depth"] for r in rows if r["target_tokens"] == 1024]
    assert depths == ([None] * 2 if kind == "cwe" else [0.0, 1.0])
    _check_items(rows, byte_tokenizer_dir)


@pytest.mark.skipif(real_tokenizer_dir() is None, reason="the embedded default model is not cached here")
def test_lengths_within_one_percent_under_the_default_models_tokenizer():
    folder = real_tokenizer_dir()
    for kind in longctx.KINDS:
        rows = _generate(kind, [1024, 2048, 4096, 8192], folder, size=1)
        _check_items(rows, folder)
    rows = _generate("niah_single", [32768], folder, size=1)  # a longer one through the same path
    _check_items(rows, folder)


def test_same_seed_same_items_other_seed_differs(byte_tokenizer_dir):
    a = _generate("niah_multikey", [600], byte_tokenizer_dir, seed=5)
    b = _generate("niah_multikey", [600], byte_tokenizer_dir, seed=5)
    c = _generate("niah_multikey", [600], byte_tokenizer_dir, seed=6)
    assert a == b
    assert [r["answer"] for r in a] != [r["answer"] for r in c]
    assert all(r["prompt"] != s["prompt"] for r, s in zip(a, c, strict=True))


def test_cache_records_hashes_reuses_and_regenerates_when_tampered(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return [{"id": "x-0", "value": 1}, {"id": "x-1", "value": 2}]

    rows, path = cache.materialise("x", {"seed": 1}, make)
    manifest = json.loads(path.with_name(path.stem + ".manifest.json").read_text())
    assert manifest["item_hashes"] == [r["hash"] for r in rows] and manifest["n_items"] == 2
    again, _ = cache.materialise("x", {"seed": 1}, make)
    assert again == rows and len(calls) == 1
    path.write_text(path.read_text().replace('"value": 2', '"value": 3'))
    fixed, _ = cache.materialise("x", {"seed": 1}, make)
    assert fixed == rows and len(calls) == 2
    other, other_path = cache.materialise("x", {"seed": 2}, make)
    assert other_path != path


def test_too_short_length_fails_clearly(byte_tokenizer_dir):
    with pytest.raises(DsparityError, match="cwe"):
        _generate("cwe", [100], byte_tokenizer_dir, size=1)


def test_length_knobs_parse():
    assert [cache.parse_length(v) for v in ("4096", "4K", "128k")] == [4096, 4096, 131072]
    opts = cache.GenOptions.from_env(size=3)
    assert opts.size == 3 and re.search("dsparity_options", json.dumps(opts.as_metadata()))
