"""The side-by-side section of several candidates (attention modes) against one baseline."""

from __future__ import annotations

from dsparity.evals.report import _env
from dsparity.evals.report.modes import mode_of, side_by_side


def _usage(latency: float, prompt: float, out_tokens: int) -> dict:
    return {"overall": {"latency_s": {"p50": latency}, "prompt_tokens": {"p50": prompt},
                        "output_tokens_total": out_tokens, "cost": None}}


def _comparison(spec: str, run: str, acc: float, cells: list[tuple[int, float, float]]) -> dict:
    return {
        "candidate": {"id": run, "label": spec.split("?")[-1], "model_spec": spec},
        "baseline": {"id": "base", "label": "dense", "model_spec": "local:m"},
        "overall": {"verdict": "equivalent", "diff": acc - 0.9, "ci95": [acc - 1.0, acc - 0.8]},
        "usage": {"candidate": _usage(1.5, 3000, 40), "baseline": _usage(2.0, 3000, 41)},
        "tasks": [{"task": "niah", "n": 12, "mean_a": acc, "mean_b": 0.9, "diff": acc - 0.9,
                   "verdict": "equivalent"}],
        "longctx_maps": [{"task": "niah", "lengths": [2048, 4096], "depths": [0.1, 0.9], "cells": [
            {"length": length, "depth": d, "n": 3, "candidate": v, "baseline": 1.0}
            for length, d, v in cells]}],
    }


def test_modes_side_by_side_table_maps_and_cost():
    comps = [_comparison("local:m?attention=dsa&topk=256", "r-dsa", 0.85,
                         [(2048, 0.1, 1.0), (4096, 0.9, 0.5)]),
             _comparison("local:m?attention=window&topk=256", "r-win", 0.4,
                         [(2048, 0.1, 0.0), (2048, 0.9, 1.0)])]
    section = side_by_side(comps, {"r-dsa": {"recall": 0.93, "per_layer": [0.9, 0.96]}, "r-win": None})
    assert [c["mode"] for c in section["columns"]] == ["dsa", "window"]
    assert section["columns"][0]["recall"] == 0.93 and section["columns"][1]["recall"] is None
    assert section["columns"][0]["keys_per_query"] == 256.0
    assert section["baseline"]["keys_per_query"] == 3000.0  # dense reads every key
    assert section["tasks"] == [{"task": "niah", "baseline": 0.9, "unit": "points", "modes": [0.85, 0.4],
                                 "diffs": [0.85 - 0.9, 0.4 - 0.9], "verdicts": ["equivalent"] * 2,
                                 "n": 12}]
    (m,) = section["maps"]
    assert m["lengths"] == [2048, 4096] and m["depths"] == [0.1, 0.9]
    assert [g["mode"] for g in m["grids"]] == ["baseline", "dsa", "window"]
    assert m["grids"][2]["cells"]["2048|0.9"] == {"value": 1.0, "n": 3}

    env = _env()
    html = env.get_template("parts/modes.j2.html").render(c={"modes": section})
    assert "Sparsity controls at the same budget" in html and "0.930" in html
    assert html.count('<table class="heat">') == 3
    md = env.get_template("parts/modes.md.j2").render(c={"modes": section})
    assert "| niah | 12 | 90.0 | 85.0 | 40.0 |" in md
    assert "| 2048 | 100 / 100 / 0 | – / – / 100 |" in md
    assert env.get_template("parts/modes.j2.html").render(c={}).strip() == ""


def test_mode_of_reads_the_spec():
    assert mode_of({"model_spec": "local:x?attention=block&topk=64"}) == {"mode": "block", "topk": 64}
    assert mode_of({"model_spec": "local:x"}) == {"mode": "dense", "topk": None}
    assert mode_of({"model_spec": "local:x?attention=oracle"}) == {"mode": "oracle", "topk": 256}
    assert mode_of({"model_spec": "openai:m@http://h/v1"}) == {"mode": "remote", "topk": None}


def test_fidelity_rows_show_nats_not_percent():
    """A fidelity bucket's mean log-prob is shown in nats beside the modes, not multiplied by 100."""
    from dsparity.evals.report import score_text

    assert score_text(-2.46, "nats/token") == "-2.460"
    assert score_text(-0.2455, "nats/token", signed=True) == "-0.245"
    assert score_text(0.389) == "38.9" and score_text(-0.583, signed=True) == "-58.3"
