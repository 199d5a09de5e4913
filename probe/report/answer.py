"""The report's first screen: a headline of a few sentences and one answer table, drawn from the tests.

``headline`` states, in at most six sentences, whether the study can answer
its question (its validity checks), which placements regularise (test
perplexity against the reference), which keep memory at which planted lags,
how much influence survives each placement's own training masks, and what is
not distinguishable at this n. Every number in it comes from the tests
table; nothing is claimed that a failed check rules out.

``answer_table`` is one row per placement: test perplexity (against
``none``, in the regularisation regime), the log-probability of the planted
copy above chance at each planted lag, the marked source's influence on its
copy at the longest lag and the share of influence kept under training masks
(each against the placement's memory reference, in the memory regime), each
as mean [interval] with a mark where it differs significantly from the
reference its column names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from probe.analysis import compare, inference
from probe.analysis.regimes import MEMORY, REGULARISATION, regime_label, regime_rows
from probe.report.text import fmt, fmt_p, is_better, unreachable
from probe.report.validity import Check


@dataclass(frozen=True)
class AnswerColumn:
    """One column of the answer table: a tested metric and how its header reads."""

    metric: compare.Metric
    header: str
    regime: str = REGULARISATION  # whose rows it reads (in a study of two regimes)
    against: str = "none"  # the reference its marks are against, as the header says it


def _rows(tests: pd.DataFrame, measure: str, x: float | None = None, mode: str | None = None) -> pd.DataFrame:
    sel = tests[tests["measure"] == measure]
    if x is not None:
        sel = sel[np.isclose(sel["x"].astype(float), x)]
    if mode is not None and "metric" in sel:
        sel = sel[sel["metric"].str.contains(f"[{mode}]", regex=False)]
    return sel


def _names(rows: pd.DataFrame) -> str:
    return ", ".join(str(p) for p in rows["placement"])


def _significant(rows: pd.DataFrame, alpha: float, better: bool) -> pd.DataFrame:
    if rows.empty:
        return rows
    good = rows.apply(is_better, axis=1).astype(bool)
    return rows[(rows["p_holm"] < alpha) & (good if better else ~good)]


def headline(tests: pd.DataFrame, checks: list[Check], *, reference: str, lags: list[int],
             short_lag: int | None = None, alpha: float = 0.05) -> list[str]:
    """At most six sentences answering the question from the tests and checks (see the module docstring)."""
    failed = [c for c in checks if c.passed is False]
    unknown = [c for c in checks if c.passed is None]
    sentences = []
    if not checks:
        pass  # rendered without validity checks: no verdict to state
    elif not failed and not unknown:
        sentences.append("This study can answer its question: every validity check below passes.")
    elif failed:
        clauses = [c.short or c.title.lower() for c in failed]
        listed = clauses[0] if len(clauses) == 1 else "; ".join(clauses[:-1]) + "; and " + clauses[-1]
        sentences.append(f"This study cannot fully answer its question: {listed} (validity checks below).")
    else:
        sentences.append("Some validity checks could not be computed from these runs: "
                         + ", ".join(c.title.lower() for c in unknown) + ".")
    ppl = _rows(tests, "test_ppl")
    if len(ppl):
        better = _significant(ppl, alpha, True).sort_values("mean")
        worse = _significant(ppl, alpha, False)
        if len(better):
            best = better.iloc[0]
            text = (f"Against {reference}, test perplexity is significantly lower with {_names(better)} (best: "
                    f"{best['placement']}, {fmt(best['mean'], 4)} vs {fmt(best['mean_ref'], 4)}, Holm p = "
                    f"{fmt_p(best['p_holm'])})")
        else:
            text = f"No placement has a significantly lower test perplexity than {reference}"
        if len(worse):
            text += f"; it is significantly higher with {_names(worse)}"
        sentences.append(text + ".")
    if lags:
        memory = [c for c in checks if c.key == "memory_learned"]
        learned = [k for k in lags if all(k in c.values.get("learned_lags", lags) for c in memory)]
        unlearned = [k for k in lags if k not in learned]
        measure = "copy_logprob" if len(_rows(tests, "copy_logprob")) else "recall_accuracy"
        what = "the planted copy's log-probability" if measure == "copy_logprob" else "recall of planted copies"
        lost_at: dict[str, list[int]] = {}
        refs: dict[str, str] = {}
        for lag in learned:
            for _, r in _significant(_rows(tests, measure, lag), alpha, False).iterrows():
                lost_at.setdefault(str(r["placement"]), []).append(lag)
        for _, r in _rows(tests, measure).iterrows():
            refs[str(r["placement"])] = str(r["reference"])
        placements = [str(p) for p in compare.registry_order(refs)]
        kept = [p for p in placements if p not in lost_at]
        parts = []
        if placements and learned:
            listed = ", ".join(map(str, learned))
            where = f"at any planted lag ({listed})" if not unlearned else f"at lag {listed}"
            if kept:
                parts.append(f"against each placement's memory reference (zaremba at its rate; zaremba against "
                             f"none), {what} is not significantly lower {where} with {', '.join(kept)}")
            if lost_at:
                parts.append("it is significantly lower at " + "; ".join(
                    f"lag {', '.join(map(str, v))} with {p} (vs {refs[p]})" for p, v in lost_at.items()))
        if unlearned:
            parts.append(f"at lag {', '.join(map(str, unlearned))} the memory reference did not learn its "
                         f"copies, so no placement is said to lose memory there")
        if parts:
            text = "; ".join(parts)
            sentences.append(text[:1].upper() + text[1:] + ".")
    if short_lag is not None:
        retained = _rows(tests, "influence_kl_retained", short_lag)
        lost = _significant(retained, alpha, False).sort_values("mean")
        if len(lost):
            worst = lost.iloc[0]
            sentences.append(
                f"Under their own training masks, {_names(lost)} keep significantly less of their lag-{short_lag} "
                f"influence than their memory references (lowest: {worst['placement']}, {fmt(100 * worst['mean'], 3)}% "
                f"vs {worst['reference']}'s {fmt(100 * worst['mean_ref'], 3)}%).")
    undecided = tests[~(tests["p_holm"] < alpha)]
    blocked = tests[unreachable(tests, alpha)] if len(tests) else tests
    if len(blocked):
        sentences.append(f"{len(blocked)} of {len(tests)} comparisons cannot reach significance at this number of "
                         f"seeds; they are estimates, not findings.")
    elif len(tests):
        sentences.append(f"{len(undecided)} of {len(tests)} comparisons are not distinguishable from their "
                         f"references at α = {alpha:g} after Holm correction (listed below).")
    return sentences[:6]


MEMORY_REFERENCE = "zaremba at its rate"


def answer_columns(lags: list[int], short_lag: int | None) -> list[AnswerColumn]:
    """Regularisation against none, then memory cost against the memory reference."""
    columns = [AnswerColumn(compare.Metric("test_ppl"), "test perplexity", REGULARISATION, "none")]
    columns += [AnswerColumn(compare.Metric("copy_logprob", x=k, mode="eval"), f"copy log-prob above chance, lag {k}",
                             MEMORY, MEMORY_REFERENCE) for k in lags]
    if lags:
        columns.append(AnswerColumn(compare.Metric("source_influence", x=max(lags), mode="eval"),
                                    f"source influence on the copy, lag {max(lags)}", MEMORY, MEMORY_REFERENCE))
    if short_lag is not None:
        columns.append(AnswerColumn(compare.Metric("influence_kl_retained", x=short_lag, mode="train"),
                                    f"influence kept under masks, lag {short_lag}", MEMORY, MEMORY_REFERENCE))
    return columns


def answer_table(tidy: pd.DataFrame, tests: pd.DataFrame, columns: list[AnswerColumn], reference: str,
                 *, alpha: float = 0.05) -> dict:
    """{"headers": [...], "rows": [{"placement", "cells": [{mean, low, high, n, mark, p}]}]}; marks: "▲"/"▼"
    where the placement is significantly better/worse than the reference (Holm-corrected permutation test)."""
    present, values = [], {}
    for col in columns:
        try:
            values[col.header] = compare.metric_values(regime_rows(tidy, col.regime), col.metric)
        except ValueError:
            continue
        if len(values[col.header]):
            present.append(col)
    rows = []
    for placement in compare.registry_order(tidy["placement"].unique()):
        cells = []
        for col in present:
            v = values[col.header]
            ci = inference.mean_ci(v.loc[v["placement"] == placement, "value"])
            t = tests[(tests["metric"] == col.metric.name) & (tests["placement"] == placement)]
            if "regime" in t.columns:
                t = t[t["regime"] == regime_label(tidy, col.regime)]
            mark, p = "", None
            if len(t):
                r = t.iloc[0]
                p = r["p_holm"]
                if r["p_holm"] < alpha:
                    mark = "▲" if is_better(r) else "▼"
            cells.append({"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n, "mark": mark, "p": p})
        rows.append({"placement": placement, "reference": placement == reference, "cells": cells})
    return {"headers": [c.header for c in present], "rows": rows,
            "against": [c.against for c in present],
            "regimes": [regime_label(tidy, c.regime) for c in present]}
