"""Can this study answer its question? Preconditions computed from the runs, each pass or fail with numbers.

A comparison of dropout placements says something about memory only in a
regime where dropout matters and memory is learned. These checks are
computed on every study from its tidy table (never from how the placements
compare on memory) and open its report:

- ``overfits``: without dropout the model overfits: at its best epoch its
  validation perplexity is at least ``OVERFIT_GAP`` times its training
  perplexity (mean across seeds, with the interval above 1), and its
  validation perplexity rises before training ends: in at least half the
  seeds some epoch's validation perplexity is at least ``RISE`` times the
  best one before it (a late learning-rate decay may bring it down again).
- ``dropout_helps``: at least one dropout placement reaches a significantly
  lower test perplexity than ``none`` (the study's deciding test, Holm-corrected).
- ``lag_span``: planted lags span short (at most ``SHORT_LAG``) to long (at
  least ``LONG_LAG``) dependencies.
- ``memory_learned``: the memory reference (``zaremba`` at the compared
  placements' rate; ``none`` where no placement has one) recalls planted
  copies at least ``RECALL_MARGIN`` above chance at every planted lag, with
  the interval's lower end above chance.
- ``fitted`` (corpora with a known optimum): the best placement's test
  perplexity is within ``FIT_TOLERANCE`` of the corpus's optimum.
- ``context_used`` (corpora measured with context perturbation): replacing
  everything farther than ``CONTEXT_DISTANCE`` tokens back (20 words, 100
  characters) raises the memory reference's loss, its t-interval above 0.
- ``converged`` (real corpora): the best placement's validation perplexity
  improved by less than ``CONVERGED`` over its last two epochs, or it peaked
  before the last epoch, so its budget did not cut it short.

Thresholds are module constants, stated in the report beside each check.
In a study of two regimes (``probe.analysis.regimes``) the regularisation
checks (overfits, dropout helps) read the regularisation regime's rows and
the memory checks (lag span, memory learned, fitted) the memory regime's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from probe.analysis import compare, inference
from probe.analysis.regimes import MEMORY, REGULARISATION, has_regimes, memory_reference_labels, regime_rows
from probe.analysis.verdicts import Verdict, deciding_pvalues, verdicts
from probe.placements import readable
from probe.report.text import fmt, fmt_p

OVERFIT_GAP = 1.05  # validation / training perplexity at the best epoch
RISE = 1.01  # an epoch's validation perplexity over the best before it
SHORT_LAG, LONG_LAG = 3, 20
RECALL_MARGIN = 0.10  # recall accuracy above chance
FIT_TOLERANCE = 0.10  # best test perplexity over the optimum, minus 1
CONVERGED = 0.01  # relative improvement over the last two epochs
NO_DROPOUT = "none"


@dataclass(frozen=True)
class Check:
    """One precondition: whether it holds (None: not computable from these runs) and the numbers."""

    key: str
    title: str  # what must hold, in plain words
    passed: bool | None
    detail: str  # the numbers behind the verdict
    failure: str  # what the report cannot claim when this fails, one plain sentence
    short: str = ""  # the failure as a clause for the headline ("without dropout the model does not overfit")
    values: dict = field(default_factory=dict)  # numbers other code reads (memory_learned: learned_lags)

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "fail", None: "not computable"}[self.passed]


def _placement_rows(tidy: pd.DataFrame, placement: str) -> pd.DataFrame:
    label = compare.reference_label(tidy["placement"].unique(), placement)
    return tidy[tidy["placement"] == label] if label is not None else tidy.iloc[0:0]


def _epoch_curves(rows: pd.DataFrame, measure: str) -> dict[int, pd.Series]:
    """Per seed, the measure by epoch without NaNs (a diverged epoch); seeds with nothing left are dropped."""
    sel = rows[rows["measure"] == measure]
    curves = {int(s): g.set_index("x")["value"].sort_index().dropna() for s, g in sel.groupby("seed")}
    return {s: c for s, c in curves.items() if len(c)}


def check_overfits(tidy: pd.DataFrame, reference: str = NO_DROPOUT) -> Check:
    title = "Without dropout the model overfits"
    failure = ("Without dropout the model does not overfit, so this regime gives dropout nothing to regularise "
               "and the report cannot say how much regularisation a placement buys.")
    rows = _placement_rows(tidy, reference)
    valid, train = _epoch_curves(rows, "valid_ppl_epoch"), _epoch_curves(rows, "train_ppl")
    seeds = sorted(set(valid) & set(train))
    if not seeds:
        return Check("overfits", title, None, f"no per-epoch perplexities of {reference!r} in these runs", failure)
    gaps, rises = [], []
    for s in seeds:
        v, t = valid[s], train[s]
        best = v.idxmin()
        gaps.append(v[best] / t[best])
        rises.append(float((v / v.cummin().shift(1)).max()) if len(v) > 1 else math.nan)
    gap = inference.mean_ci(gaps)
    rose = sum(r >= RISE for r in rises)
    passed = gap.mean >= OVERFIT_GAP and (gap.n < 2 or gap.low > 1.0) and rose >= len(seeds) / 2
    detail = (f"{reference}: validation over training perplexity at the best epoch {fmt(gap.mean, 3)} "
              f"(95% CI [{fmt(gap.low, 3)}, {fmt(gap.high, 3)}], needs ≥ {OVERFIT_GAP:g} with the interval above 1); "
              f"validation perplexity "
              f"rose ≥ {100 * (RISE - 1):g}% above its best so far in {rose} of {len(seeds)} seeds (largest rise "
              f"{fmt(100 * (np.nanmax(rises) - 1), 3)}%; needs at least half the seeds)")
    return Check("overfits", title, bool(passed), detail, failure)


def check_dropout_helps(tidy: pd.DataFrame, alpha: float = 0.05, reference: str = NO_DROPOUT, *,
                        test: str = "welch") -> Check:
    title = "Some dropout placement beats no dropout on test perplexity"
    failure = ("No dropout placement has a significantly lower test perplexity than none, so regularisation "
               "gained cannot be weighed against memory lost.")
    tests = compare.test_against_reference(tidy, reference, "test_ppl", alpha=alpha)
    if tests.empty:
        return Check("dropout_helps", title, None, f"no test perplexities of {reference!r} and another placement",
                     failure)
    tests = tests.assign(verdict=verdicts(tests, test=test, alpha=alpha))
    better = tests[tests["verdict"] == Verdict.BETTER].sort_values("mean")
    ref_mean = float(tests["mean_ref"].iloc[0])
    if len(better):
        best = better.iloc[0]
        detail = (f"{len(better)} of {len(tests)} placements significantly below {reference} ({fmt(ref_mean, 4)}); "
                  f"lowest: {best['placement']} {fmt(best['mean'], 4)} ({test}, Holm p = {fmt_p(deciding_pvalues(tests, test).loc[best.name])})")
    else:
        low = tests.sort_values("mean").iloc[0]
        detail = (f"none of {len(tests)} placements is significantly below {reference} ({fmt(ref_mean, 4)}); "
                  f"lowest: {low['placement']} {fmt(low['mean'], 4)} ({test}, Holm p = {fmt_p(deciding_pvalues(tests, test).loc[low.name])})")
        warning = low["warning"]
        if warning:
            detail += f"; {warning}"
    return Check("dropout_helps", title, bool(len(better)), detail, failure)


def planted_lags(tidy: pd.DataFrame) -> list[int]:
    rows = tidy[tidy["measure"] == "recall_accuracy"]
    return sorted(int(x) for x in rows["x"].dropna().unique())


def check_lag_span(tidy: pd.DataFrame) -> Check:
    title = f"Planted lags span short (≤ {SHORT_LAG}) to long (≥ {LONG_LAG}) dependencies"
    failure = f"The planted lags do not reach from {SHORT_LAG} to {LONG_LAG} tokens, so long memory is not tested."
    lags = planted_lags(tidy)
    if not lags:
        return Check("lag_span", title, None, "no planted copies in this corpus", failure)
    passed = lags[0] <= SHORT_LAG and lags[-1] >= LONG_LAG
    return Check("lag_span", title, passed, "planted lags: " + ", ".join(map(str, lags)), failure)


def check_memory_learned(tidy: pd.DataFrame, reference: str = NO_DROPOUT) -> Check:
    who = "Without dropout" if reference == NO_DROPOUT else f"With the memory reference {readable(reference)}"
    title = f"{who}, planted copies are recalled above chance at every planted lag"
    rows = _placement_rows(tidy, reference)
    recall = inference.per_seed(rows[rows["measure"] == "recall_accuracy"], by=("x",))
    chance = tidy[tidy["measure"] == "recall_accuracy_chance"].groupby("x")["value"].mean()
    if recall.empty or chance.empty:
        return Check("memory_learned", title, None, f"no recall (or chance) measurements of {reference!r}",
                     "Memory could not be checked.")
    parts, failed, learned = [], [], []
    for lag, g in recall.groupby("x"):
        ci = inference.mean_ci(g["value"])
        base = float(chance.get(lag, math.nan))
        ok = ci.mean >= base + RECALL_MARGIN and (ci.n < 2 or ci.low > base)
        parts.append(f"lag {lag:g}: {fmt(ci.mean, 2)} [{fmt(ci.low, 2)}, {fmt(ci.high, 2)}] vs chance {fmt(base, 2)}")
        (learned if ok else failed).append(int(lag))
    at = ", ".join(map(str, failed))
    failure = (f"{who} the model does not recall planted copies at lag {at} clearly above "
               f"chance, so memory at those lags is not learned and no placement can be said to lose it there.")
    detail = f"{reference} recall (needs ≥ chance + {RECALL_MARGIN:g}, interval above chance): " + "; ".join(parts)
    short = f"{who.lower()}, planted copies at lag {at} are not recalled clearly above chance"
    return Check("memory_learned", title, not failed, detail, failure, short,
                 {"learned_lags": learned, "failed_lags": failed})


CONTEXT_DISTANCE = {"word": 20, "char": 100}  # "beyond the recent sentence", in tokens of each level


def check_context_used(tidy: pd.DataFrame, reference: str, distance: int) -> Check:
    """The memory reference uses context beyond ``distance`` on natural text: replacing everything farther
    back (probe.measure.perturbation) raises its loss, with the t-interval across seeds above 0."""
    title = f"The memory reference {readable(reference)} uses context beyond {distance} tokens"
    failure = (f"The memory reference does not use context beyond {distance} tokens, so no placement can be "
               f"said to lose long-range memory on this text.")
    rows = _placement_rows(tidy, reference)
    at = rows[(rows["measure"] == "replaced_nll_increase") & np.isclose(rows["x"].astype(float), distance)]
    if at.empty:
        measured = sorted(rows.loc[rows["measure"] == "replaced_nll_increase", "x"].dropna().unique())
        why = (f"the perturbation was measured at d = {', '.join(f'{d:g}' for d in measured)}, not at {distance}"
               if measured else "no context-perturbation measurements")
        return Check("context_used", title, None, f"{readable(reference)}: {why}", failure)
    ci = inference.mean_ci(inference.per_seed(at, by=("placement",))["value"])
    effective = inference.per_seed(rows[rows["measure"] == "replaced_effective_context"], by=("placement",))
    eff = inference.bootstrap_ci(effective["value"], np.median) if len(effective) else None
    passed = ci.n >= 2 and ci.low > 0
    detail = (f"{readable(reference)}: replacing everything beyond {distance} tokens raises the loss by "
              f"{fmt(ci.mean, 3)} nats (95% CI [{fmt(ci.low, 3)}, {fmt(ci.high, 3)}], n = {ci.n}; needs the interval "
              f"above 0)")
    if eff is not None:
        detail += (f"; effective context (median over seeds) {fmt(eff.statistic, 3)} tokens, bootstrap 95% CI "
                   f"[{fmt(eff.low, 3)}, {fmt(eff.high, 3)}]")
    return Check("context_used", title, bool(passed), detail, failure)


def _best_placement(tidy: pd.DataFrame) -> tuple[str, inference.MeanCI] | None:
    est = {p: inference.mean_ci(inference.per_seed(g, by=("placement",))["value"])
           for p, g in tidy[tidy["measure"] == "test_ppl"].groupby("placement")}
    est = {p: e for p, e in est.items() if np.isfinite(e.mean)}
    if not est:
        return None
    best = min(est, key=lambda p: est[p].mean)
    return best, est[best]


def check_fitted(tidy: pd.DataFrame, optimum_ppl: float) -> Check:
    title = f"The best placement's test perplexity is within {FIT_TOLERANCE:.0%} of the corpus optimum"
    failure = ("The best model is far from the corpus optimum, so every model is underfitted and differences "
               "in memory may reflect what was not learned rather than what dropout removed.")
    best = _best_placement(tidy)
    if best is None or not math.isfinite(optimum_ppl):
        return Check("fitted", title, None, "no finite test perplexity or no known optimum", failure)
    name, ci = best
    ratio = ci.mean / optimum_ppl
    detail = (f"best: {name}, test perplexity {fmt(ci.mean, 4)} against the optimum {fmt(optimum_ppl, 4)}: "
              f"{fmt(100 * (ratio - 1), 3)}% above it (needs ≤ {FIT_TOLERANCE:.0%})")
    return Check("fitted", title, bool(ratio <= 1 + FIT_TOLERANCE), detail, failure)


def check_converged(tidy: pd.DataFrame) -> Check:
    title = "The best placement's training converged within its budget"
    failure = ("The best placement was still improving when training stopped, so the comparison reflects the "
               "training budget as much as the placements.")
    best = _best_placement(tidy)
    if best is None:
        return Check("converged", title, None, "no finite test perplexity", failure)
    name = best[0]
    curves = _epoch_curves(tidy[tidy["placement"] == name], "valid_ppl_epoch")
    gains, peaked = [], 0
    for v in curves.values():
        if len(v) >= 3:
            gains.append(1 - v.iloc[-1] / v.iloc[-3])
        peaked += v.idxmin() < v.index.max()
    if not gains:
        return Check("converged", title, None, f"{name}: fewer than three epochs", failure)
    gain = float(np.mean(gains))
    passed = gain < CONVERGED or peaked >= len(curves) / 2
    detail = (f"best: {name}; validation perplexity improved {fmt(100 * gain, 2)}% over its last two epochs "
              f"(needs < {CONVERGED:.0%}, or a peak before the last epoch in at least half the seeds: {peaked} of "
              f"{len(curves)})")
    return Check("converged", title, bool(passed), detail, failure)


SHORT = {
    "overfits": "without dropout the model does not overfit",
    "dropout_helps": "no dropout placement beats no dropout significantly on test perplexity",
    "lag_span": f"the planted lags do not span {SHORT_LAG} to {LONG_LAG} tokens",
    "memory_learned": "without dropout, planted copies are not recalled clearly above chance at every lag",
    "fitted": f"the best model is more than {FIT_TOLERANCE:.0%} above the corpus optimum",
    "converged": "the best placement was still improving when training stopped",
    "context_used": "the memory reference does not use context beyond the recent tokens",
}


def learned_lags(checks) -> list[int]:
    """The planted lags that every memory reference learned, by the ``memory_learned`` checks: the one
    answer the headline, the answer table and the claims read. A check that could not be computed shows
    no lag learned, so no placement is said to lose (or keep) memory on its account."""
    memory = [c for c in checks if c.key == "memory_learned"]
    if not memory:
        return []
    return sorted(set.intersection(*[set(c.values.get("learned_lags", ())) for c in memory]))


def validity_checks(tidy: pd.DataFrame, *, optimum_ppl: float | None = None, alpha: float = 0.05,
                    test: str = "welch", context_distance: int = CONTEXT_DISTANCE["word"]) -> list[Check]:
    """The checks that apply to this study's corpus: synthetic ones (with planted lags and a known
    optimum) get all but convergence; a real corpus gets overfitting, dropout helps and convergence.
    Each reads its regime's rows; the memory check is of every memory reference the study tests against."""
    fit, memory = regime_rows(tidy, REGULARISATION), regime_rows(tidy, MEMORY)
    checks = [check_overfits(fit), check_dropout_helps(fit, alpha, test=test)]
    if planted_lags(memory):
        checks.append(check_lag_span(memory))
        checks += [check_memory_learned(memory, ref) for ref in memory_reference_labels(memory["placement"].unique())]
    if (memory["measure"] == "replaced_nll_increase").any():
        checks += [check_context_used(memory, ref, context_distance)
                   for ref in memory_reference_labels(memory["placement"].unique())]
    if optimum_ppl is not None and math.isfinite(optimum_ppl):
        checks.append(check_fitted(memory, optimum_ppl))
    else:
        checks.append(check_converged(memory))
    checks = [c if c.short else replace(c, short=SHORT[c.key]) for c in checks]
    if has_regimes(tidy):
        where = {"overfits": REGULARISATION, "dropout_helps": REGULARISATION}
        checks = [replace(c, title=f"{where.get(c.key, MEMORY).capitalize()} regime: {c.title[:1].lower()}{c.title[1:]}")
                  for c in checks]
    return checks
