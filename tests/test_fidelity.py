"""The fidelity comparison: per-token log-probs of two models on the same tokens, by position."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tasks_helpers import cli

from dsparity.evals.logprobs import SpanScores, partition_kl
from dsparity.evals.stats import fidelity


def _doc(lp: np.ndarray, tokens: np.ndarray, top_ids=None, top_lps=None) -> dict:
    scores = SpanScores(logprobs=lp, greedy=np.zeros(lp.size, dtype=bool), tokens=tokens,
                        top_ids=top_ids, top_logprobs=top_lps, first_position=1)
    return {"scores": [scores.pack()], "doc": {"_lm_eval": {"bytes": 4 * lp.size}}}


def _pairs(n_docs: int, length: int, damage, seed: int = 0):
    """Baseline log-probs per document, and the candidate's = baseline - damage(position)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_docs):
        tokens = rng.integers(0, 1000, length).astype(np.int32)
        base = -rng.gamma(2.0, 1.5, length)
        pos = np.arange(1, length + 1)
        cand = base - damage(pos) + rng.normal(0, 0.02, length) * (pos > 32)
        pairs.append((_doc(cand, tokens), _doc(base, tokens)))
    return pairs


def test_identical_models_are_equivalent_with_an_exact_zero_first_bucket():
    docs = [(-np.random.default_rng(i).gamma(2, 1.5, 512), np.arange(512, dtype=np.int32)) for i in range(5)]
    pairs = [(_doc(b, t), _doc(b, t)) for b, t in docs]
    result = fidelity.compare_task("fid", pairs, {"buckets": ["k", 256, 512]}, topk=32, margin=None,
                                   alpha=0.05)
    assert [r["task"] for r in result["rows"]] == ["fid <= 32", "fid 33-256", "fid 257-512"]
    for r in result["rows"]:
        assert r["diff"] == 0.0 and r["ci95"] == [0.0, 0.0] and r["verdict"] == "equivalent"


def test_damage_far_from_the_query_is_worse_only_in_the_far_buckets():
    pairs = _pairs(6, 1024, lambda pos: 0.2 * (pos > 256))
    result = fidelity.compare_task("fid", pairs, {"buckets": ["k", 256, 1024], "margin": 0.03}, topk=32,
                                   margin=None, alpha=0.05)
    verdicts = {r["task"]: r["verdict"] for r in result["rows"]}
    assert verdicts["fid <= 32"] == "equivalent"
    assert verdicts["fid 257-1K"] == "materially_worse"
    far = result["rows"][-1]
    assert far["diff"] == pytest.approx(-0.2, abs=0.02) and far["ci95"][1] < -0.03
    assert all(p["diff"] < -0.15 for p in result["curve"] if p["position"] > 300)


def test_clustered_interval_is_a_t_interval_over_documents():
    pairs = _pairs(5, 300, lambda pos: 0.01 * (pos > 32), seed=4)
    (row,) = [r for r in fidelity.compare_task("fid", pairs, {"buckets": [300]}, topk=None, margin=0.05,
                                               alpha=0.05)["rows"]]
    per_doc = []
    for c, b in pairs:
        x, y = SpanScores.unpack(c["scores"][0]), SpanScores.unpack(b["scores"][0])
        per_doc.append(float(np.mean(x.logprobs - y.logprobs)))
    from scipy import stats as st

    lo, hi = st.t.interval(0.95, 4, loc=np.mean(per_doc), scale=st.sem(per_doc))
    assert row["ci95"] == pytest.approx([lo, hi]) and row["n"] == 5


def test_different_tokenizations_fall_back_to_nats_per_byte():
    rng = np.random.default_rng(0)
    a = _doc(-rng.gamma(2, 1, 50), np.arange(50, dtype=np.int32))
    b = _doc(-rng.gamma(2, 1, 60), np.arange(60, dtype=np.int32))
    result = fidelity.compare_task("fid", [(a, b), (a, b)], {}, topk=32, margin=None, alpha=0.05)
    assert result["unit"] == "nats/byte" and len(result["rows"]) == 1


def test_partition_kl_is_a_lower_bound_and_zero_for_identical_distributions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        logits_p, logits_q = rng.normal(0, 2, 200), rng.normal(0, 2, 200)
        lp = logits_p - np.log(np.exp(logits_p).sum())
        lq = logits_q - np.log(np.exp(logits_q).sum())
        exact = float(np.sum(np.exp(lp) * (lp - lq)))
        for n in (1, 5, 20, 200):
            ip, iq = np.argsort(-lp)[:n], np.argsort(-lq)[:n]
            bound = partition_kl(ip[None], lp[ip][None], iq[None], lq[iq][None])[0]
            assert -1e-9 <= bound <= exact + 1e-9
        full = np.argsort(-lp)
        assert partition_kl(full[None], lp[full][None], full[None], lp[full][None])[0] == 0.0
        assert math.isclose(partition_kl(np.arange(200)[None], lp[None], np.arange(200)[None], lq[None])[0],
                            exact, rel_tol=1e-9)


def test_dense_against_itself_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    """`dsparity compare --suite fidelity`-style run on the tiny model: the same model in-process
    and over the API scores identical tokens; every bucket is equivalent, far inside the margin."""
    from loopback import ServerThread

    from dsparity.evals.backends.local import LocalBackend
    from dsparity.evals.serving.server import create_app
    from dsparity.evals.specs import parse_spec

    monkeypatch.setenv("DSPARITY_TOKENIZER", str(tiny_model_dir))
    monkeypatch.setenv("DSPARITY_TASK_CACHE", str(tmp_path / "tasks"))
    backend = LocalBackend(parse_spec(f"local:{tiny_model_dir}"))
    backend.load()
    out = tmp_path / "reports"
    with ServerThread(create_app(backend, "tiny")) as server:
        code, stdout, err = cli("compare", "--candidate",
                                f"local:{tiny_model_dir}?attention=window&topk=4096",
                                "--baseline", f"openai:tiny@{server.base_url}", "--tasks",
                                "default_fidelity", "--db", f"sqlite:///{tmp_path / 'r.db'}",
                                "--out", str(out))
    assert code == 0, err
    import json

    (report,) = out.glob("*.json")
    comparison = json.loads(report.read_text())
    rows = [t for t in comparison["tasks"] if t.get("kind") == "fidelity"]
    assert len(rows) >= 2 and all(r["verdict"] == "equivalent" for r in rows)
    assert all(abs(r["ci95"][0]) < 1e-3 and abs(r["ci95"][1]) < 1e-3 for r in rows)
    assert all(r["top1"] == 1.0 and r["kl"] < 1e-6 for r in rows)
    assert comparison["overall"]["verdict"] == "equivalent"
    assert "NLL difference by position" in next(out.glob("*.html")).read_text()
