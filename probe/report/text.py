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
from probe.analysis.verdicts import Verdict, is_better  # noqa: F401 (is_better re-exported: one definition)


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


def unreachable(tests: pd.DataFrame, alpha: float = 0.05) -> pd.Series:
    """Per row: True where the deciding test could never reach ``alpha`` at these seed counts: fewer than two
    seeds a side, or, for the exact permutation test, its smallest attainable p times the Holm family size."""
    if tests.empty:
        return pd.Series([], dtype=bool)
    too_few = (tests["n"].astype(float) < 2) | (tests["n_ref"].astype(float) < 2)
    if "decided_by" in tests and not tests["decided_by"].astype(str).str.startswith("permutation").all():
        return too_few
    k = tests.groupby("metric")["p_perm"].transform(lambda p: max(1, int(p.notna().sum())))
    return too_few | (tests["min_p"].astype(float) * k > alpha) | tests["min_p"].isna()


def decided(tests: pd.DataFrame) -> pd.Series:
    """Per row: whether its verdict is a significant difference (``probe.analysis.verdicts``)."""
    return tests["verdict"].astype(str) != Verdict.NOT_DISTINGUISHABLE.value


def deciding_test(tests: pd.DataFrame) -> str:
    """How sentences name the deciding test: "Holm-corrected Welch" or "Holm-corrected permutation"."""
    test = str(tests["decided_by"].iloc[0]).split(",")[0] if len(tests) and "decided_by" in tests else "permutation"
    return f"Holm-corrected {'Welch' if test == 'welch' else test}"


def deciding_p(row) -> float:
    """The Holm p-value behind a row's verdict."""
    by = str(row.get("decided_by", "permutation"))
    p = row["p_holm_welch"] if by.startswith("welch") else math.nan
    return float(p) if np.isfinite(p) else float(row["p_holm"])


def _unsettled(row) -> str:
    """", not settled: ..." for a verdict the headline does not state as a finding (``probe.analysis.verdicts``)."""
    if row["settled"]:
        return ""
    if row["fragile"]:
        return ", not settled: one seed left out changes it"
    return f", not settled: a replication would repeat it with probability {fmt(row['replication'], 2)}"


def _phrases(measure: str, better: bool) -> str:
    if measure_names.known(measure) and measure_names.lookup(measure).is_fit:
        return "has lower perplexity than" if better else "has higher perplexity than"
    return "keeps more memory than" if better else "loses memory relative to"


def summarize(tests: pd.DataFrame, *, alpha: float = 0.05, confidence: float = 0.95) -> list[str]:
    """Sentences stating what the tests show, drawn only from the tests table.

    One sentence per significant comparison (its ``verdict``, by the
    study's deciding test); otherwise a plain statement that nothing was
    significant, or that n was too small for significance to be possible,
    naming the largest observed effect as an estimate only.
    """
    if tests is None or tests.empty:
        return ["No comparisons were run (the reference placement or the tested measures are missing)."]
    level = f"{confidence:.0%}"
    by = deciding_test(tests)
    sentences = []
    for _, group in tests.groupby("label", sort=False):
        sig = group[decided(group)]
        for _, r in sig.sort_values("hedges_g").iterrows():
            better = is_better(r)
            unit = f" {r['unit']}" if r["unit"] else ""
            sentences.append(
                f"{r['placement']} {_phrases(r['measure'], better)} {r['reference']}: {r['label']} is "
                f"{fmt(r['mean'], 3)} vs {fmt(r['mean_ref'], 3)}{unit} (difference {fmt(r['diff'], 3)}, "
                f"{level} CI [{fmt(r['ci_low'], 3)}, {fmt(r['ci_high'], 3)}], {by} "
                f"p = {fmt_p(deciding_p(r))}{_unsettled(r)}, Hedges' g = {fmt(r['hedges_g'], 2)}, "
                f"n = {r['n']} vs {r['n_ref']})."
            )
        rest = group[~decided(group)]
        if len(sig) and len(rest):
            names = ", ".join(f"{r['placement']} (p = {fmt_p(deciding_p(r))})" for _, r in rest.iterrows())
            sentences.append(f"Not significantly different from {group['reference'].iloc[0]} on {group['label'].iloc[0]} "
                             f"after Holm correction: {names}.")
    impossible = tests[unreachable(tests, alpha)]
    for metric, group in tests.groupby("label", sort=False):
        if decided(group).any():
            continue
        blocked = group.index.isin(impossible.index)
        ns = sorted({(int(r["n"]), int(r["n_ref"])) for _, r in group.iterrows()})
        n_text = ", ".join(f"{a} vs {b}" for a, b in ns)
        if blocked.all() and "permutation" not in by:
            head = (f"{metric[:1].upper()}{metric[1:]}: with n = {n_text} seeds (fewer than two a side) no test is "
                    f"possible, so the differences are estimates, not findings.")
        elif blocked.all():
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
        sentences.append(head)
    return sentences
