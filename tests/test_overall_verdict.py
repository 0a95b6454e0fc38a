"""The overall verdict follows from its rows; paired 0/1 intervals are exact enough and never
wider than the data allow (Tango's score interval, checked against an independent oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as st

from dsparity.evals import stats as S


def row(task: str, verdict: str, diff: float = 0.0, p: float = 0.5) -> dict:
    return {"task": task, "verdict": verdict, "diff": diff, "p_diff": p}


@pytest.mark.parametrize("rows,expected", [
    ([row("a", "equivalent"), row("b", "equivalent")], "equivalent"),
    ([row("a", "equivalent"), row("b", "worse", -0.3, 0.001)], "worse"),
    ([row("a", "inconclusive"), row("b", "inconclusive")], "inconclusive"),
    ([row("a", "equivalent"), row("b", "inconclusive")], "inconclusive"),
    ([row("a", "better", 0.2, 0.001), row("b", "equivalent")], "better"),
    ([row("a", "better", 0.2, 0.001), row("b", "inconclusive")], "inconclusive"),
    ([row("a", "materially_worse", -0.5, 1e-6), row("b", "equivalent")], "materially_worse"),
    ([row("a", "better", 0.2, 0.001), row("b", "worse", -0.2, 0.001)], "worse"),
])
def test_constructed_cases(rows, expected):
    assert S.overall_verdict(rows)["verdict"] == expected


def test_one_marginal_loss_among_many_rows_is_not_called_worse():
    """Worse at p = 0.04 on its own, but not after Holm's adjustment over five rows."""
    rows = [row("a", "worse", -0.1, 0.04)] + [row(f"e{i}", "equivalent", 0, 0.9) for i in range(4)]
    result = S.overall_verdict(rows)
    assert result["verdict"] == "inconclusive"
    assert "a" in result["undecided"] and result["holm_p"]["a"] == pytest.approx(0.2)


def test_inconclusive_names_what_decides_it():
    result = S.overall_verdict([row("fidelity", "equivalent"), row("retrieval", "inconclusive")])
    assert result["undecided"] == ["retrieval"] and "retrieval" in result["why"]


def test_overall_never_contradicts_its_rows():
    verdicts = ["equivalent", "better", "worse", "materially_worse", "inconclusive"]
    rng = np.random.default_rng(1)
    for _ in range(2000):
        n = int(rng.integers(1, 7))
        rows = [row(f"t{i}", str(rng.choice(verdicts)), p=float(rng.choice([1e-4, 0.01, 0.04, 0.3])))
                for i in range(n)]
        got = S.overall_verdict(rows)["verdict"]
        own = {r["verdict"] for r in rows}
        if got in ("worse", "materially_worse"):
            assert own & {"worse", "materially_worse"}
        if got == "materially_worse":
            assert "materially_worse" in own
        if got == "equivalent":
            assert own == {"equivalent"}
        if got == "better":
            assert "better" in own and own <= {"better", "equivalent"}
        if own == {"equivalent"}:
            assert got == "equivalent"


# -- Tango's interval ------------------------------------------------------------------------


def _constrained_loglik(b: int, c: int, n: int, delta: float) -> tuple[float, float]:
    """Max multinomial log-likelihood of (b, c, n - b - c) with p_b - p_c = delta, found by a
    bounded 1-D search over p_c: the oracle for Tango's closed-form constrained estimate."""
    rest = n - b - c
    lo, hi = max(0.0, -delta) + 1e-12, min(1.0, (1 - delta) / 2) - 1e-12

    def neg(pc: float) -> float:
        pb = pc + delta
        p0 = 1 - pb - pc
        terms = [(b, pb), (c, pc), (rest, p0)]
        return -sum(k * math.log(max(p, 1e-300)) for k, p in terms if k)

    res = optimize.minimize_scalar(neg, bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-12})
    return res.x, -res.fun


def _oracle_z(b: int, c: int, n: int, delta: float) -> float:
    pc, _ = _constrained_loglik(b, c, n, delta)
    var = n * (2 * pc + delta * (1 - delta))
    return (b - c - n * delta) / math.sqrt(var)


@pytest.mark.parametrize("b,c,n", [(5, 2, 50), (0, 3, 20), (7, 0, 30), (12, 9, 40)])
def test_tango_statistic_matches_a_numerical_constrained_mle(b, c, n):
    for delta in np.linspace(-0.8, 0.8, 9):
        if abs(delta) >= 1:
            continue
        assert S._tango_z(b, c, n, float(delta)) == pytest.approx(_oracle_z(b, c, n, float(delta)), rel=1e-4)


def test_tango_interval_inverts_the_test():
    lo, hi = S.tango_interval(5, 2, 50, level=0.95)
    z = st.norm.ppf(0.975)
    assert S._tango_z(5, 2, 50, lo) == pytest.approx(z, abs=1e-6)
    assert S._tango_z(5, 2, 50, hi) == pytest.approx(-z, abs=1e-6)
    assert S.tango_p(5, 2, 50) == pytest.approx(2 * st.norm.sf(3 / math.sqrt(7)))  # McNemar z


def test_all_discordant_four_items_cannot_reach_above_zero():
    """All four pairs go the baseline's way: the interval stays below 0, so it is 'worse', not
    'inconclusive' with an upper bound above 0 (the rule-of-three interval was [-100, +37.8])."""
    lo, hi = S.tango_interval(0, 4, 4)
    assert lo == -1.0 and hi < 0
    r = S.compare_scores([0, 0, 0, 0], [1, 1, 1, 1], margin=0.05)
    assert r.ci95[1] < 0 and r.verdict == S.Verdict.WORSE


def test_perfect_agreement_resolution():
    assert S.tango_interval(0, 0, 36, level=0.9)[1] == pytest.approx(S.binary_resolution(36))
    need = S.items_for_equivalence(0.05)
    assert S.binary_resolution(need) < 0.05 <= S.binary_resolution(need - 1)
    ok = S.compare_scores([1] * need, [1] * need, margin=0.05)
    short = S.compare_scores([1] * (need - 1), [1] * (need - 1), margin=0.05)
    assert ok.verdict == S.Verdict.EQUIVALENT and short.verdict == S.Verdict.INCONCLUSIVE


def test_tango_coverage_is_near_nominal():
    """Simulated coverage of the 95% interval at n = 40 (Tango 1998 reports near-nominal)."""
    rng = np.random.default_rng(3)
    p = np.array([0.08, 0.03, 0.89])  # P(b), P(c), P(concordant)
    truth = p[0] - p[1]
    hits = 0
    trials = 400
    for _ in range(trials):
        b, c, _ = rng.multinomial(40, p)
        lo, hi = S.tango_interval(int(b), int(c), 40)
        hits += lo <= truth <= hi
    assert 0.91 <= hits / trials <= 0.99


def test_power_plan_warns_before_the_run():
    from types import SimpleNamespace

    from dsparity.evals.stats.power import plan

    small = SimpleNamespace(name="small", items=[0] * 14, grader="exact", settings={})
    big = SimpleNamespace(name="big", items=[0] * 80, grader="exact", settings={})
    fid = SimpleNamespace(name="fid", items=[0], grader="fidelity", settings={"margin": 0.03})
    rows = {r.task: r for r in plan([small, big, fid], margin=0.05)}
    assert rows["small"].warning and "needs >= 52" in rows["small"].warning
    assert rows["big"].warning is None and rows["big"].resolution < 0.05
    assert rows["fid"].warning and "2" in rows["fid"].warning
