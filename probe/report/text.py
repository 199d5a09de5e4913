"""Numbers and sentences as reports print them, drawn only from the tests table.

``fmt``/``fmt_p``/``fmt_fixed`` format numbers; ``summarize`` states every
tested comparison in words (the collapsed list of a report). The headline
and validity checks of a study are built on these in ``probe.report.answer``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from probe.measure import names as measure_names

from probe.analysis import inference


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt(x: float, digits: int = 4) -> str:
    """A number as reports print it: ``digits`` significant figures (trailing zeros kept), a real minus
    sign, "–" for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x)).replace("-", "−")
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if 10**digits - 0.5 <= abs(x) < 1e9:  # large numbers (an untrained model's perplexity) as integers
        return f"{x:.0f}".replace("-", "−")
    text = f"{x:#.{digits}g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa.rstrip('.')}×10{str(int(exp)).translate(_SUPERSCRIPT)}"
    return text.rstrip(".").replace("-", "−")


def fmt_fixed(x: float, decimals: int = 2) -> str:
    """A number with a fixed count of decimals (probabilities), "–" for missing."""
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.{decimals}f}".replace("-", "−")


def fmt_p(p: float) -> str:
    """A p-value to two significant figures; very small ones as an inequality."""
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:#.2g}".rstrip(".")


def is_better(row) -> bool:
    """Whether a tests-table row's placement beats the reference: the sign of the mean difference, or,
    where it is undefined (infinite values, tested on ranks), which side of one half P(better) lies."""
    diff = float(row["diff"])
    if np.isfinite(diff):
        return (diff > 0) == bool(row["higher_is_better"])
    return float(row["prob_improvement"]) > 0.5


def unreachable(tests: pd.DataFrame, alpha: float = 0.05) -> pd.Series:
    """Per row: True where no permutation test could reach ``alpha`` at these seed counts after Holm's
    correction over its metric's comparisons (smallest attainable p times the family size)."""
    if tests.empty:
        return pd.Series([], dtype=bool)
    k = tests.groupby("metric")["p_perm"].transform(lambda p: max(1, int(p.notna().sum())))
    return (tests["min_p"].astype(float) * k > alpha) | tests["min_p"].isna()


def _phrases(measure: str, better: bool) -> str:
    if measure_names.known(measure) and measure_names.lookup(measure).is_fit:
        return "has lower perplexity than" if better else "has higher perplexity than"
    return "keeps more memory than" if better else "loses memory relative to"


def summarize(tests: pd.DataFrame, *, alpha: float = 0.05, confidence: float = 0.95) -> list[str]:
    """Sentences stating what the tests show, drawn only from the tests table.

    One sentence per significant comparison (Holm-corrected permutation p
    below ``alpha``); otherwise a plain statement that nothing was
    significant, or that n was too small for significance to be possible,
    naming the largest observed effect as an estimate only.
    """
    if tests is None or tests.empty:
        return ["No comparisons were run (the reference placement or the tested measures are missing)."]
    level = f"{confidence:.0%}"
    sentences = []
    for _, group in tests.groupby("label", sort=False):
        sig = group[group["p_holm"] < alpha]
        for _, r in sig.sort_values("hedges_g").iterrows():
            better = is_better(r)
            unit = f" {r['unit']}" if r["unit"] else ""
            sentences.append(
                f"{r['placement']} {_phrases(r['measure'], better)} {r['reference']}: {r['label']} is "
                f"{fmt(r['mean'], 3)} vs {fmt(r['mean_ref'], 3)}{unit} (difference {fmt(r['diff'], 3)}, "
                f"{level} CI [{fmt(r['ci_low'], 3)}, {fmt(r['ci_high'], 3)}], Holm-corrected permutation "
                f"p = {fmt_p(r['p_holm'])}, Hedges' g = {fmt(r['hedges_g'], 2)}, n = {r['n']} vs {r['n_ref']})."
            )
        rest = group[~(group["p_holm"] < alpha)]
        if len(sig) and len(rest):
            names = ", ".join(f"{r['placement']} (p = {fmt_p(r['p_holm'])})" for _, r in rest.iterrows())
            sentences.append(f"Not significantly different from {group['reference'].iloc[0]} on {group['label'].iloc[0]} "
                             f"after Holm correction: {names}.")
    impossible = tests[unreachable(tests, alpha)]
    for metric, group in tests.groupby("label", sort=False):
        if (group["p_holm"] < alpha).any():
            continue
        blocked = group.index.isin(impossible.index)
        ns = sorted({(int(r["n"]), int(r["n_ref"])) for _, r in group.iterrows()})
        n_text = ", ".join(f"{a} vs {b}" for a, b in ns)
        if blocked.all():
            floor = float(group["min_p"].min())
            k = int(group["p_perm"].notna().sum())
            after = f", {fmt_p(min(1.0, floor * k))} after Holm over {k} comparisons" if k > 1 else ""
            head = (f"{metric[:1].upper()}{metric[1:]}: with n = {n_text} seeds no test can reach significance at "
                    f"α = {alpha:g} (the smallest attainable permutation p-value is {fmt_p(floor)}{after}; "
                    f"{inference.seeds_needed(max(k, 1), alpha)} seeds per placement are needed), so the differences are "
                    f"estimates, not findings.")
        else:
            head = (f"{metric[:1].upper()}{metric[1:]}: no placement differs significantly from "
                    f"{group['reference'].iloc[0]} "
                    f"at α = {alpha:g} after Holm correction over {len(group)} comparisons (n = {n_text}).")
        biggest = group.loc[group["hedges_g"].abs().fillna(-1).idxmax()]
        if np.isfinite(biggest["hedges_g"]):
            unit = f" {biggest['unit']}" if biggest["unit"] else ""
            head += (f" The largest effect is {biggest['placement']}: {fmt(biggest['mean'], 3)} vs "
                     f"{fmt(biggest['mean_ref'], 3)}{unit} (Hedges' g = {fmt(biggest['hedges_g'], 2)}, "
                     f"permutation p = {fmt_p(biggest['p_perm'])} before correction).")
        welch_sig = group[group["p_holm_welch"] < alpha]
        if blocked.all() and len(welch_sig):
            names = ", ".join(str(p) for p in welch_sig["placement"])
            head += (f" Welch's t-test with Holm correction, which assumes roughly normal variation across seeds, "
                     f"puts {names} below {alpha:g}.")
        sentences.append(head)
    return sentences
