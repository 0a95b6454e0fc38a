"""dsparity.evals.stats against scipy, statsmodels, brute-force enumeration and grading.md 5."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as st

from dsparity.evals import stats as S
from dsparity.evals.stats import Verdict

sm_cont = pytest.importorskip("statsmodels.stats.contingency_tables")
sm_multi = pytest.importorskip("statsmodels.stats.multitest")
sm_ws = pytest.importorskip("statsmodels.stats.weightstats")
sm_api = pytest.importorskip("statsmodels.api")


# ---------------------------------------------------------------------------------------------
# paired difference and clustered SE


def test_paired_difference_unclustered_matches_textbook():
    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    r = S.paired_difference(a, b)
    d = a - b
    assert r.n == r.n_clusters == 50 and r.df == 49
    assert r.diff == pytest.approx(d.mean())
    assert r.mean_a - r.mean_b == pytest.approx(r.diff)
    assert r.se == pytest.approx(math.sqrt(np.sum((d - d.mean()) ** 2) / (50 * 49)))
    assert r.se == pytest.approx(st.sem(d))


def test_binary_se_matches_grading_formula():
    # grading.md 5.2: SE = sqrt((b + c) - (b - c)^2 / n) / n, up to the n/(n-1) Bessel factor.
    a = np.array([1] * 30 + [0] * 10 + [1] * 40 + [0] * 20, float)
    b = np.array([0] * 30 + [1] * 10 + [1] * 40 + [0] * 20, float)
    n, nb, nc = 100, 30, 10
    r = S.paired_difference(a, b)
    assert r.diff == pytest.approx((nb - nc) / n)
    grading = math.sqrt((nb + nc) - (nb - nc) ** 2 / n) / n
    assert r.se == pytest.approx(grading * math.sqrt(n / (n - 1)))


def test_clustered_se_hand_computed():
    d = np.array([0.5, 0.1, -0.2, 0.4, 0.0, 1.0, -0.6])
    cl = np.array(["p", "p", "q", "q", "q", "r", "s"])
    n, dbar = d.size, d.mean()
    groups: dict[str, float] = {}
    for label, x in zip(cl, d, strict=True):
        groups[label] = groups.get(label, 0.0) + (x - dbar)
    g = len(groups)
    expected = math.sqrt(g / (g - 1) * sum(v * v for v in groups.values())) / n
    r = S.paired_difference(d, np.zeros_like(d), clusters=cl)
    assert (r.n, r.n_clusters, r.df) == (7, 4, 3)
    assert r.diff == pytest.approx(dbar)
    assert r.se == pytest.approx(expected, rel=1e-12)
    # grading.md 5.1's first form: SE_CLT^2 + cross terms / n^2 (differs only by the factors).
    cross = sum(
        (d[i] - dbar) * (d[j] - dbar) for i in range(n) for j in range(n) if i != j and cl[i] == cl[j]
    )
    clt_biased = np.sum((d - dbar) ** 2) / n**2
    assert r.se**2 == pytest.approx(g / (g - 1) * (clt_biased + cross / n**2))


def test_clustered_se_matches_statsmodels_cluster_robust_ols():
    rng = np.random.default_rng(11)
    cl = np.repeat(np.arange(40), rng.integers(1, 6, 40))
    shared = rng.normal(0, 0.5, 40)[cl]
    a = shared + rng.normal(0, 1, cl.size)
    b = rng.normal(0, 1, cl.size)
    r = S.paired_difference(a, b, clusters=cl)
    fit = sm_api.OLS(a - b, np.ones(cl.size)).fit(cov_type="cluster", cov_kwds={"groups": cl})
    assert r.diff == pytest.approx(float(fit.params[0]))
    assert r.se == pytest.approx(float(fit.bse[0]), rel=1e-10)
    assert r.df == 39


def test_singleton_clusters_reduce_to_unclustered():
    rng = np.random.default_rng(5)
    a, b = rng.random(30), rng.random(30)
    plain = S.paired_difference(a, b)
    clustered = S.paired_difference(a, b, clusters=np.arange(30)[::-1])
    assert clustered.se == pytest.approx(plain.se, rel=1e-12)
    assert clustered.df == plain.df


def test_paired_difference_edge_cases():
    empty = S.paired_difference([], [])
    assert empty.n == 0 and math.isnan(empty.diff) and math.isnan(empty.se) and empty.df == 0
    one = S.paired_difference([1.0], [0.25])
    assert one.diff == 0.75 and math.isnan(one.se)
    same = S.paired_difference([0.3] * 10, [0.2] * 10)
    assert same.se == 0.0
    one_cluster = S.paired_difference([1, 0, 1], [0, 0, 0], clusters=[7, 7, 7])
    assert one_cluster.n_clusters == 1 and math.isnan(one_cluster.se)
    with pytest.raises(ValueError):
        S.paired_difference([1, 2], [1])
    with pytest.raises(ValueError):
        S.paired_difference([1, np.nan], [1, 2])
    with pytest.raises(ValueError):
        S.paired_difference([1, 2], [1, 2], clusters=[1])


# ---------------------------------------------------------------------------------------------
# McNemar


def test_mcnemar_exact_matches_scipy_binomtest_and_statsmodels():
    for b in range(0, 26):
        for c in range(0, 26):
            p = S.mcnemar_exact(b, c)
            if b + c == 0:
                assert p == 1.0
                continue
            assert p == pytest.approx(st.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
            table = [[17, b], [c, 4]]
            assert p == pytest.approx(sm_cont.mcnemar(table, exact=True).pvalue, rel=1e-9)
    assert S.mcnemar_exact(713, 316) < 1e-30
    with pytest.raises(ValueError):
        S.mcnemar_exact(-1, 3)
    with pytest.raises(ValueError):
        S.mcnemar_exact(1.5, 3)


# ---------------------------------------------------------------------------------------------
# TOST


@pytest.mark.parametrize("n", [5, 12, 40, 300])
@pytest.mark.parametrize("shift", [0.0, 0.02, -0.04])
def test_tost_matches_statsmodels_ttost_paired(n, shift):
    rng = np.random.default_rng(n)
    b = rng.random(n)
    a = b + shift + rng.normal(0, 0.1, n)
    for margin in (0.01, 0.05, 0.2):
        p, eq = S.tost(a, b, margin=margin)
        ref = sm_ws.ttost_paired(a, b, -margin, margin)[0]
        assert p == pytest.approx(float(ref), rel=1e-9, abs=1e-15)
        assert eq == (float(ref) < 0.05)


def test_tost_equals_ci_inclusion():
    # grading.md 5.3: p_TOST < alpha  <=>  the (1 - 2 alpha) t-interval lies inside (-m, m).
    rng = np.random.default_rng(9)
    for _ in range(50):
        n = int(rng.integers(5, 80))
        a, b = rng.random(n), rng.random(n)
        margin = float(rng.uniform(0.02, 0.3))
        r = S.paired_difference(a, b)
        lo, hi = st.t.interval(0.90, r.df, loc=r.diff, scale=r.se)
        _, eq = S.tost(a, b, margin=margin, alpha=0.05)
        assert eq == (-margin < lo and hi < margin)


def test_tost_clustered_uses_cluster_se_and_df():
    rng = np.random.default_rng(2)
    cl = np.repeat(np.arange(15), 4)
    a = rng.random(60)
    b = a + rng.normal(0.01, 0.05, 60)
    r = S.paired_difference(a, b, clusters=cl)
    m = 0.05
    expected = max(st.t.sf((r.diff + m) / r.se, 14), st.t.sf((m - r.diff) / r.se, 14))
    p, _ = S.tost(a, b, margin=m, clusters=cl)
    assert p == pytest.approx(expected, rel=1e-12)
    p_plain, _ = S.tost(a, b, margin=m)
    assert p != pytest.approx(p_plain)


def test_tost_zero_se_and_tiny_n():
    assert S.tost([0.5] * 5, [0.49] * 5, margin=0.02) == (0.0, True)
    assert S.tost([0.5] * 5, [0.45] * 5, margin=0.02) == (1.0, False)
    p, eq = S.tost([1.0], [1.0], margin=0.02)
    assert math.isnan(p) and eq is False
    p, eq = S.tost([], [], margin=0.02)
    assert math.isnan(p) and eq is False
    with pytest.raises(ValueError):
        S.tost([1, 0], [0, 1], margin=0.0)


# ---------------------------------------------------------------------------------------------
# multiple comparisons


def test_holm_and_bh_match_statsmodels():
    rng = np.random.default_rng(4)
    cases = [
        rng.random(12),
        rng.random(40) ** 4,
        np.array([0.01, 0.01, 0.04, 0.04, 0.2, 0.9, 1.0, 0.0]),
        np.array([0.3]),
    ]
    for p in cases:
        np.testing.assert_allclose(S.holm(p), sm_multi.multipletests(p, method="holm")[1], rtol=1e-12)
        np.testing.assert_allclose(
            S.benjamini_hochberg(p), sm_multi.multipletests(p, method="fdr_bh")[1], rtol=1e-12
        )


def test_adjustments_keep_input_order_and_skip_nan():
    p = [0.04, np.nan, 0.01, 0.03]
    holm, bh = S.holm(p), S.benjamini_hochberg(p)
    np.testing.assert_allclose(holm[[0, 2, 3]], [0.06, 0.03, 0.06])
    np.testing.assert_allclose(bh[[0, 2, 3]], [0.04, 0.03, 0.04])
    assert math.isnan(holm[1]) and math.isnan(bh[1])
    assert S.holm([]).size == 0
    with pytest.raises(ValueError):
        S.holm([0.5, 1.2])


# ---------------------------------------------------------------------------------------------
# bootstrap


def _valid_quantile(x: float, values: np.ndarray, probs: np.ndarray, q: float, tol: float):
    """x is a q-quantile of the discrete law (values, probs) up to tol in probability."""
    below = probs[values < x - 1e-12].sum()
    at_or_below = probs[values <= x + 1e-12].sum()
    assert below <= q + tol and at_or_below >= q - tol, (x, below, at_or_below, q)


def test_bootstrap_matches_full_enumeration_small_n():
    d = np.array([0.7, -0.3, 0.15, 1.2, -0.9])
    n = d.size
    idx = np.array(list(itertools.product(range(n), repeat=n)))  # all 3125 resamples
    means = d[idx].mean(axis=1)
    probs = np.full(means.size, 1.0 / means.size)
    for level in (0.5, 0.8, 0.9, 0.95):
        diff, lo, hi = S.paired_bootstrap(d, np.zeros(n), iters=40_000, seed=1, level=level)
        assert diff == pytest.approx(d.mean())
        tail = (1 - level) / 2
        _valid_quantile(lo, means, probs, tail, 0.006)
        _valid_quantile(hi, means, probs, 1 - tail, 0.006)
        exact_lo, exact_hi = np.quantile(means, [tail, 1 - tail])
        assert lo == pytest.approx(exact_lo, abs=0.03)
        assert hi == pytest.approx(exact_hi, abs=0.03)


def test_cluster_bootstrap_matches_full_enumeration():
    d = np.array([1.0, 0.0, 0.5, -1.0, 0.25, 0.0, 2.0, -0.5])
    cl = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    sums = np.bincount(cl, weights=d)
    sizes = np.bincount(cl)
    g = sums.size
    idx = np.array(list(itertools.product(range(g), repeat=g)))  # 256 cluster resamples
    ratio = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    probs = np.full(ratio.size, 1.0 / ratio.size)
    _, lo, hi = S.paired_bootstrap(d, np.zeros_like(d), clusters=cl, iters=40_000, level=0.8)
    _valid_quantile(lo, ratio, probs, 0.1, 0.006)
    _valid_quantile(hi, ratio, probs, 0.9, 0.006)


def test_binary_bootstrap_matches_exact_multinomial_law():
    # 0/1 scores take the multinomial fast path; its law is enumerable exactly:
    # (B*, C*, T*) ~ Multinomial(n; b/n, c/n, t/n) and d* = (B* - C*) / n.
    nb, nc, nt = 9, 4, 47
    n = nb + nc + nt
    a = np.array([1] * nb + [0] * nc + [1] * nt, float)
    b = np.array([0] * nb + [1] * nc + [1] * nt, float)
    values, probs = [], []
    for bb in range(n + 1):
        for cc in range(n + 1 - bb):
            values.append((bb - cc) / n)
            probs.append(st.multinomial.pmf([bb, cc, n - bb - cc], n, [nb / n, nc / n, nt / n]))
    values_, probs_ = np.array(values), np.array(probs)
    assert probs_.sum() == pytest.approx(1.0)
    for level in (0.9, 0.95):
        _, lo, hi = S.paired_bootstrap(a, b, iters=40_000, seed=3, level=level)
        _valid_quantile(lo, values_, probs_, (1 - level) / 2, 0.006)
        _valid_quantile(hi, values_, probs_, (1 + level) / 2, 0.006)


def test_cluster_bootstrap_fast_path_matches_index_path(monkeypatch):
    # 0/1 scores in clusters of 1-3 rows: few distinct (sum, size) pairs -> multinomial path.
    rng = np.random.default_rng(6)
    cl = np.repeat(np.arange(400), rng.integers(1, 4, 400))
    a = (rng.random(cl.size) < 0.6).astype(float)
    b = np.zeros_like(a)
    fast = S.paired_bootstrap(a, b, clusters=cl, iters=20_000, seed=1)
    monkeypatch.setattr(S, "_MULTINOMIAL_RATIO", 10**9)  # force index resampling
    slow = S.paired_bootstrap(a, b, clusters=cl, iters=20_000, seed=2)
    se = S.paired_difference(a, b, clusters=cl).se
    assert fast[0] == slow[0]
    assert fast[1] == pytest.approx(slow[1], abs=0.1 * se)
    assert fast[2] == pytest.approx(slow[2], abs=0.1 * se)
    assert slow[2] - slow[1] == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_coverage_sanity():
    rng = np.random.default_rng(2024)
    hits, reps, true = 0, 300, 0.1
    for k in range(reps):
        d = rng.normal(true, 1.0, 60)
        _, lo, hi = S.paired_bootstrap(d, np.zeros(60), iters=1_000, seed=k)
        hits += lo <= true <= hi
    assert 0.89 <= hits / reps <= 0.985


def test_bootstrap_is_seeded_and_handles_edge_cases():
    rng = np.random.default_rng(0)
    a, b = rng.random(200), rng.random(200)
    assert S.paired_bootstrap(a, b, seed=7, iters=500) == S.paired_bootstrap(a, b, seed=7, iters=500)
    assert S.paired_bootstrap(a, b, seed=7, iters=500) != S.paired_bootstrap(a, b, seed=8, iters=500)
    diff, lo, hi = S.paired_bootstrap([], [])
    assert math.isnan(diff) and math.isnan(lo) and math.isnan(hi)
    diff, lo, hi = S.paired_bootstrap([1.0], [0.0])
    assert diff == 1.0 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        S.paired_bootstrap(a, b, level=1.0)


def test_bootstrap_chunks_agree_with_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300)
    whole = S.paired_bootstrap(a, b, iters=2_000, seed=5)
    monkeypatch.setattr(S, "_CHUNK_ELEMENTS", 300 * 7)  # 7 replicates per chunk
    chunked = S.paired_bootstrap(a, b, iters=2_000, seed=5)
    # The chunks consume one random stream: identical draws, identical interval.
    assert chunked == pytest.approx(whole, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# sample size and power


# grading.md 5.4, "show equivalence" rows (alpha 0.05, power 0.8, true difference 0).
EQUIVALENCE_TABLE = {
    0.01: [4282, 8564, 12846, 17128, 25692],
    0.02: [1071, 2141, 3212, 4282, 6423],
    0.03: [476, 952, 1428, 1904, 2855],
}
DETECT_TABLE = {
    0.01: [3925, 7849, 11774, 15698, 23547],
    0.02: [982, 1963, 2944, 3925, 5887],
    0.03: [437, 873, 1309, 1745, 2617],
}
P_DISC = [0.05, 0.10, 0.15, 0.20, 0.30]


def test_sample_size_for_margin_matches_grading_table():
    for margin, row in EQUIVALENCE_TABLE.items():
        got = [S.sample_size_for_margin(math.sqrt(p), margin) for p in P_DISC]
        assert got == row, margin


def test_minimum_detectable_effect_inverts_detection_table():
    for delta, row in DETECT_TABLE.items():
        for p, n in zip(P_DISC, row, strict=True):
            mde = S.minimum_detectable_effect(math.sqrt(p), n)
            assert mde <= delta * (1 + 1e-9)  # n items suffice ...
            assert S.minimum_detectable_effect(math.sqrt(p), n - 1) > delta  # ... n - 1 do not
    assert S.minimum_detectable_effect(1.0, 0) == math.inf


def test_sample_size_with_true_difference():
    sd, m = 0.3, 0.02
    z = st.norm.ppf(0.95)

    def power(n: int, diff: float) -> float:
        se = sd / math.sqrt(n)
        return st.norm.cdf((m - diff) / se - z) + st.norm.cdf((m + diff) / se - z) - 1

    assert S.sample_size_for_margin(sd, m, true_diff=1e-9) == S.sample_size_for_margin(sd, m)
    for diff in (0.005, -0.01, 0.015):
        n = S.sample_size_for_margin(sd, m, true_diff=diff)
        assert power(n, diff) >= 0.8 > power(n - 1, diff)
        assert n > S.sample_size_for_margin(sd, m)
    with pytest.raises(ValueError):
        S.sample_size_for_margin(sd, m, true_diff=0.02)
    assert S.sample_size_for_margin(0.0, m) == 2


def test_items_to_settle():
    need = S.sample_size_for_margin(math.sqrt(0.1), 0.02)
    assert S.items_to_settle(math.sqrt(0.1), 0.02, 1000) == need - 1000 == 1141
    assert S.items_to_settle(math.sqrt(0.1), 0.02, 5000) == 0


# ---------------------------------------------------------------------------------------------
# aggregates and judge win rate


def test_pooled_and_macro_difference():
    d, se = [0.01, -0.02, 0.03], [0.01, 0.02, 0.04]
    w = np.array([1 / 0.01**2, 1 / 0.02**2, 1 / 0.04**2])
    pooled, s = S.pooled_difference(d, se)
    assert pooled == pytest.approx(float(np.sum(w * d) / w.sum()))
    assert s == pytest.approx(1 / math.sqrt(w.sum()))
    pooled, s = S.macro_difference(d, se)
    assert pooled == pytest.approx(np.mean(d))
    assert s == pytest.approx(math.sqrt(0.01**2 + 0.02**2 + 0.04**2) / 3)
    # NaN tasks (too few items) are skipped; all-NaN gives NaN.
    assert S.pooled_difference([0.01, np.nan], [0.01, np.nan]) == pytest.approx((0.01, 0.01))
    assert all(math.isnan(x) for x in S.macro_difference([np.nan], [np.nan]))
    with pytest.raises(ValueError):
        S.pooled_difference([0.0, 0.01], [0.0, 0.01])


def test_win_rate():
    rng = np.random.default_rng(8)
    w = rng.choice([0.0, 0.5, 1.0], size=120, p=[0.3, 0.2, 0.5])
    rate, lo, hi = S.win_rate(w)
    ref_lo, ref_hi = st.t.interval(0.95, 119, loc=w.mean(), scale=st.sem(w))
    assert rate == pytest.approx(w.mean())
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi))
    cl = np.repeat(np.arange(40), 3)
    _, clo, chi = S.win_rate(w, clusters=cl)
    se = S.paired_difference(w, np.zeros_like(w), clusters=cl).se
    assert chi - clo == pytest.approx(2 * st.t.ppf(0.975, 39) * se)
    assert S.win_rate([1.0, 1.0, 1.0, 0.5])[2] == 1.0  # clipped to [0, 1]
    assert math.isnan(S.win_rate([1.0])[1])
    with pytest.raises(ValueError):
        S.win_rate([0.5, 1.5])


# ---------------------------------------------------------------------------------------------
# verdicts and the per-task bundle


@pytest.mark.parametrize(
    ("diff", "ci90", "ci95", "expected"),
    [
        (0.0, (-0.01, 0.01), (-0.015, 0.015), Verdict.EQUIVALENT),
        (-0.01, (-0.015, -0.005), (-0.017, -0.003), Verdict.EQUIVALENT),  # significant, small
        (0.01, (0.005, 0.015), (0.003, 0.017), Verdict.EQUIVALENT),
        (-0.03, (-0.036, -0.024), (-0.038, -0.021), Verdict.MATERIALLY_WORSE),
        (-0.02, (-0.028, -0.012), (-0.03, -0.01), Verdict.WORSE),
        (-0.015, (-0.025, -0.001), (-0.028, 0.002), Verdict.INCONCLUSIVE),
        (0.03, (0.02, 0.04), (0.015, 0.045), Verdict.BETTER),
        (0.0, (-0.03, 0.03), (-0.04, 0.04), Verdict.INCONCLUSIVE),
        (-0.02, (-0.02, -0.02), (-0.02, -0.02), Verdict.WORSE),  # on the margin: not inside
        (-0.03, (-0.03, -0.025), (-0.031, -0.019), Verdict.WORSE),  # 95% CI reaches -m
        (0.0, (math.nan, math.nan), (math.nan, math.nan), Verdict.INCONCLUSIVE),
    ],
)
def test_verdict_table(diff, ci90, ci95, expected):
    assert S.verdict(diff, ci90, ci95, 0.02) is expected


def test_verdict_enum_is_str():
    assert Verdict.MATERIALLY_WORSE == "materially_worse"
    assert json.dumps(Verdict.EQUIVALENT) == '"equivalent"'


def _correlated_pair(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    p = rng.beta(2, 1, n)
    return (rng.random(n) < p).astype(float), (rng.random(n) < p).astype(float)


def test_compare_scores_aa_is_equivalent():
    rng = np.random.default_rng(12)
    a, b = _correlated_pair(rng, 10_000)
    r = S.compare_scores(a, b, margin=0.02)
    assert r.verdict is Verdict.EQUIVALENT and r.equivalent
    assert r.p_tost < 0.05 and r.more_items_needed == 0
    assert r.b + r.c == int(np.sum(a != b))
    assert r.p_mcnemar == pytest.approx(S.mcnemar_exact(r.b, r.c))
    assert r.ci95[0] <= r.ci90[0] <= r.diff <= r.ci90[1] <= r.ci95[1]


def test_compare_scores_planted_regressions():
    rng = np.random.default_rng(13)
    base, _ = _correlated_pair(rng, 10_000)
    right = np.flatnonzero(base == 1)
    heavy = base.copy()
    heavy[rng.choice(right, size=1_000, replace=False)] = 0  # corrupt 10% of items
    r = S.compare_scores(heavy, base, margin=0.02)
    assert r.verdict is Verdict.MATERIALLY_WORSE and not r.equivalent
    assert (r.b, r.c) == (0, 1_000) and r.diff == pytest.approx(-0.1)
    light = base.copy()
    light[rng.choice(right, size=200, replace=False)] = 0  # 2 points down: on the margin
    r = S.compare_scores(light, base, margin=0.02)
    assert r.verdict is Verdict.WORSE and not r.equivalent


def test_compare_scores_inconclusive_reports_items_needed():
    a = np.array([1.0] * 10 + [0.0] * 12 + [1.0] * 100 + [0.0] * 78)  # 10 wins, 12 losses of 200
    b = np.array([0.0] * 10 + [1.0] * 12 + [1.0] * 100 + [0.0] * 78)
    r = S.compare_scores(a, b, margin=0.02)
    assert r.verdict is Verdict.INCONCLUSIVE
    sd = r.se * math.sqrt(r.n)
    assert r.more_items_needed == S.items_to_settle(sd, 0.02, 200) > 1000


def test_compare_scores_continuous_and_clustered():
    rng = np.random.default_rng(15)
    cl = np.repeat(np.arange(300), 4)
    a = rng.random(1200)
    b = np.clip(a + rng.normal(0, 0.05, 1200), 0, 1)
    r = S.compare_scores(a, b, margin=0.02, clusters=cl, iters=2_000)
    assert r.p_mcnemar is None and r.b is None and r.c is None
    assert r.n_clusters == 300
    assert r.se == pytest.approx(S.paired_difference(a, b, clusters=cl).se)
    # 0/1 scores with repeats: counts reported, McNemar withheld (pairs not independent).
    a01, b01 = (a > 0.5).astype(float), (b > 0.5).astype(float)
    r = S.compare_scores(a01, b01, margin=0.02, clusters=cl, iters=2_000)
    assert r.b is not None and r.p_mcnemar is None
    r = S.compare_scores(a01, b01, margin=0.02, binary=False, iters=500)
    assert r.p_mcnemar is None and r.b is None
    with pytest.raises(ValueError):
        S.compare_scores(a, b, margin=0.02, binary=True)


@pytest.mark.parametrize("n", [0, 1])
def test_compare_scores_tiny_n(n):
    r = S.compare_scores([1.0] * n, [0.0] * n, margin=0.02)
    assert r.n == n and r.verdict is Verdict.INCONCLUSIVE and not r.equivalent
    assert r.more_items_needed is None
    assert math.isnan(r.se) and math.isnan(r.p_tost) and all(map(math.isnan, r.ci95))
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["verdict"] == "inconclusive" and d["se"] is None
    assert d["p_mcnemar"] == (None if n == 0 else 1.0)


def test_task_comparison_to_dict_round_trips_json():
    rng = np.random.default_rng(16)
    a, b = _correlated_pair(rng, 500)
    d = S.compare_scores(a, b, margin=0.05, iters=1_000).to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back == d
    assert isinstance(d["ci95"], list) and isinstance(d["n"], int)
    assert set(d) >= {"n", "diff", "se", "ci95", "ci90", "p_tost", "verdict", "margin", "alpha"}


def test_identical_answers_on_few_items_are_not_called_equivalent():
    """Zero disagreements among 14 items is no evidence of parity within 5 points: Tango's
    interval for perfect agreement is +-z^2/(n + z^2), 16 points at n = 14."""
    same = np.array([1.0] * 4 + [0.0] * 10)
    r = S.compare_scores(same, same.copy(), margin=0.05)
    assert r.diff == 0.0 and r.ci90[1] == pytest.approx(S.binary_resolution(14))
    assert r.ci90[1] > 0.05
    assert r.verdict is Verdict.INCONCLUSIVE
    assert r.more_items_needed == S.items_for_equivalence(0.05) - 14
    big = np.array([1.0] * 400 + [0.0] * 600)
    assert S.compare_scores(big, big.copy(), margin=0.05).verdict is Verdict.EQUIVALENT
