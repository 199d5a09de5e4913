"""Statistics over tidy measurement tables: seeds are the unit of replication.

Plain functions over arrays and DataFrames that return small named results,
in the style of ``scipy.stats``:

- ``per_seed`` averages repeated rows within a seed first; every interval
  and test below is computed across seeds, never across tokens or batches
  (token-level resampling measures evaluation noise, not seed variance).
- ``mean_ci`` is a t-interval across seeds; ``bootstrap_ci`` is for
  statistics that are not means (a median half-life, say).
- ``compare`` and ``test_against_reference`` put each placement beside a
  reference placement: Welch's t-test, an exact permutation test, Holm's
  correction, Hedges' g, the probability of improvement, n beside every test
  and a warning when n is too small for any test to reach significance.

With 3 seeds per group the smallest exact two-sided permutation p-value is
2 / C(6, 3) = 0.10, so no claim can be tested; with 5 seeds it is
2 / C(10, 5) = 0.0079. Use at least 5 seeds when a claim needs a test.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats



# The columns that identify one curve point of one run in a tidy table.
TIDY_KEYS = ("placement", "measure", "x_name", "x", "layer", "mode")
# Exact permutation tests enumerate every split up to this many; beyond, a seeded Monte Carlo test.
MAX_EXACT_PERMUTATIONS = 200_000


class MeanCI(NamedTuple):
    """A mean across seeds with its t-interval; the interval is NaN for n < 2."""

    mean: float
    low: float
    high: float
    n: int
    sd: float


class BootstrapCI(NamedTuple):
    """A statistic with its bootstrap interval across seeds."""

    statistic: float
    low: float
    high: float
    n: int
    method: str


class TestResult(NamedTuple):
    """A test statistic and its two-sided p-value."""

    __test__ = False  # not a pytest test class, whatever its name
    statistic: float
    pvalue: float


class Comparison(NamedTuple):
    """One group (a) beside a reference group (b), both as per-seed values."""

    n_ref: int
    n: int
    mean_ref: float
    mean: float
    diff: float  # mean - mean_ref
    ci_low: float  # Welch-Satterthwaite t-interval of the difference
    ci_high: float
    t: float
    df: float
    p_welch: float
    p_perm: float
    hedges_g: float
    prob_improvement: float  # P(a better than b), ties count one half
    min_p: float  # the smallest exact permutation p-value these n allow
    warning: str


def present_values(values) -> np.ndarray:
    """The values as a flat float array without NaNs; infinities stay (a half-life beyond the measured lags is inf)."""
    a = np.asarray(values, dtype=float).ravel()
    return a[~np.isnan(a)]


def _has_inf(*arrays) -> bool:
    return any(np.isinf(a).any() for a in arrays)


# --- aggregation ------------------------------------------------------------


def per_seed(df: pd.DataFrame, by: Sequence[str] = TIDY_KEYS) -> pd.DataFrame:
    """One row per group of ``by`` and seed: the mean over rows repeated within a seed.

    A seed is the unit of replication; several rows for the same seed (two
    evaluation passes, several run ids of one seed) are averaged before any
    interval is taken across seeds. Columns of ``by`` missing from ``df`` are
    ignored; NaN keys (``x`` for scalars) are kept as their own group.
    """
    keys = [c for c in by if c in df.columns and c != "seed"] + ["seed"]
    out = df.groupby(keys, dropna=False, sort=True)["value"].mean().reset_index()
    return out


def estimate(df: pd.DataFrame, by: Sequence[str] = TIDY_KEYS, confidence: float = 0.95) -> pd.DataFrame:
    """Per-seed aggregation, then a t-interval across seeds for every group of ``by``.

    Returns ``by`` columns plus mean, low, high, n, sd.
    """
    seeds = per_seed(df, by)
    keys = [c for c in by if c in seeds.columns and c != "seed"]
    rows = []
    for key, group in seeds.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **mean_ci(group["value"], confidence)._asdict()})
    return pd.DataFrame(rows, columns=[*keys, *MeanCI._fields])


# --- intervals --------------------------------------------------------------


def mean_ci(values, confidence: float = 0.95) -> MeanCI:
    """Mean and t-interval across seeds (NaNs dropped). n = 1 gives a NaN interval."""
    v = present_values(values)
    n = len(v)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, math.nan)
    with np.errstate(invalid="ignore"):
        mean = float(v.mean())
    if n == 1 or _has_inf(v):  # no interval from one seed, nor around an infinite value
        return MeanCI(mean, math.nan, math.nan, n, math.nan)
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, sd)


def bootstrap_ci(
    values,
    statistic: Callable[[np.ndarray], float] = np.median,
    *,
    confidence: float = 0.95,
    method: str = "BCa",
    n_resamples: int = 9999,
    seed: int = 0,
) -> BootstrapCI:
    """``statistic`` across seeds with a seeded bootstrap interval (scipy.stats.bootstrap).

    For statistics that are not means. BCa falls back to the percentile
    interval where it is undefined (all resamples equal, as with tiny n).
    Beware: with 3 seeds a nominal 95% bootstrap interval covers far less than
    95% of the time: it is roughly as wide as mean +- 1.6 s/sqrt(n), where the
    t-interval needs +- 4.30 s/sqrt(n). Prefer ``mean_ci`` where the statistic is a mean.
    """
    v = present_values(values)
    n = len(v)
    est = float(statistic(v)) if n else math.nan
    if n < 2 or np.all(v == v[0]):
        low = high = est if n >= 2 else math.nan
        return BootstrapCI(est, low, high, n, method)

    try:  # numpy reductions take axis= and run vectorised; anything else goes row by row
        statistic(v[None, :], axis=-1)
        vectorised = lambda s, axis: statistic(s, axis=axis)  # noqa: E731
    except TypeError:
        vectorised = lambda s, axis: np.apply_along_axis(statistic, axis, s)  # noqa: E731

    def run(m: str):
        return stats.bootstrap(
            (v,), vectorised, vectorized=True, confidence_level=confidence, method=m,
            n_resamples=n_resamples, random_state=np.random.default_rng(seed),
        ).confidence_interval

    used = method
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on degenerate resamples warns before returning NaN
        ci = run(method)
        if not (np.isfinite(ci.low) and np.isfinite(ci.high)) and method.lower() == "bca":
            used = "percentile"
            ci = run(used)
    return BootstrapCI(est, float(ci.low), float(ci.high), n, used)


# --- tests ------------------------------------------------------------------


def degenerate(a, b) -> bool:
    """Whether both samples are constant (to rounding, ``_variance``), so that no t-statistic exists."""
    a, b = present_values(a), present_values(b)
    if len(a) < 2 or len(b) < 2 or _has_inf(a, b):
        return False
    return _variance(a) == 0 and _variance(b) == 0


def welch(a, b) -> tuple[TestResult, float]:
    """Welch's t-test (unequal variances), two-sided, and its Satterthwaite degrees of freedom
    (NaN for a degenerate comparison: see ``degenerate``)."""
    a, b = present_values(a), present_values(b)
    if len(a) < 2 or len(b) < 2 or _has_inf(a, b) or degenerate(a, b):
        return TestResult(math.nan, math.nan), math.nan
    va, vb = _variance(a) / len(a), _variance(b) / len(b)
    if va + vb == 0:
        return TestResult(math.nan, math.nan), math.nan
    # Written out (scipy's ttest_ind warns of precision loss on a constant group, where its variance is
    # a rounding residue; here a constant group's variance is exactly 0).
    t = float((a.mean() - b.mean()) / math.sqrt(va + vb))
    df = (va + vb) ** 2 / ((va**2 / (len(a) - 1) if va else 0.0) + (vb**2 / (len(b) - 1) if vb else 0.0))
    return TestResult(t, float(2 * stats.t.sf(abs(t), df))), float(df)


def _variance(x: np.ndarray) -> float:
    """The sample variance, exactly 0 for a group whose values are equal to rounding."""
    scale = max(float(np.abs(x).max()), 1e-300)
    return 0.0 if float(np.ptp(x)) <= 1e-12 * scale else float(x.var(ddof=1))


def _mean_difference(x, y, axis):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def permutation_test(a, b, *, seed: int = 0, n_resamples: int = 99_999) -> TestResult:
    """Two-sided permutation test of the difference of means.

    Exact (every split of the pooled seeds) when there are at most
    MAX_EXACT_PERMUTATIONS splits, which covers every seed count a study
    runs; otherwise a seeded Monte Carlo test. The two-sided p-value is
    twice the smaller one-sided p-value (scipy's convention), so its
    smallest possible value is ``min_permutation_p(n_a, n_b)``. Where a
    value is infinite the test runs on the pooled ranks (ties averaged), so
    censored values count as larger than every finite one and tie each other.
    """
    a, b = present_values(a), present_values(b)
    if len(a) < 2 or len(b) < 2:  # scipy needs two per group; with one, p could not go below 2 / (n + 1) anyway
        return TestResult(math.nan, math.nan)
    if _has_inf(a, b):  # infinite values (censored half-lives): compare mean ranks instead of means
        ranks = stats.rankdata(np.concatenate([a, b]))
        a, b = ranks[: len(a)], ranks[len(a):]
    exact = math.comb(len(a) + len(b), len(a)) <= MAX_EXACT_PERMUTATIONS
    res = stats.permutation_test(
        (a, b), _mean_difference, permutation_type="independent", alternative="two-sided", vectorized=True,
        n_resamples=np.inf if exact else n_resamples, random_state=np.random.default_rng(seed),
    )
    return TestResult(float(res.statistic), float(res.pvalue))


def min_permutation_p(n_a: int, n_b: int) -> float:
    """The smallest exact two-sided permutation p-value with n_a and n_b seeds: 2 / C(n_a + n_b, n_a)."""
    if n_a < 1 or n_b < 1:
        return math.nan
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Sorted ascending, p_(i) is multiplied by (m - i + 1), the running maximum
    is taken so adjusted values keep the order of the raw ones, and they are
    capped at 1. NaNs stay NaN and do not count towards m. (Not BH:
    ``scipy.stats.false_discovery_control`` controls the false discovery
    rate, Holm the family-wise error rate, and Holm is never smaller.)
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def hedges_g(a, b) -> float:
    """Standardised mean difference (mean_a - mean_b) / pooled sd, with Hedges' exact small-sample factor.

    J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), df = n_a + n_b - 2
    (Hedges 1981; the familiar 1 - 3/(4 df - 1) approximates it). Infinite
    when the means differ and both groups have zero spread.
    """
    a, b = present_values(a), present_values(b)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2 or _has_inf(a, b):
        return math.nan
    df = na + nb - 2
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / df)
    diff = float(a.mean() - b.mean())
    if pooled == 0:
        return math.nan if diff == 0 else math.copysign(math.inf, diff)
    j = math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    return j * diff / pooled


def prob_improvement(a, b, *, higher_is_better: bool) -> float:
    """P(a random seed of a beats a random seed of b), ties counting one half (rliable's probability of improvement)."""
    a, b = present_values(a), present_values(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    # Comparisons, not differences: two infinite values (censored half-lives) tie instead of giving NaN.
    wins = a[:, None] > b[None, :] if higher_is_better else a[:, None] < b[None, :]
    ties = a[:, None] == b[None, :]
    return float((wins.sum() + 0.5 * ties.sum()) / wins.size)


def seeds_needed(comparisons: int = 1, alpha: float = 0.05) -> int:
    """The fewest seeds per group (equal groups) at which a Holm-corrected exact permutation test can reach ``alpha``."""
    n = 2
    while comparisons * min_permutation_p(n, n) > alpha:
        n += 1
    return n


def small_n_warning(n_a: int, n_b: int, *, alpha: float = 0.05, comparisons: int = 1) -> str:
    """Why no test can reach significance at ``alpha`` with these seed counts, or "" when one can.

    An exact permutation test cannot go below 2 / C(n_a + n_b, n_a); Holm's
    first step multiplies the smallest p-value by the number of comparisons.
    """
    floor = min_permutation_p(n_a, n_b)
    if not np.isfinite(floor):
        return f"n = {n_a} vs {n_b}: no test possible"
    need = seeds_needed(max(1, comparisons), alpha)
    if floor > alpha:
        return (
            f"n = {n_a} vs {n_b} is too small: the smallest possible exact permutation p-value is "
            f"{floor:.2g} > {alpha:g}, so no test can reach significance; {need} seeds per placement are needed"
        )
    if comparisons > 1 and floor * comparisons > alpha:
        return (
            f"n = {n_a} vs {n_b} with {comparisons} comparisons: the smallest possible Holm-corrected "
            f"permutation p-value is {min(1.0, floor * comparisons):.2g} > {alpha:g}; {need} seeds per placement are needed"
        )
    return ""


def compare(a, b, *, higher_is_better: bool, confidence: float = 0.95, alpha: float = 0.05, seed: int = 0) -> Comparison:
    """Group ``a`` against reference ``b``: every test and effect size this project reports.

    ``a`` and ``b`` are per-seed values (arrays or Series), or tidy frames
    with ``seed`` and ``value`` columns, which are first averaged per seed.
    """
    a, b = _seed_values(a), _seed_values(b)
    ma, mb = mean_ci(a, confidence), mean_ci(b, confidence)
    t, df = welch(a, b)
    with np.errstate(invalid="ignore"):
        diff = ma.mean - mb.mean
    if np.isfinite(df):
        half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        low, high = diff - half, diff + half
    else:
        low = high = math.nan
    return Comparison(
        n_ref=mb.n, n=ma.n, mean_ref=mb.mean, mean=ma.mean, diff=diff, ci_low=low, ci_high=high,
        t=t.statistic, df=df, p_welch=t.pvalue, p_perm=permutation_test(a, b, seed=seed).pvalue,
        hedges_g=hedges_g(a, b), prob_improvement=prob_improvement(a, b, higher_is_better=higher_is_better),
        min_p=min_permutation_p(ma.n, mb.n), warning=n_warnings(a, b, alpha=alpha),
    )


def n_warnings(a: np.ndarray, b: np.ndarray, *, alpha: float, comparisons: int = 1, missing: int = 0) -> str:
    notes = [small_n_warning(len(a), len(b), alpha=alpha, comparisons=comparisons)]
    if missing:
        notes.append(f"{missing} seed value{'s' if missing > 1 else ''} missing (NaN) and left out")
    if degenerate(a, b):
        notes.append("degenerate: every seed of both groups gives (nearly) the same value, so Welch's test, "
                     "the interval and Hedges' g are undefined; the permutation test compares the values as they are")
    if _has_inf(a, b):
        k = int(np.isinf(a).sum() + np.isinf(b).sum())
        notes.append(f"{k} of {len(a) + len(b)} values are infinite (beyond the measured range): the permutation "
                     f"test compares ranks; Welch's test, the interval and Hedges' g are undefined")
    return "; ".join(filter(None, notes))


def _seed_values(x) -> np.ndarray:
    if isinstance(x, pd.DataFrame):
        return present_values(x.groupby("seed")["value"].mean().to_numpy())
    return present_values(x)

