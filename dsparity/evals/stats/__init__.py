"""Paired statistics for parity claims: is the candidate equivalent to the baseline within a margin?

Everything here is a pure function over 1-D numpy arrays (lists are accepted too). The formulas
follow ``shared/reference/grading.md`` section 5; each docstring names the subsection and the
paper it comes from. Conventions used throughout:

* ``a`` is the **candidate** (e.g. DeepSeek-V3.2-Exp), ``b`` the **baseline** (e.g.
  V3.1-Terminus); ``a[i]`` and ``b[i]`` are the two models' scores on the same item ``i``
  (paired), each in score units (0/1 for exact match, or a mean in [0, 1] over K samples).
* ``d_i = a_i - b_i`` and ``diff = mean(d)``: positive means the candidate scores higher, and
  higher is better.
* ``clusters`` (optional) labels each row with the unit that was sampled independently: a
  passage shared by several questions, or one question's K repeated samples when they are stored
  as separate rows. Rows with the same label are one cluster; standard errors, degrees of freedom
  and bootstrap resampling then work at the cluster level (grading.md 5.1, "Clustered SE").
* ``margin`` is in score units (0.02 = 2 points) and must be fixed before looking at the data.

Undefined quantities are reported as ``nan`` rather than raising: with no items every statistic
is ``nan``; with one item (or one cluster) the difference is defined but its standard error,
confidence intervals and p-values are ``nan``. :func:`compare_scores` turns those cases into an
``inconclusive`` verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = [
    "PairedDiff",
    "TaskComparison",
    "Verdict",
    "benjamini_hochberg",
    "compare_scores",
    "holm",
    "items_to_settle",
    "binary_mde",
    "binary_resolution",
    "items_for_equivalence",
    "macro_difference",
    "mcnemar_exact",
    "overall_verdict",
    "minimum_detectable_effect",
    "paired_bootstrap",
    "paired_difference",
    "pooled_difference",
    "sample_size_for_margin",
    "tango_interval",
    "tango_p",
    "tango_tost",
    "tost",
    "verdict",
    "win_rate",
]

ArrayLike = Sequence[float] | np.ndarray

# Bootstrap index matrices are drawn in chunks of at most this many elements (8 bytes each), so
# n = 10,000 items x 10,000 iterations never holds more than ~32 MB of indices at once.
_CHUNK_ELEMENTS = 4_000_000
# Below this ratio of (distinct resampling units) / (units) the bootstrap draws multinomial counts
# over the distinct values instead of indices: same distribution, O(iters x distinct) work.
_MULTINOMIAL_RATIO = 16
# Standard errors below this fraction of the largest |difference| are floating-point noise from
# summing identical values; they are reported as exactly 0.
_SE_ROUNDING = 1e-12


# --------------------------------------------------------------------------------------------
# input handling


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a_, b_ = _vector(a, "a"), _vector(b, "b")
    if a_.shape != b_.shape:
        raise ValueError(f"a and b must be paired (same length), got {a_.size} and {b_.size}")
    return a_, b_


def _cluster_index(clusters: ArrayLike | None, n: int) -> np.ndarray | None:
    """Integer cluster ids 0..G-1 for each row, or None when rows are independent."""
    if clusters is None:
        return None
    labels = np.asarray(clusters)
    if labels.ndim != 1 or labels.size != n:
        raise ValueError(f"clusters must be one label per row ({n}), got shape {labels.shape}")
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(-1)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def _se_of_mean(x: np.ndarray, inverse: np.ndarray | None) -> tuple[float, int]:
    """Standard error of mean(x) and the number of independent units (rows or clusters).

    Unclustered: ``sqrt(sum (x_i - xbar)^2 / (n (n - 1)))`` (grading.md 5.2).
    Clustered (CR1, Cameron & Miller 2015, "A Practitioner's Guide to Cluster-Robust
    Inference", eq. 11 with one regressor): ``sqrt(G/(G-1) * sum_c (sum_{i in c} (x_i - xbar))^2
    / n^2)``; grading.md 5.1 gives the same sum "up to n/(n-1)" -- the G/(G-1) factor makes
    singleton clusters reproduce the unclustered SE exactly.
    """
    n = x.size
    if inverse is None:
        units = n
        if n < 2:
            return math.nan, units
        se = float(np.std(x, ddof=1) / math.sqrt(n))
    else:
        units = int(inverse.max()) + 1 if n else 0
        if units < 2:
            return math.nan, units
        resid_sums = np.bincount(inverse, weights=x - x.mean(), minlength=units)
        se = math.sqrt(units / (units - 1) * float(np.sum(resid_sums**2))) / n
    if se <= _SE_ROUNDING * float(np.max(np.abs(x))):
        se = 0.0
    return se, units


# --------------------------------------------------------------------------------------------
# paired difference, bootstrap, McNemar


@dataclass(frozen=True)
class PairedDiff:
    """Mean paired difference ``diff = mean(a - b)`` with its standard error.

    ``n`` rows, ``n_clusters`` independent units (``== n`` when unclustered), ``df`` the degrees
    of freedom for t-based inference (``n_clusters - 1``, at least 0). ``se`` is ``nan`` with
    fewer than two units.
    """

    n: int
    n_clusters: int
    mean_a: float
    mean_b: float
    diff: float
    se: float
    df: int


def paired_difference(a: ArrayLike, b: ArrayLike, *, clusters: ArrayLike | None = None) -> PairedDiff:
    """Mean of the paired differences ``d_i = a_i - b_i`` and its (clustered) standard error.

    grading.md 5.2: ``SE(dbar) = sqrt(sum (d_i - dbar)^2 / (n (n - 1)))``; pairing removes the
    between-question variance both models share. With ``clusters`` the cluster-robust SE of
    the mean is used instead (grading.md 5.1, Miller 2024 "Adding Error Bars to Evals",
    arXiv:2411.00640, sec. 2.2; CR1 small-sample factor ``G/(G-1)``), and ``df = G - 1``. The
    mean is taken over rows, so clusters weigh in proportion to their size (equal weights when
    every question has the same number of repeats).
    """
    a_, b_ = _pair(a, b)
    inverse = _cluster_index(clusters, a_.size)
    d = a_ - b_
    se, units = _se_of_mean(d, inverse)
    return PairedDiff(
        n=int(a_.size),
        n_clusters=units,
        mean_a=_mean(a_),
        mean_b=_mean(b_),
        diff=_mean(d),
        se=se,
        df=max(units - 1, 0),
    )


def _bootstrap_means(
    d: np.ndarray, inverse: np.ndarray | None, iters: int, seed: int | np.random.Generator
) -> np.ndarray:
    """``iters`` bootstrap replicates of mean(d), resampling rows or whole clusters.

    A replicate draws G units with replacement and returns sum(d over drawn units) /
    (rows in drawn units) -- the plain mean when units are rows. When the units take few
    distinct (sum, size) values (0/1 scores: d in {-1, 0, 1}) the unit counts are drawn from the
    equivalent multinomial over distinct values, which is the same distribution at a fraction of
    the cost.
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    rng = np.random.default_rng(seed)
    if inverse is None:
        sums, sizes = d, np.ones_like(d)
    else:
        sums = np.bincount(inverse, weights=d)
        sizes = np.bincount(inverse).astype(float)
    units = sums.size
    values, counts = np.unique(np.stack([sums, sizes], axis=1), axis=0, return_counts=True)
    out = np.empty(iters)
    if values.shape[0] * _MULTINOMIAL_RATIO <= units:
        drawn = rng.multinomial(units, counts / units, size=iters).astype(float)
        out[:] = (drawn @ values[:, 0]) / (drawn @ values[:, 1])
        return out
    chunk = max(1, _CHUNK_ELEMENTS // units)
    equal_sizes = bool(np.all(sizes == sizes[0]))
    for start in range(0, iters, chunk):
        k = min(chunk, iters - start)
        idx = rng.integers(0, units, size=(k, units))
        if equal_sizes:
            out[start : start + k] = sums[idx].sum(axis=1) / (units * sizes[0])
        else:
            out[start : start + k] = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    return out


def _percentile_ci(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(replicates, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    *,
    iters: int = 10_000,
    seed: int | np.random.Generator = 0,
    clusters: ArrayLike | None = None,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Paired percentile bootstrap: ``(diff, lo, hi)`` for ``diff = mean(a - b)``.

    grading.md 5.2 ("Paired bootstrap"; Efron & Tibshirani 1993, "An Introduction to the
    Bootstrap", ch. 13): draw the n items -- or, with ``clusters``, the G clusters -- with
    replacement ``iters`` times, recompute the mean difference, and take the ``(1-level)/2`` and
    ``(1+level)/2`` quantiles (numpy's default linear interpolation). For an equivalence test at
    ``alpha`` use ``level = 1 - 2 * alpha`` (the 90% interval for alpha = 0.05).

    Deterministic for a given ``seed``. Vectorised: indices are drawn in chunks of at most
    4 million, and 0/1-scored tasks are resampled through multinomial counts, so n = 10,000
    items with 10,000 iterations takes about a second (milliseconds for 0/1 scores).

    With fewer than two items or clusters the interval is ``(nan, nan)``: resampling a single
    unit says nothing about variability.
    """
    _check_level(level)
    a_, b_ = _pair(a, b)
    inverse = _cluster_index(clusters, a_.size)
    d = a_ - b_
    diff = _mean(d)
    units = a_.size if inverse is None else (int(inverse.max()) + 1 if a_.size else 0)
    if units < 2:
        return diff, math.nan, math.nan
    lo, hi = _percentile_ci(_bootstrap_means(d, inverse, iters, seed), level)
    return diff, lo, hi


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts.

    ``b`` = #(candidate right, baseline wrong), ``c`` = #(candidate wrong, baseline right).
    Under H0 the discordant pairs split Binomial(b + c, 1/2), so (grading.md 5.2; McNemar 1947,
    Psychometrika 12:153) ``p = min(1, 2 * P(X <= min(b, c)))``. Returns 1.0 when ``b + c == 0``
    (no discordant pair, no evidence of a difference).
    """
    for name, v in (("b", b), ("c", c)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer count, got {v!r}")
    b, c = int(b), int(c)
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2.0 * _st.binom.cdf(min(b, c), b + c, 0.5)))


# --------------------------------------------------------------------------------------------
# equivalence (TOST)


def _tost_from(diff: float, se: float, df: int, margin: float) -> float:
    if not (math.isfinite(diff) and math.isfinite(se)) or df < 1:
        return math.nan
    if se == 0.0:
        return 0.0 if abs(diff) < margin else 1.0
    p_lower = float(_st.t.sf((diff + margin) / se, df))  # H0: Delta <= -margin
    p_upper = float(_st.t.sf((margin - diff) / se, df))  # H0: Delta >= +margin
    return max(p_lower, p_upper)


def _check_margin(margin: float) -> None:
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number in score units, got {margin!r}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")


def tost(
    a: ArrayLike,
    b: ArrayLike,
    *,
    margin: float,
    alpha: float = 0.05,
    clusters: ArrayLike | None = None,
) -> tuple[float, bool]:
    """Paired two one-sided tests (TOST) for ``|mean(a - b)| < margin``: ``(p, equivalent)``.

    grading.md 5.3 (Schuirmann 1987, J. Pharmacokinet. Biopharm. 15:657): with ``diff``,
    ``se`` and ``df`` from :func:`paired_difference` (clustered when ``clusters`` is given),
    ``t1 = (diff + margin) / se``, ``t2 = (margin - diff) / se``, ``p = max(P(T_df > t1),
    P(T_df > t2))``; equivalent iff ``p < alpha`` -- the same as the ``1 - 2 alpha`` t-interval
    lying inside ``(-margin, margin)``.

    Edge cases: with fewer than two items/clusters ``p`` is ``nan`` and the result is not
    equivalent. When ``se == 0`` (every paired difference -- or every cluster's mean
    difference -- is identical) the t statistics are infinite; the limit is used: ``p = 0`` and
    equivalent iff ``|diff| < margin``, else ``p = 1``.
    """
    _check_margin(margin)
    _check_alpha(alpha)
    pd_ = paired_difference(a, b, clusters=clusters)
    p = _tost_from(pd_.diff, pd_.se, pd_.df, margin)
    return p, bool(p < alpha)


# --------------------------------------------------------------------------------------------
# multiple comparisons


def _pvalue_vector(pvalues: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    return p, ok


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm (1979, Scand. J. Statist. 6:65) step-down adjusted p-values, in input order.

    grading.md 5.5: sort ``p_(1) <= ... <= p_(m)``; ``adj_(i) = max_{j <= i} min(1, (m - j + 1)
    p_(j))``. Reject ``H_i`` at family-wise level alpha iff ``adj_i <= alpha``. ``nan`` entries
    (tasks without a p-value) are left ``nan`` and do not count towards ``m``.
    """
    p, ok = _pvalue_vector(pvalues)
    out = np.full(p.shape, np.nan)
    q = p[ok]
    m = q.size
    if m:
        order = np.argsort(q, kind="stable")
        adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * q[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out


def benjamini_hochberg(pvalues: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg (1995, JRSS-B 57:289) step-up adjusted p-values, in input order.

    grading.md 5.5: ``adj_(i) = min_{j >= i} min(1, m p_(j) / j)``; rejecting ``adj_i <= q``
    controls the false discovery rate at ``q`` under independence or positive dependence.
    ``nan`` entries are left ``nan`` and do not count towards ``m``.
    """
    p, ok = _pvalue_vector(pvalues)
    out = np.full(p.shape, np.nan)
    q = p[ok]
    m = q.size
    if m:
        order = np.argsort(q, kind="stable")
        scaled = q[order] * m / np.arange(1, m + 1)
        adj = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out


# --------------------------------------------------------------------------------------------
# power and sample size


def _z(q: float) -> float:
    return float(_st.norm.ppf(q))


def _check_power(alpha: float, power: float) -> None:
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")


def minimum_detectable_effect(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true paired difference a two-sided difference test detects with ``power``.

    grading.md 5.4 (normal approximation; Miller 2024, sec. 5): ``delta = (z_{1-alpha/2} +
    z_{power}) * sd / sqrt(n)``, with ``sd`` the standard deviation of the per-item differences
    (``sqrt(p_disc)`` for 0/1 scores with discordance rate ``p_disc``).
    """
    _check_power(alpha, power)
    if n <= 0:
        return math.inf
    return (_z(1 - alpha / 2) + _z(power)) * float(sd) / math.sqrt(n)


def _tost_power(n: int, sd: float, margin: float, true_diff: float, z_alpha: float) -> float:
    se = sd / math.sqrt(n)
    return float(
        _st.norm.cdf((margin - true_diff) / se - z_alpha)
        + _st.norm.cdf((margin + true_diff) / se - z_alpha)
        - 1.0
    )


def sample_size_for_margin(
    sd: float,
    margin: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    true_diff: float = 0.0,
) -> int:
    """Paired items needed for a TOST at ``alpha`` to show equivalence within ``margin``.

    Normal approximation, ``sd`` = standard deviation of the per-item differences (use
    ``sqrt(p_disc)`` for 0/1 scores). With ``true_diff == 0`` this is grading.md 5.4's
    ``n = (z_{1-alpha} + z_{1-beta/2})^2 sd^2 / margin^2`` (e.g. p_disc 0.10, margin 2 points:
    2,141). Otherwise the exact normal-approximation power of the two one-sided tests (Chow,
    Shao & Wang 2008, "Sample Size Calculations in Clinical Research", sec. 3.2.4),
    ``Phi((m - D)/se - z_{1-alpha}) + Phi((m + D)/se - z_{1-alpha}) - 1`` with ``se = sd /
    sqrt(n)``, is solved for the smallest n reaching ``power`` (it reduces to the closed form at
    ``D = 0``). Raises ``ValueError`` when ``|true_diff| >= margin`` (no n suffices). The result
    is at least 2, the fewest items a t-based TOST can use.
    """
    _check_power(alpha, power)
    _check_margin(margin)
    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"sd must be a non-negative number, got {sd!r}")
    if abs(true_diff) >= margin:
        raise ValueError(
            f"|true_diff| = {abs(true_diff)} is not inside the margin {margin}: "
            "equivalence cannot be shown with any number of items"
        )
    if sd == 0:
        return 2
    z_alpha = _z(1 - alpha)
    if true_diff == 0:
        n = (z_alpha + _z(1 - (1 - power) / 2)) ** 2 * sd**2 / margin**2
        return max(2, math.ceil(n - 1e-9))
    hi = 2
    while _tost_power(hi, sd, margin, true_diff, z_alpha) < power:
        hi *= 2
    lo = hi // 2  # power(lo) < target unless lo < 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _tost_power(mid, sd, margin, true_diff, z_alpha) >= power:
            hi = mid
        else:
            lo = mid
    return max(2, hi)


def items_to_settle(sd: float, margin: float, n_now: int, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """How many more paired items an inconclusive TOST needs (0 when ``n_now`` is enough).

    ``sample_size_for_margin(sd, margin, alpha=alpha, power=power) - n_now``, floored at 0.
    Plans for a true difference of 0 (the models really are equal), so it is a lower bound when
    the observed difference is near the margin. For clustered data pass the effective per-row
    standard deviation ``se * sqrt(n_now)``; the answer then counts rows that cluster like the
    existing ones.
    """
    return max(0, sample_size_for_margin(sd, margin, alpha=alpha, power=power) - int(n_now))


# --------------------------------------------------------------------------------------------
# paired binary outcomes: Tango's score interval


def _tango_z(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for H0: p_cand - p_base = delta on paired 0/1 outcomes.

    Tango 1998 (Stat. Med. 17:891, "Equivalence test and confidence interval for the difference
    in proportions for the paired-sample design"), eqs. 2-4: with b = #(candidate right, baseline
    wrong), c = #(candidate wrong, baseline right) and q the constrained MLE of P(c-cell) under
    delta, ``Z = (b - c - n delta) / sqrt(n (2 q + delta (1 - delta))))``, where q is the root of
    ``2n q^2 + (-b - c + (2n - b + c) delta) q - c delta (1 - delta) = 0`` in [0, 1].
    """
    a_ = 2.0 * n
    b_ = -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    q = (math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0)) - b_) / (2.0 * a_)
    var = n * (2.0 * q + delta * (1.0 - delta))
    num = b - c - n * delta
    if var <= 1e-15:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_interval(b: int, c: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Tango's score confidence interval for the paired difference of two proportions.

    The set of delta whose score test (:func:`_tango_z`) does not reject at ``1 - level``: it
    inverts McNemar's test (at delta = 0 the statistic is ``(b - c) / sqrt(b + c)``), stays in
    [-1, 1] and is not wider than the data allow at the extremes: all n pairs discordant against
    the candidate give an upper bound below 0, and no discordant pair at all gives the symmetric
    ``+-z^2 / (n + z^2)`` (Tango 1998; Newcombe 1998, Stat. Med. 17:2635, compares it favourably).
    """
    _check_level(level)
    if n < 1:
        return (math.nan, math.nan)
    from scipy.optimize import brentq

    z = _z(1 - (1 - level) / 2)
    d = (b - c) / n
    eps = 1e-12
    f = lambda x, target: _tango_z(b, c, n, x) - target  # noqa: E731  (decreasing in x)
    lo = -1.0 if d <= -1 + eps or f(-1 + eps, z) <= 0 else brentq(f, -1 + eps, d, args=(z,), xtol=1e-12)
    hi = 1.0 if d >= 1 - eps or f(1 - eps, -z) >= 0 else brentq(f, d, 1 - eps, args=(-z,), xtol=1e-12)
    return (float(lo), float(hi))


def tango_p(b: int, c: int, n: int) -> float:
    """Two-sided p-value of Tango's score test of no difference (McNemar's z test)."""
    if n < 1:
        return math.nan
    zval = _tango_z(b, c, n, 0.0)
    return 1.0 if zval == 0 else float(2 * _st.norm.sf(abs(zval)))


def tango_tost(b: int, c: int, n: int, margin: float) -> float:
    """TOST p-value for |delta| < margin with Tango's score statistic (Tango 1998, sec. 2.2):
    ``max(P(Z >= z(-margin)), P(Z <= z(+margin)))``."""
    _check_margin(margin)
    if n < 1:
        return math.nan
    return float(max(_st.norm.sf(_tango_z(b, c, n, -margin)), _st.norm.cdf(_tango_z(b, c, n, margin))))


def binary_resolution(n: int, *, alpha: float = 0.05) -> float:
    """Half-width of Tango's 1 - 2 alpha interval when the two models agree on all n items: the
    smallest margin at which n items can ever show equivalence (``z^2 / (n + z^2)``)."""
    if n < 1:
        return math.inf
    z2 = _z(1 - alpha) ** 2
    return z2 / (n + z2)


def items_for_equivalence(margin: float, *, alpha: float = 0.05) -> int:
    """The fewest items whose perfect agreement shows equivalence at ``margin``."""
    _check_margin(margin)
    z2 = _z(1 - alpha) ** 2
    return max(2, math.floor(z2 * (1 - margin) / margin) + 1)


def binary_mde(n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest one-way loss (a share of items the candidate gets wrong and the baseline right,
    none the other way) that McNemar's test detects with ``power``: ``(z_{1-alpha/2} +
    z_power)^2 / n`` (normal approximation; the discordance rate equals the loss)."""
    _check_power(alpha, power)
    if n < 1:
        return math.inf
    return min(1.0, (_z(1 - alpha / 2) + _z(power)) ** 2 / n)


# --------------------------------------------------------------------------------------------
# aggregates over tasks


def _diffs_ses(diffs: ArrayLike, ses: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(diffs, dtype=float).reshape(-1)
    s = np.asarray(ses, dtype=float).reshape(-1)
    if d.shape != s.shape:
        raise ValueError(f"diffs and ses must have the same length, got {d.size} and {s.size}")
    keep = np.isfinite(d) & np.isfinite(s)
    if np.any(s[keep] < 0):
        raise ValueError("standard errors must be non-negative")
    return d[keep], s[keep]


def pooled_difference(diffs: ArrayLike, ses: ArrayLike) -> tuple[float, float]:
    """Fixed-effect (inverse-variance) pooled difference over tasks: ``(D, se)``.

    grading.md 5.5 ("Aggregate parity"): ``w_t = 1 / se_t^2``, ``D = sum w_t d_t / sum w_t``,
    ``se(D) = 1 / sqrt(sum w_t)`` (Borenstein et al. 2009, "Introduction to Meta-Analysis",
    ch. 11). Tasks whose diff or se is ``nan`` (fewer than two items) are skipped; with none left
    the result is ``(nan, nan)``. A task with ``se == 0`` would get infinite weight, so it raises
    ``ValueError`` -- floor such SEs (e.g. at the rule-of-three resolution 3/n) or use
    :func:`macro_difference`.
    """
    d, s = _diffs_ses(diffs, ses)
    if d.size == 0:
        return math.nan, math.nan
    if np.any(s == 0):
        raise ValueError(
            "inverse-variance pooling needs positive standard errors; a task with se == 0 "
            "would get infinite weight (floor its se, or use macro_difference)"
        )
    w = 1.0 / s**2
    return float(np.sum(w * d) / np.sum(w)), float(1.0 / math.sqrt(float(np.sum(w))))


def macro_difference(diffs: ArrayLike, ses: ArrayLike) -> tuple[float, float]:
    """Macro-averaged difference over T independent tasks: ``(mean(d_t), sqrt(sum se_t^2) / T)``.

    grading.md 5.5; every task weighs the same regardless of its size. Tasks whose diff or se
    is ``nan`` are skipped; with none left the result is ``(nan, nan)``.
    """
    d, s = _diffs_ses(diffs, ses)
    if d.size == 0:
        return math.nan, math.nan
    return float(d.mean()), float(math.sqrt(float(np.sum(s**2))) / d.size)


# --------------------------------------------------------------------------------------------
# pairwise judge


def win_rate(
    w: ArrayLike, *, clusters: ArrayLike | None = None, level: float = 0.95
) -> tuple[float, float, float]:
    """Pairwise-judge win rate of the candidate with a t-interval: ``(rate, lo, hi)``.

    ``w_i`` in [0, 1] is the candidate's per-prompt score against the baseline averaged over
    both presentation orders (1 = win, 0.5 = tie, 0 = loss). grading.md 5.2 ("Pairwise
    judge"): ``rate = mean(w)``, SE by the CLT on ``w_i`` -- clustered by ``clusters`` when
    several rows share a prompt -- and ``rate +/- t_{df, (1+level)/2} * SE`` clipped to [0, 1];
    parity is ``rate = 0.5``. With two models Bradley-Terry reduces to this rate. With fewer than
    two prompts/clusters the interval is ``(nan, nan)``.
    """
    _check_level(level)
    w_ = _vector(w, "w")
    if np.any((w_ < 0) | (w_ > 1)):
        raise ValueError("win scores must lie in [0, 1]")
    inverse = _cluster_index(clusters, w_.size)
    rate = _mean(w_)
    se, units = _se_of_mean(w_, inverse)
    if units < 2:
        return rate, math.nan, math.nan
    half = float(_st.t.ppf((1 + level) / 2, units - 1)) * se
    return rate, max(0.0, rate - half), min(1.0, rate + half)


# --------------------------------------------------------------------------------------------
# verdicts


class Verdict(StrEnum):
    """Per-task (or overall) parity verdict; grading.md 5.3's decision table."""

    EQUIVALENT = "equivalent"
    BETTER = "better"
    WORSE = "worse"
    MATERIALLY_WORSE = "materially_worse"
    INCONCLUSIVE = "inconclusive"


def verdict(
    diff: float,
    ci90: tuple[float, float],
    ci95: tuple[float, float],
    margin: float,
) -> Verdict:
    """Classify a candidate - baseline difference (higher is better) against ``margin``.

    grading.md 5.3's decision table, checked in this order (the first match wins):

    1. ``materially_worse``: the 95% CI lies entirely below ``-margin`` (``ci95[1] < -margin``);
    2. ``equivalent``: the 90% CI lies inside ``(-margin, margin)`` (TOST at alpha = 0.05) --
       this wins over 3 and 4, so a difference that is statistically significant but smaller
       than the margin still counts as equivalent;
    3. ``worse``: the 95% CI lies entirely below 0;
    4. ``better``: the 95% CI lies entirely above 0;
    5. ``inconclusive``: anything else (the CI straddles a margin; more items are needed).

    ``ci90`` / ``ci95`` are the ``1 - 2 alpha`` and ``1 - alpha`` intervals at whatever alpha the
    caller uses. Any ``nan`` (too few items) gives ``inconclusive``.
    """
    _check_margin(margin)
    values = (diff, *ci90, *ci95)
    if any(not math.isfinite(v) for v in values):
        return Verdict.INCONCLUSIVE
    if ci95[1] < -margin:
        return Verdict.MATERIALLY_WORSE
    if -margin < ci90[0] and ci90[1] < margin:
        return Verdict.EQUIVALENT
    if ci95[1] < 0:
        return Verdict.WORSE
    if ci95[0] > 0:
        return Verdict.BETTER
    return Verdict.INCONCLUSIVE


def _json_value(v: Any) -> Any:
    if isinstance(v, Verdict):
        return v.value
    if isinstance(v, float | np.floating):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    if isinstance(v, tuple | list):
        return [_json_value(x) for x in v]
    return v


@dataclass(frozen=True)
class TaskComparison:
    """Everything the report needs about one task's candidate-vs-baseline comparison.

    ``diff = mean_a - mean_b`` (candidate minus baseline), ``se`` its (clustered) standard error,
    ``ci95`` / ``ci90`` paired percentile-bootstrap intervals at ``1 - alpha`` and ``1 - 2 alpha``
    (from the same replicates, so ``ci90`` nests in ``ci95``). ``p_mcnemar`` and the discordant
    counts ``b`` (candidate right, baseline wrong) / ``c`` (candidate wrong, baseline right) are
    set only for 0/1 scores; ``p_mcnemar`` is also ``None`` when rows cluster (repeats break
    McNemar's independence). ``p_tost`` / ``equivalent`` are the t-based TOST; ``verdict`` reads
    the bootstrap intervals (:func:`verdict`), so at small n the two can disagree right at the
    margin -- the t-based test is the more conservative. ``more_items_needed`` is 0 unless the
    verdict is ``inconclusive``, then :func:`items_to_settle` (``None`` when it cannot be
    estimated: fewer than two items). Undefined numbers are ``nan`` (``None`` in
    :meth:`to_dict`).
    """

    n: int
    n_clusters: int
    mean_a: float
    mean_b: float
    diff: float
    se: float
    ci95: tuple[float, float]
    ci90: tuple[float, float]
    p_mcnemar: float | None
    b: int | None
    c: int | None
    p_tost: float
    equivalent: bool
    verdict: Verdict
    more_items_needed: int | None
    margin: float
    alpha: float
    p_diff: float = math.nan  # two-sided p of "no difference", from the same method as the CIs
    method: str = ""  # how the intervals were made

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: floats (``nan`` -> ``None``), lists for intervals, verdict str."""
        return {k: _json_value(v) for k, v in asdict(self).items()}


def se_with_floor(se: float, n_clusters: int) -> float:
    """The SE used for verdicts on scores in [0, 1]: never below ``sqrt(3) / n``.

    Identical answers on every item give SE 0, and a zero-width interval would call 4 items
    "equivalent". By the rule of three (grading.md 5.1), seeing no discordant item among n is
    still consistent with a discordance rate up to 3/n, whose paired SE is sqrt(3/n / n) =
    sqrt(3)/n; below that floor the data cannot tell.
    """
    if n_clusters < 1 or not math.isfinite(se):
        return se
    return max(se, math.sqrt(3.0) / n_clusters)


def _widen(ci: tuple[float, float], diff: float, se: float, alpha: float, df: int
           ) -> tuple[float, float]:
    """The bootstrap interval, widened to at least the t interval of the floored SE."""
    if df < 1:
        return ci
    half = float(_st.t.ppf(1 - alpha / 2, df)) * se
    # Scores live in [0, 1], so a difference cannot leave [-1, 1] however wide the interval.
    return (max(-1.0, min(ci[0], diff - half)), min(1.0, max(ci[1], diff + half)))


def compare_scores(
    a: ArrayLike,
    b: ArrayLike,
    *,
    margin: float,
    alpha: float = 0.05,
    clusters: ArrayLike | None = None,
    iters: int = 10_000,
    seed: int | np.random.Generator = 0,
    binary: bool | None = None,
) -> TaskComparison:
    """Compare candidate scores ``a`` with baseline scores ``b`` on the same items.

    Bundles :func:`paired_difference`, the paired bootstrap (one set of ``iters`` replicates
    gives both the ``1 - alpha`` and ``1 - 2 alpha`` percentile intervals), :func:`tost`,
    :func:`mcnemar_exact`, :func:`verdict` and :func:`items_to_settle`; see
    :class:`TaskComparison` for the fields.

    ``binary``: ``None`` detects 0/1 scores automatically; ``True`` requires them (``ValueError``
    otherwise); ``False`` skips the McNemar test and discordant counts.

    ``n == 0``: every number is ``nan`` and there is no McNemar test; ``n == 1`` (or one
    cluster): ``diff`` is defined, the rest ``nan``. Both give verdict ``inconclusive`` and
    ``more_items_needed = None``.
    """
    _check_margin(margin)
    _check_alpha(alpha)
    a_, b_ = _pair(a, b)
    inverse = _cluster_index(clusters, a_.size)
    pd_ = paired_difference(a_, b_, clusters=clusters)

    is01 = bool(np.all((a_ == 0) | (a_ == 1)) and np.all((b_ == 0) | (b_ == 1)))
    if binary and not is01:
        raise ValueError("binary=True but the scores are not all 0 or 1")
    use_binary = a_.size > 0 and (is01 if binary is None else binary)
    p_mc: float | None = None
    n_b = n_c = None
    if use_binary:
        n_b = int(np.sum((a_ == 1) & (b_ == 0)))
        n_c = int(np.sum((a_ == 0) & (b_ == 1)))
        repeats = inverse is not None and pd_.n_clusters < pd_.n
        if not repeats:
            p_mc = mcnemar_exact(n_b, n_c)

    if use_binary and inverse is None and pd_.n >= 2:
        # Independent 0/1 pairs: Tango's score interval, exact enough at any n and never wider
        # than the data allow (no rule-of-three floor needed).
        se = pd_.se
        ci95 = tango_interval(n_b, n_c, pd_.n, level=1 - alpha)
        ci90 = tango_interval(n_b, n_c, pd_.n, level=1 - 2 * alpha)
        p_tost, p_diff, method = tango_tost(n_b, n_c, pd_.n, margin), tango_p(n_b, n_c, pd_.n), \
            "Tango score interval (paired 0/1)"
    else:
        # The rule-of-three floor is about unseen disagreements of 0/1 outcomes; continuous scores
        # get it only when they show no variation at all.
        se = se_with_floor(pd_.se, pd_.n_clusters) if use_binary or pd_.se == 0 else pd_.se
        if pd_.n_clusters >= 2:
            reps = _bootstrap_means(a_ - b_, inverse, iters, seed)
            ci95 = _widen(_percentile_ci(reps, 1 - alpha), pd_.diff, se, alpha, pd_.df)
            ci90 = _widen(_percentile_ci(reps, 1 - 2 * alpha), pd_.diff, se, 2 * alpha, pd_.df)
        else:
            ci95 = ci90 = (math.nan, math.nan)
        p_tost = _tost_from(pd_.diff, se, pd_.df, margin)
        p_diff = _t_two_sided(pd_.diff, se, pd_.df)
        method = "paired bootstrap" + (", clustered" if inverse is not None else "")

    v = verdict(pd_.diff, ci90, ci95, margin)
    more: int | None = 0
    if v is Verdict.INCONCLUSIVE:
        if use_binary and inverse is None and pd_.n >= 2 and not pd_.se > 0:
            # no disagreement seen: the items that perfect agreement needs at this margin
            more = max(0, items_for_equivalence(margin, alpha=alpha) - pd_.n)
        elif use_binary and inverse is None and pd_.n >= 2:
            more = items_to_settle(pd_.se * math.sqrt(pd_.n), margin, pd_.n, alpha=alpha)
        elif math.isfinite(se):
            sd_eff = se * math.sqrt(pd_.n)
            more = items_to_settle(sd_eff, margin, pd_.n, alpha=alpha)
        else:
            more = None

    return TaskComparison(
        n=pd_.n,
        n_clusters=pd_.n_clusters,
        mean_a=pd_.mean_a,
        mean_b=pd_.mean_b,
        diff=pd_.diff,
        se=se,
        ci95=ci95,
        ci90=ci90,
        p_mcnemar=p_mc,
        b=n_b,
        c=n_c,
        p_tost=p_tost,
        equivalent=bool(p_tost < alpha),
        verdict=v,
        more_items_needed=more,
        margin=float(margin),
        alpha=float(alpha),
        p_diff=p_diff,
        method=method,
    )


def _t_two_sided(diff: float, se: float, df: int) -> float:
    if df < 1 or not (math.isfinite(diff) and math.isfinite(se)):
        return math.nan
    if se == 0.0:
        return 0.0 if diff != 0 else 1.0
    return float(2 * _st.t.sf(abs(diff) / se, df))


def overall_verdict(rows: list[dict[str, Any]], *, alpha: float = 0.05) -> dict[str, Any]:
    """One verdict for a whole comparison that cannot contradict its rows.

    Each row (a task, or a fidelity bucket) brings its own verdict, its difference and the
    two-sided p-value of "no difference" from the same method as its intervals.

    - materially worse / worse: at least one row is worse (or materially worse) on its own AND
      stays significant after Holm's adjustment over all rows (Holm 1979): several tested rows
      cannot make one chance loss the verdict.
    - equivalent: every row is equivalent. Equivalence of all is an intersection-union test
      (Berger 1982, Technometrics 24:295): each row at alpha already gives the family alpha, so
      no adjustment is needed, and one undecided row keeps the whole undecided.
    - better: some row is better after Holm's adjustment and every other row is equivalent or
      better.
    - inconclusive otherwise, naming the rows that decide it.
    """
    named = [r for r in rows if r.get("task")]
    adjusted = holm([r["p_diff"] if r.get("p_diff") is not None else math.nan for r in named])
    adj = {r["task"]: (None if math.isnan(a) else float(a)) for r, a in zip(named, adjusted, strict=True)}

    def significant(r: dict) -> bool:
        return adj[r["task"]] is not None and adj[r["task"]] < alpha

    worse = [r for r in named if r["verdict"] in (Verdict.WORSE, Verdict.MATERIALLY_WORSE) and significant(r)]
    better = [r for r in named if r["verdict"] == Verdict.BETTER and significant(r)]
    undecided = [r["task"] for r in named if r["verdict"] != Verdict.EQUIVALENT and r not in worse + better]
    if worse:
        material = any(r["verdict"] == Verdict.MATERIALLY_WORSE for r in worse)
        v = Verdict.MATERIALLY_WORSE if material else Verdict.WORSE
        why = "worse after Holm's adjustment: " + ", ".join(r["task"] for r in worse)
    elif named and all(r["verdict"] == Verdict.EQUIVALENT for r in named):
        v, why = Verdict.EQUIVALENT, f"all {len(named)} rows equivalent within their margins"
    elif better and not undecided:
        v, why = Verdict.BETTER, "better after Holm's adjustment: " + ", ".join(r["task"] for r in better)
    else:
        v = Verdict.INCONCLUSIVE
        why = ("undecided: " + ", ".join(undecided)) if undecided else "no paired rows"
    return {"verdict": v.value, "why": why, "worse": [r["task"] for r in worse],
            "better": [r["task"] for r in better], "undecided": undecided, "holm_p": adj,
            "rows": len(named), "method": "per-row verdicts; worse/better need Holm-adjusted "
            "significance, equivalent needs every row equivalent"}
