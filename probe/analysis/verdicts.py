"""What a test concludes, whether one seed decides it, and whether two studies conclude alike.

A comparison's *verdict* is one of ``Verdict``: the placement is significantly
better or worse than its reference (the design's deciding test, Holm-corrected,
below ``alpha``), or not distinguishable from it. Every reader of the tests
table (answer, headline, claims, figures) takes the verdict from the
``verdict`` column written here, never by comparing p-values again.

A verdict is *fragile* when leaving any one seed out of the study (out of both
groups: a seed number fixes the data order and the initial weights for every
placement) gives another verdict. Its *replication probability* is the chance
that an independent replication with as many seeds gives the same verdict,
predicted from the observed test statistic as Goodman (1992, "A comment on
replication, p-values and evidence", Statistics in Medicine 11) does: the
replication's z is normal around the observed one with variance 2 (both
studies carry sampling error), and it must clear the same Holm-corrected
threshold. A verdict is *settled* when it is not fragile and its replication
probability is at least ``SETTLED`` ("very likely" in the IPCC's calibrated
language, Mastrandrea et al. 2010); only settled verdicts are stated as
findings. ``agreement`` sets two studies' verdicts side by side.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats


class Verdict(str, Enum):
    BETTER = "better"
    WORSE = "worse"
    NOT_DISTINGUISHABLE = "not distinguishable"

    def __str__(self) -> str:
        return self.value


# The deciding test's Holm-corrected p-value column in the tests table (probe.analysis.compare).
DECIDING_COLUMN = {"welch": "p_holm_welch", "permutation": "p_holm"}
DECIDING_TESTS = tuple(DECIDING_COLUMN)
SETTLED = 0.9  # the replication probability a stated verdict needs
# What identifies one comparison across studies: the regime, the metric and who is compared with whom.
COMPARISON_KEYS = ("regime", "metric", "placement", "reference")


def deciding_column(test: str) -> str:
    if test not in DECIDING_COLUMN:
        raise ValueError(f"unknown deciding test {test!r}; valid: {', '.join(DECIDING_TESTS)}")
    return DECIDING_COLUMN[test]


def is_better(row) -> bool:
    """Whether a tests-table row's placement beats its reference: the sign of the mean difference, or,
    where it is undefined (infinite values, tested on ranks), which side of one half P(better) lies."""
    diff = float(row["mean"]) - float(row["mean_ref"])
    if np.isfinite(diff):
        return (diff > 0) == bool(row["higher_is_better"])
    return float(row["prob_improvement"]) > 0.5


def deciding_pvalues(tests: pd.DataFrame, test: str) -> pd.Series:
    """The Holm p-value that decides each row: the deciding test's, or the permutation test's where the
    deciding test is undefined (Welch's has no statistic for two constant groups or infinite values)."""
    p = tests[deciding_column(test)].astype(float)
    return p.fillna(tests["p_holm"].astype(float))


def verdicts(tests: pd.DataFrame, *, test: str, alpha: float) -> pd.Series:
    """Each row's Verdict from its deciding p-value (``deciding_pvalues``) and the metric's direction."""
    if tests.empty:
        return pd.Series([], dtype=object, index=tests.index)
    p = deciding_pvalues(tests, test)
    return pd.Series([Verdict.NOT_DISTINGUISHABLE if not p[i] < alpha
                      else Verdict.BETTER if is_better(r) else Verdict.WORSE
                      for i, r in tests.iterrows()], index=tests.index, dtype=object)


def _raw_column(test: str) -> str:
    return {"welch": "p_welch", "permutation": "p_perm"}[test]


def replication_probability(tests: pd.DataFrame, *, test: str, alpha: float) -> pd.Series:
    """Per row: the predicted probability that an independent replication (as many seeds) repeats its verdict.

    z = the normal quantile of the deciding test's two-sided p; the row's threshold z_c comes from the same
    Holm multiplier (Holm p / raw p) applied to alpha. A replication's z ~ N(z, 2) (Goodman 1992), so a
    significant verdict repeats with Phi((|z| - z_c) / sqrt 2) and a not-distinguishable one with
    Phi((z_c - |z|) / sqrt 2) - Phi((-z_c - |z|) / sqrt 2). Rows the deciding test leaves undefined use the
    permutation test's p-values (``deciding_pvalues``)."""
    if tests.empty:
        return pd.Series([], dtype=float, index=tests.index)
    raw = tests[_raw_column(test)].astype(float)
    holm = tests[deciding_column(test)].astype(float)
    fallback = holm.isna()
    raw = raw.where(~fallback, tests["p_perm"].astype(float))
    holm = holm.where(~fallback, tests["p_holm"].astype(float))
    with np.errstate(divide="ignore", invalid="ignore"):
        multiplier = (holm / raw).clip(lower=1.0).fillna(1.0)
    z = stats.norm.isf(raw.clip(lower=1e-300) / 2)
    z_c = stats.norm.isf(alpha / (2 * multiplier))
    significant = stats.norm.cdf((z - z_c) / np.sqrt(2))
    quiet = stats.norm.cdf((z_c - z) / np.sqrt(2)) - stats.norm.cdf((-z_c - z) / np.sqrt(2))
    out = np.where(holm < alpha, significant, quiet)
    return pd.Series(np.where(raw.isna(), np.nan, out), index=tests.index)


def fragility(tidy: pd.DataFrame, tests: pd.DataFrame, run_tests: Callable[[pd.DataFrame], pd.DataFrame], *,
              test: str, alpha: float) -> pd.Series:
    """Per row of ``tests``: whether leaving one seed out of ``tidy`` changes its verdict.

    ``run_tests`` recomputes the tests table from a tidy table (the same design); a comparison that
    cannot be computed without a seed (fewer than two seeds a side) counts as changed, so at two seeds
    every verdict is fragile.
    """
    if tests.empty:
        return pd.Series([], dtype=bool, index=tests.index)
    keys = [k for k in COMPARISON_KEYS if k in tests.columns]
    full = tests.assign(verdict=verdicts(tests, test=test, alpha=alpha)).set_index(keys)["verdict"]
    fragile = pd.Series(False, index=full.index)
    for seed in sorted(tidy["seed"].unique()):
        left = run_tests(tidy[tidy["seed"] != seed])
        if left.empty:
            return pd.Series(True, index=tests.index)
        other = left.assign(verdict=verdicts(left, test=test, alpha=alpha))
        # Without this seed a side has fewer than two seeds: no test at all, so the verdict does not hold.
        other.loc[(other["n"] < 2) | (other["n_ref"] < 2), "verdict"] = None
        fragile |= other.set_index(keys)["verdict"].reindex(full.index).ne(full)
    return pd.Series(fragile.to_numpy(), index=tests.index)


def decide(tests: pd.DataFrame, *, test: str, alpha: float, fragile=False) -> pd.DataFrame:
    """``tests`` with its ``verdict``, ``fragile`` (as given: False when not examined), ``replication`` (the
    predicted replication probability), ``settled`` and ``decided_by`` columns."""
    rep = replication_probability(tests, test=test, alpha=alpha)
    fragile = pd.Series(fragile, index=tests.index, dtype=bool)
    return tests.assign(verdict=verdicts(tests, test=test, alpha=alpha).astype(str), fragile=fragile,
                        replication=rep, settled=~fragile & (rep >= SETTLED),
                        decided_by=f"{test}, Holm, α = {alpha:g}")


def with_verdicts(tidy: pd.DataFrame, tests: pd.DataFrame, run_tests: Callable[[pd.DataFrame], pd.DataFrame], *,
                  test: str, alpha: float) -> pd.DataFrame:
    """``decide`` with ``fragile`` examined (``fragility``)."""
    return decide(tests, test=test, alpha=alpha, fragile=fragility(tidy, tests, run_tests, test=test, alpha=alpha))


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Two studies' verdicts on every comparison both made: the comparison keys, ``label``, ``verdict_a``,
    ``fragile_a``, ``verdict_b``, ``fragile_b`` and ``agree``. Comparisons only one study made are left out
    (``agreement_summary`` counts them)."""
    keys = [k for k in COMPARISON_KEYS if k in a.columns and k in b.columns]
    cols = [*keys, "label", "verdict", "fragile", "settled"]
    left = a[[c for c in cols if c in a.columns]]
    right = b[[c for c in cols if c in b.columns]].drop(columns=["label"], errors="ignore")
    both = left.merge(right, on=keys, suffixes=("_a", "_b"))
    both["agree"] = both["verdict_a"] == both["verdict_b"]
    return both.reset_index(drop=True)


def agreement_summary(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Counts behind ``agreement``: compared, agreeing, the rate, and comparisons only one study made."""
    table = agreement(a, b)
    n = len(table)
    agree = int(table["agree"].sum()) if n else 0
    settled_a, settled_b = table[table["settled_a"].astype(bool)], table[table["settled_b"].astype(bool)]
    return {"compared": n, "agree": agree, "rate": agree / n if n else float("nan"),
            "only_a": len(a) - n, "only_b": len(b) - n,
            "settled_a": len(settled_a), "settled_a_agree": int(settled_a["agree"].sum()),
            "settled_b": len(settled_b), "settled_b_agree": int(settled_b["agree"].sum())}
