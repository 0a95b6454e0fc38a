"""Attention modes on a converted tiny model: same budget, caches and kernels as DSA."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import assert_decode_selects_like_full_forward, tiny_model

from dsparity.model import DSAConfig, convert_to_dsa
from dsparity.model import selection as modes
from dsparity.model.modes import apply_mode, selection_recall

SMALL = dict(index_n_heads=2, index_head_dim=16)
ALL_MODES = ("dsa", "window", "block", "oracle", "dense")


def _converted(arch: str = "llama", seed: int = 0, **cfg):
    return convert_to_dsa(tiny_model(arch, seed), DSAConfig(**{**SMALL, **cfg}), seed=seed)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_mode_equals_dense_when_k_covers_the_sequence(arch, mode):
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding
    with torch.no_grad():
        ref = tiny_model(arch, 0)(ids, attention_mask=mask).logits
        model = apply_mode(_converted(arch, index_topk=40, dense_when_short=False), mode,
                           sink=3, block_size=8)
        model.dsa_runtime.recorded = {}
        got = model(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-5, rtol=0)
    if mode != "dense":  # the sparse path really ran, and never picked padding
        idx = model.dsa_runtime.recorded[0][0]
        assert idx.shape == (2, 40, 40)
        assert not torch.isin(idx[1], torch.arange(6, dtype=idx.dtype)).any()


@pytest.mark.parametrize("mode", ("window", "block", "oracle"))
def test_small_k_is_sparse_and_window_picks_sinks_plus_recent(mode):
    ids = torch.randint(0, 256, (1, 36), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = tiny_model("llama", 0)(ids).logits
        model = apply_mode(_converted(index_topk=8), mode, sink=2, block_size=4)
        model.dsa_runtime.recorded = {}
        got = model(ids).logits
    assert (got - ref).abs().max() > 1e-3
    torch.testing.assert_close(got[:, :8], ref[:, :8], atol=1e-5, rtol=0)  # rows t < k: all keys
    idx = model.dsa_runtime.recorded[0][0]
    if mode == "window":
        assert torch.equal(idx, modes.window_indices(36, 36, 8, sink=2))
    if mode == "block":  # the query's own block first, in full
        assert idx[0, 21, :2].tolist() == [20, 21]


@pytest.mark.parametrize("mode", ("window", "block", "oracle"))
def test_decode_selects_like_full_forward(mode):
    model = apply_mode(_converted(seed=4, index_topk=6), mode, sink=2, block_size=4)
    prompt = torch.randint(0, 256, (1, 18), generator=torch.Generator().manual_seed(5))
    assert_decode_selects_like_full_forward(model, prompt, steps=8)


def test_oracle_has_the_best_recall_on_every_layer_and_modes_switch_back():
    model = _converted(index_topk=8)
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(3))
    results = {m: selection_recall(apply_mode(model, m, sink=2, block_size=4), ids)
               for m in ("dsa", "window", "block", "oracle")}
    for m, r in results.items():
        assert r["rows"] == 40 and len(r["per_layer"]) == 2 and 0 < r["recall"] <= 1 + 1e-6, m
        for a, b in zip(results["oracle"]["per_layer"], r["per_layer"], strict=True):
            assert a >= b - 1e-6
    apply_mode(model, "dense")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_model("llama", 0)(ids).logits, atol=1e-5, rtol=0)


def test_apply_mode_rejects_unknown_modes_and_unconverted_models():
    with pytest.raises(ValueError, match="unknown attention mode"):
        apply_mode(_converted(), "random")
    with pytest.raises(ValueError, match="DSA-converted"):
        apply_mode(tiny_model("llama", 0), "window")


def test_local_backend_builds_the_mode_from_the_spec(tiny_model_dir):
    from dsparity.evals.backends.local import LocalBackend
    from dsparity.evals.specs import parse_spec

    backend = LocalBackend(parse_spec(f"local:{tiny_model_dir}?attention=block&topk=8&block_size=4"))
    backend.load()
    runtime = backend.model.dsa_runtime
    assert (runtime.mode, runtime.topk, runtime.block_size, runtime.enabled) == ("block", 8, 4, True)
    assert backend.identity["options"]["attention"] == "block"
    assert backend.identity["options"]["block_size"] == 4
    rec = backend.selection_recall(["word " * 40])
    assert rec is not None and 0 < rec["recall"] <= 1 + 1e-6
    dense = LocalBackend(parse_spec(f"local:{tiny_model_dir}"))
    dense.load()
    assert getattr(dense.model, "dsa_runtime", None) is None and dense.selection_recall(["x"]) is None


def test_compare_runs_one_candidate_per_mode_side_by_side(tmp_path, tiny_model_dir):
    from task_folders import write_task
    from tasks_helpers import cli

    rows = "".join(json.dumps({"question": f"Item {i}: " + "filler text " * 6 + "what is 40 + 2?",
                               "answer": "42", "depth": [0.0, 1.0][i % 2], "length": [64, 128][i // 2]})
                   + "\n" for i in range(4))
    write_task(tmp_path / "t", "needle", rows=rows)
    spec = f"local:{tiny_model_dir}"
    code, out, err = cli("compare", "--candidate", f"{spec}?attention=window&topk=8&sink=2",
                         "--candidate", f"{spec}?attention=block&topk=8&block_size=4",
                         "--candidate", f"{spec}?attention=oracle&topk=8",
                         "--baseline", spec, "--tasks", "needle", "--include", str(tmp_path / "t"),
                         "--db", f"sqlite:///{tmp_path / 'r.db'}", "--out", str(tmp_path / "reports"))
    assert code == 0, out + err
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "reports").glob("*.json"))]
    assert len(reports) == 3  # one comparison per candidate
    with_modes = [r for r in reports if r.get("modes")]
    assert len(with_modes) == 1
    section = with_modes[0]["modes"]
    assert [c["mode"] for c in section["columns"]] == ["window", "block", "oracle"]
    assert all(c["recall"] is not None and 0 < c["recall"] <= 1 + 1e-6 for c in section["columns"])
    assert section["maps"] and len(section["maps"][0]["grids"]) == 4
    htmls = [p.read_text() for p in (tmp_path / "reports").glob("*.html")]
    assert sum("Sparsity controls at the same budget" in h for h in htmls) == 1
    mds = [p.read_text() for p in (tmp_path / "reports").glob("*.md")]
    assert sum("## Sparsity controls at the same budget" in m for m in mds) == 1
    assert "side by side" in out and "oracle" in out
    assert section["reproduce"].count("--candidate") == 3 and "--baseline" in section["reproduce"]
