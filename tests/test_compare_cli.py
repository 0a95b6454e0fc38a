"""`dsparity compare` as a CI gate, its terminal table, and the first-use warm-up display."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loopback import ServerThread, scripted_app
from task_folders import make_suite
from tasks_helpers import cli

FIXTURE = Path(__file__).parent / "fixtures" / "comparison.json"


def _compare(tmp_path, candidate_answer: str, *extra: str) -> tuple[int, str, str]:
    folder = make_suite(tmp_path / "tasks" / "bulk", 12)
    with ServerThread(scripted_app(lambda p: candidate_answer)) as cand, \
            ServerThread(scripted_app(lambda p: "42")) as base:
        return cli("compare", "--candidate", f"openai:scripted@{cand.base_url}?label=cand",
                   "--baseline", f"openai:scripted@{base.base_url}?label=base", "--tasks", "bulk",
                   "--include", str(folder.parent), "--db", f"sqlite:///{tmp_path / 'r.db'}",
                   "--out", str(tmp_path / "out"), *extra)


def test_fail_on_a_planted_regression_exits_1(tmp_path):
    code, out, _ = _compare(tmp_path, "41", "--fail-on", "worse")
    assert code == 1 and "overall: materially_worse" in out


def test_without_fail_on_the_exit_code_is_0_whatever_the_verdict(tmp_path):
    code, out, _ = _compare(tmp_path, "41")
    assert code == 0 and "overall: materially_worse" in out


def test_fail_on_inconclusive_passes_nothing_undecided(tmp_path):
    code, out, err = _compare(tmp_path, "42", "--fail-on", "inconclusive")
    assert "12 items cannot show equivalence" in err  # the power check, before anything is sent
    assert "overall: inconclusive" in out and code == 1
    code, out, _ = _compare(tmp_path / "2", "42", "--fail-on", "worse")
    assert code == 0


def test_table_fits_80_columns():
    from dsparity.cli.evaluate import comparison_lines

    comparison = json.loads(FIXTURE.read_text())
    comparison["tasks"].append({**comparison["tasks"][0], "task": "a_rather_long_task_name_for_the_table",
                                "verdict": "materially_worse"})
    lines = comparison_lines(comparison)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    names = [t["task"] for t in comparison["tasks"]]
    assert all(any(line.startswith(n) for line in lines) for n in names)  # names never cut


def test_warm_up_runs_with_its_progress_display_on(capsys):
    """The first-use path as a user sees it: the rich progress display on (it crashed with
    KeyError: 'info' when only tested with the display off)."""
    from tiny_models import byte_tokenizer, tiny_model

    from dsparity.model import DSAConfig, WarmupConfig, convert_to_dsa, warm_up

    model = convert_to_dsa(tiny_model(), DSAConfig(index_topk=8, index_head_dim=16))
    cfg = WarmupConfig(lengths=(256,), train_sequences=2, heldout_sequences=1, steps=4, rows_per_step=8,
                       eval_every=2, sparse_sequences=1, sparse_steps=2)
    report = warm_up(model, byte_tokenizer(), cfg, progress=True)
    assert report.final.rows > 0
    err = capsys.readouterr().err
    assert "dense stage" in err and "dense targets" in err and "sparse targets" in err


@pytest.mark.parametrize("verdict,level,fails", [
    ("worse", "worse", True), ("materially_worse", "worse", True), ("inconclusive", "worse", False),
    ("inconclusive", "inconclusive", True), ("equivalent", "inconclusive", False),
    ("better", "inconclusive", False), ("worse", "materially_worse", False),
])
def test_fail_on_levels(verdict, level, fails):
    from dsparity.cli.evaluate import fails as fails_fn

    assert fails_fn(verdict, level) is fails
