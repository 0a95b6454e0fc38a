"""`dsparity cost-curve` on a tiny random model: measured rows, table, inline SVG, files."""

from __future__ import annotations

import json

import torch
from tiny_models import save_tiny, tiny_model
from typer.testing import CliRunner

from dsparity.kernels import cost


def test_measure_and_write(tmp_path):
    model = tiny_model()
    curve = cost.measure(model, name="tiny", length=256, chunk=64, topk=16, decode_every=64,
                         decode_steps=2, price_per_hour=3.6)
    assert getattr(model, "dsa_runtime", None) is None  # DSA runs on a converted copy
    for variant in ("dense", "dsa"):
        pre = curve.series(variant, "prefill")
        assert [p for p, _ in pre][:2] == [0, 66] and len(pre) >= 3  # 2 decode steps after 64
        assert curve.series(variant, "decode")
    row = curve.rows[0]
    assert abs(row["usd_per_mtok"] - row["s_per_token"] * 1e6 * 3.6 / 3600) < 1e-12
    paths = cost.write(curve, tmp_path)
    md = paths["markdown"].read_text()
    assert "| position | prefill dense |" in md and "<svg" in md and "$3.6 per hour" in md
    html = paths["html"].read_text()
    assert "<svg" in html and "<polyline" in html and "http" not in html.replace(
        "http://www.w3.org/2000/svg", "")  # no external assets
    assert json.loads(paths["json"].read_text())["topk"] == 16


def test_crossing():
    c = cost.CostCurve(model="m", machine="x", threads=1, topk=4, chunk=1, price_per_hour=1,
                       kernels="auto")
    for p, d, s in [(0, 1.0, 2.0), (10, 2.0, 1.5), (20, 3.0, 1.6)]:
        c.rows += [dict(variant="dense", phase="prefill", position=p, s_per_token=d, usd_per_mtok=d),
                   dict(variant="dsa", phase="prefill", position=p, s_per_token=s, usd_per_mtok=s)]
    assert c.crossing("prefill") == 10
    assert c.crossing("decode") is None


def test_cli(tmp_path):
    from dsparity.cli import app

    folder = save_tiny(tmp_path / "tiny")
    res = CliRunner().invoke(app, ["cost-curve", "--model", str(folder), "--length", "192",
                                   "--chunk", "64", "--topk", "16", "--decode-every", "64",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "prefill dense" in res.output and "price assumption" in res.output
    assert (tmp_path / "out" / "cost_curve.html").exists()


def test_grad_mode_is_left_alone():
    assert torch.is_grad_enabled()
    cost.measure(tiny_model(), name="tiny", length=128, chunk=64, topk=16, decode_every=64,
                 decode_steps=1)
    assert torch.is_grad_enabled()
