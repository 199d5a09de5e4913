"""One typed definition of the placement study: what it tests, against which reference, in which regime,
and how a verdict is decided. The analysis (``run_tests``) and the report (answer table, headline, claims,
trade-off figure) read this one value.

The deciding test is Welch's t-test on per-seed values, Holm-corrected across the placements of each
metric (``docs/regime.md`` says how it was chosen: at 6 seeds an exact permutation test cannot go below
2 / C(12, 6) = 0.0022, so after Holm over 7 placements every significant verdict needs complete separation
of the seeds, and one seed crossing over flips it). The permutation p-values stay in the tests table.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from probe.analysis import compare, verdicts
from probe.analysis.regimes import MEMORY, NO_DROPOUT, REGULARISATION, regime_rows, two_reference_tests

MEMORY_REFERENCE = "zaremba at its rate"


@dataclass(frozen=True)
class AnswerColumn:
    """One column of the answer table: a tested metric, how its header reads, whose rows it reads and the
    reference its marks are against."""

    metric: compare.Metric
    header: str
    regime: str = REGULARISATION
    against: str = NO_DROPOUT


@dataclass(frozen=True)
class StudyDesign:
    """The study's question as data.

    ``fit_metrics`` are tested against ``fit_reference`` in the regularisation regime, ``memory_metrics``
    against each placement's memory reference in the memory regime; ``answer`` is the first screen's table
    (a subset of both). ``lags`` are the planted lags, ``short_lag`` the lag of the retained-influence metric.
    """

    fit_metrics: tuple[compare.Metric, ...]
    memory_metrics: tuple[compare.Metric, ...]
    answer: tuple[AnswerColumn, ...]
    lags: tuple[int, ...] = ()
    short_lag: int | None = None
    fit_reference: str = NO_DROPOUT
    test: str = "welch"
    alpha: float = 0.05

    def __post_init__(self):
        verdicts.deciding_column(self.test)  # an unknown test fails here, with the valid ones
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1); got {self.alpha}")

    def tradeoff(self, learned: list[int]) -> tuple[AnswerColumn, AnswerColumn | None]:
        """The trade-off figure's axes: regularisation (test perplexity) and the memory cost at the longest
        planted lag the memory reference learned (copy log-probability), or None where it learned none."""
        memory = [c for c in self.answer if c.metric.measure == "copy_logprob" and c.metric.x in learned]
        return self.answer[0], (memory[-1] if memory else None)


def answer_columns(lags, short_lag: int | None, fit_reference: str = NO_DROPOUT) -> tuple[AnswerColumn, ...]:
    """Regularisation against the fit reference, then memory cost against the memory reference."""
    columns = [AnswerColumn(compare.Metric("test_ppl"), "test perplexity", REGULARISATION, fit_reference)]
    columns += [AnswerColumn(compare.Metric("copy_logprob", x=k, mode="eval"), f"copy log-prob above chance, lag {k}",
                             MEMORY, MEMORY_REFERENCE) for k in lags]
    if lags:
        columns.append(AnswerColumn(compare.Metric("source_influence", x=max(lags), mode="eval"),
                                    f"source influence on the copy, lag {max(lags)}", MEMORY, MEMORY_REFERENCE))
    if short_lag is not None:
        columns.append(AnswerColumn(compare.Metric("influence_kl_retained", x=short_lag, mode="train"),
                                    f"influence kept under masks, lag {short_lag}", MEMORY, MEMORY_REFERENCE))
    return tuple(columns)


def placement_design(lags, short_lag: int, long_lag: int, *, fit_reference: str = NO_DROPOUT,
                     test: str = "welch", alpha: float = 0.05, context_distance: int = 20) -> StudyDesign:
    """The placement study's design: the answer table's metrics first, then the rest of the evidence. On
    natural text the memory half adds the loss increase from replacing the context beyond
    ``context_distance`` (``probe.measure.perturbation``), where it was measured."""
    lags = tuple(int(k) for k in lags)
    answer = answer_columns(lags, short_lag, fit_reference)
    fit = [c.metric for c in answer if c.regime == REGULARISATION] + [compare.Metric("valid_ppl")]
    memory = [c.metric for c in answer if c.regime == MEMORY]
    memory += [compare.Metric("source_influence", x=k, mode="eval") for k in lags[:-1]]
    memory += [compare.Metric("recall_accuracy", x=k, mode="eval") for k in lags]
    memory += [
        compare.Metric("influence_kl_eval_half_life", mode="eval"),
        compare.Metric("influence_kl", x=short_lag, mode="train",
                       label=f"training-mode influence at lag {short_lag}", unit="nats"),
        compare.Metric("influence_kl", x=long_lag, mode="eval",
                       label=f"evaluation-mode influence at lag {long_lag}", unit="nats"),
        compare.Metric("probe_bits", x=short_lag, mode="eval",
                       label=f"probe information about the token {short_lag} back (top layer)", unit="bits"),
        compare.Metric("effective_context", mode="eval"),
        compare.Metric("replaced_nll_increase", x=context_distance, mode="eval",
                       label=f"loss increase with the context beyond {context_distance} tokens replaced", unit="nats"),
    ]
    return StudyDesign(tuple(fit), tuple(memory), answer, lags, short_lag, fit_reference, test, alpha)


def measured(tidy: pd.DataFrame, metrics) -> list[compare.Metric]:
    """The metrics this table measured (a real corpus has no recall; a short max_lag no long lag)."""
    out = []
    for m in metrics:
        try:
            if len(compare.metric_values(tidy, m)):
                out.append(m)
        except ValueError:
            continue
    return out


def _tests(tidy: pd.DataFrame, design: StudyDesign) -> pd.DataFrame:
    return two_reference_tests(
        tidy, measured(regime_rows(tidy, REGULARISATION), design.fit_metrics),
        measured(regime_rows(tidy, MEMORY), design.memory_metrics), fit_reference=design.fit_reference,
        alpha=design.alpha)


def run_tests(tidy: pd.DataFrame, design: StudyDesign, *, fragile: bool = True) -> pd.DataFrame:
    """The study's tests table: every metric of ``design`` against its reference, with ``verdict`` (by the
    design's deciding test) and ``fragile`` (one seed left out changes it; skipped with ``fragile=False``)."""
    tests = _tests(tidy, design)
    if not fragile:
        return verdicts.decide(tests, test=design.test, alpha=design.alpha)
    return verdicts.with_verdicts(tidy, tests, lambda t: _tests(t, design), test=design.test, alpha=design.alpha)
