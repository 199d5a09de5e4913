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
as mean [interval] with a mark where its verdict (``probe.analysis.verdicts``)
is a significant difference from the reference its column names, and a
second mark where that verdict is not settled (one seed decides it, or a
replication would repeat it with probability below 90%).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from probe.analysis import compare, inference
from probe.analysis.design import MEMORY_REFERENCE, AnswerColumn, StudyDesign, answer_columns  # noqa: F401
from probe.analysis.regimes import regime_label, regime_rows
from probe.analysis.verdicts import SETTLED, Verdict
from probe.placements import readable
from probe.report.text import deciding_p, deciding_test, fmt, fmt_p, unreachable
from probe.report.validity import Check, learned_lags


def _rows(tests: pd.DataFrame, measure: str, x: float | None = None, mode: str | None = None) -> pd.DataFrame:
    sel = tests[tests["measure"] == measure]
    if x is not None:
        sel = sel[np.isclose(sel["x"].astype(float), x)]
    if mode is not None:
        sel = sel[sel["mode"] == mode]
    return sel


def _names(rows: pd.DataFrame) -> str:
    return ", ".join(readable(p) for p in rows["placement"])


def _with(verdict: Verdict, rows: pd.DataFrame, *, settled: bool) -> pd.DataFrame:
    """The rows with ``verdict`` that are settled (``probe.analysis.verdicts``), or that are not."""
    if rows.empty:
        return rows
    return rows[(rows["verdict"] == verdict.value) & (rows["settled"].astype(bool) == settled)]


def _unsettled_clause(rows: pd.DataFrame) -> str:
    """", significantly ... but not settled with X, Y (...)": the verdicts a replication might not repeat."""
    if rows.empty:
        return ""
    rep = rows["replication"].astype(float)
    why = [f"a replication would repeat {'it' if len(rows) == 1 else 'each'} with probability "
           f"{fmt(rep.min(), 2)}{'' if len(rows) == 1 or rep.min() == rep.max() else ' to ' + fmt(rep.max(), 2)}"]
    if rows["fragile"].astype(bool).any():
        why.append("or one seed decides it")
    return f" but not settled with {_names(rows)} ({' '.join(why)})"


def _grouped(lags_by_placement: dict[str, list[int]]) -> str:
    """"zaremba, p = 0.3 and naive, p = 0.3 at lags 3, 8, 20; semeniuta, p = 0.3 at lags 8, 20"."""
    groups: dict[tuple, list[str]] = {}
    for p, lags in lags_by_placement.items():
        groups.setdefault(tuple(lags), []).append(readable(p))
    return "; ".join(f"{' and '.join(names)} at lag{'s' if len(lags) > 1 else ''} {', '.join(map(str, lags))}"
                     for lags, names in groups.items())


def headline(tests: pd.DataFrame, checks: list[Check], *, reference: str, lags: list[int],
             short_lag: int | None = None, alpha: float = 0.05) -> list[str]:
    """At most six sentences answering the question from the tests and checks (see the module docstring).
    Only settled verdicts are stated as findings; a significant verdict that one seed decides, or that a
    replication would repeat with probability below ``verdicts.SETTLED``, is named as not settled."""
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
    by = deciding_test(tests)
    ppl = _rows(tests, "test_ppl")
    if len(ppl):
        better = _with(Verdict.BETTER, ppl, settled=True).sort_values("mean")
        worse = _with(Verdict.WORSE, ppl, settled=True)
        shaky_better, shaky_worse = _with(Verdict.BETTER, ppl, settled=False), _with(Verdict.WORSE, ppl, settled=False)
        if len(better):
            best = better.iloc[0]
            text = (f"Against {readable(reference)}, test perplexity is settled lower with {_names(better)} "
                    f"(best: {readable(best['placement'])}, {fmt(best['mean'], 4)} vs {fmt(best['mean_ref'], 4)}, "
                    f"{by} p = {fmt_p(deciding_p(best))})")
            if len(shaky_better):
                text += "; significantly lower" + _unsettled_clause(shaky_better)
        elif len(shaky_better):
            text = f"Against {readable(reference)}, test perplexity is significantly lower" + \
                _unsettled_clause(shaky_better)
        else:
            text = f"No placement has a significantly lower test perplexity than {readable(reference)}"
        if len(worse):
            text += f"; it is settled higher with {_names(worse)}"
        if len(shaky_worse):
            text += "; significantly higher" + _unsettled_clause(shaky_worse)
        sentences.append(text + ".")
    if lags:
        learned = [k for k in lags if k in learned_lags(checks)]
        unlearned = [k for k in lags if k not in learned]
        measure = "copy_logprob" if len(_rows(tests, "copy_logprob")) else "recall_accuracy"
        what = "the planted copy's log-probability" if measure == "copy_logprob" else "recall of planted copies"
        lost_at: dict[str, list[int]] = {}
        shaky: dict[str, list[int]] = {}
        refs: dict[str, str] = {}
        for lag in learned:
            for _, r in _rows(tests, measure, lag).iterrows():
                if not r["settled"]:
                    shaky.setdefault(str(r["placement"]), []).append(lag)
                elif r["verdict"] == Verdict.WORSE.value:
                    lost_at.setdefault(str(r["placement"]), []).append(lag)
        for _, r in _rows(tests, measure).iterrows():
            refs[str(r["placement"])] = str(r["reference"])
        placements = [str(p) for p in compare.registry_order(refs)]
        kept = [p for p in placements if p not in lost_at and p not in shaky]
        parts = []
        if placements and learned:
            listed = ", ".join(map(str, learned))
            where = f"at any planted lag ({listed})" if not unlearned else f"at lag {listed}"
            if kept:
                parts.append(f"is not lower {where} with {', '.join(readable(p) for p in kept)} (settled)")
            if lost_at:
                parts.append("is lower, settled, at " + "; ".join(
                    f"lag {', '.join(map(str, v))} with {readable(p)} (vs {readable(refs[p])})"
                    for p, v in lost_at.items()))
            if shaky:
                parts.append(f"has no settled verdict (one seed decides it, or a replication would repeat it with "
                             f"probability below {SETTLED:.0%}) for {_grouped(shaky)}")
            parts = [f"Against each placement's memory reference (zaremba at its rate; zaremba against none), {what} "
                     + "; it ".join(parts)] if parts else []
        if unlearned:
            parts.append(f"at lag {', '.join(map(str, unlearned))} the memory reference did not learn its "
                         f"copies, so no placement is said to lose memory there")
        if parts:
            text = "; ".join(parts)
            sentences.append(text[:1].upper() + text[1:] + ".")
    if short_lag is not None:
        retained = _rows(tests, "influence_kl_retained", short_lag)
        lost = _with(Verdict.WORSE, retained, settled=True).sort_values("mean")
        if len(lost):
            worst = lost.iloc[0]
            sentences.append(
                f"Under their own training masks, {_names(lost)} keep less of their lag-{short_lag} influence than "
                f"their memory references, settled (lowest: {readable(worst['placement'])}, "
                f"{fmt(100 * worst['mean'], 3)}% vs {readable(worst['reference'])}'s "
                f"{fmt(100 * worst['mean_ref'], 3)}%).")
    if len(tests):
        undecided = tests[tests["verdict"] == Verdict.NOT_DISTINGUISHABLE.value]
        unsettled = tests[~tests["settled"].astype(bool)]
        blocked = tests[unreachable(tests, alpha)]
        if len(blocked):
            sentences.append(f"{len(blocked)} of {len(tests)} comparisons cannot reach significance at this number "
                             f"of seeds; they are estimates, not findings.")
        else:
            sentences.append(f"{len(undecided)} of {len(tests)} comparisons are not distinguishable from their "
                             f"references at α = {alpha:g} after Holm correction; {len(unsettled)} verdicts are not "
                             f"settled (one seed decides them, or a replication would repeat them with probability "
                             f"below {SETTLED:.0%}; listed below).")
    return sentences[:6]


NOT_WORSE = "not worse"  # a headline's "not significantly lower": better or not distinguishable


def stated_verdicts(tests: pd.DataFrame, learned: list[int], short_lag: int | None) -> pd.DataFrame:
    """The verdicts ``headline`` states as settled, one row each (regime, metric, placement, reference,
    stated): settled better or worse test perplexities; at each learned lag, a settled loss of the copy, or
    "not worse" for a placement whose every learned lag is settled without a loss; settled losses of
    influence under training masks. A replication agrees with the headline where it agrees with each."""
    rows = []

    def add(sel: pd.DataFrame, stated: str) -> None:
        for _, r in sel.iterrows():
            rows.append({"regime": r.get("regime", ""), "metric": r["metric"], "placement": r["placement"],
                         "reference": r["reference"], "stated": stated})

    ppl = _rows(tests, "test_ppl")
    add(_with(Verdict.BETTER, ppl, settled=True), Verdict.BETTER.value)
    add(_with(Verdict.WORSE, ppl, settled=True), Verdict.WORSE.value)
    measure = "copy_logprob" if len(_rows(tests, "copy_logprob")) else "recall_accuracy"
    memory = pd.concat([_rows(tests, measure, k) for k in learned]) if learned else tests.iloc[0:0]
    doubtful = (memory["verdict"] == Verdict.WORSE.value) | ~memory["settled"].astype(bool)
    add(_with(Verdict.WORSE, memory, settled=True), Verdict.WORSE.value)
    add(memory[~memory["placement"].isin(set(memory.loc[doubtful, "placement"]))], NOT_WORSE)
    if short_lag is not None:
        add(_with(Verdict.WORSE, _rows(tests, "influence_kl_retained", short_lag), settled=True), Verdict.WORSE.value)
    return pd.DataFrame(rows, columns=["regime", "metric", "placement", "reference", "stated"])


def answer_table(tidy: pd.DataFrame, tests: pd.DataFrame, columns, reference: str) -> dict:
    """{"headers": [...], "rows": [{"placement", "cells": [{mean, low, high, n, mark, p, fragile}]}]}; marks:
    "▲"/"▼" where the verdict is better/worse than the reference its column names, "?" beside one not settled."""
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
            mark, p, fragile, settled, replication = "", None, False, False, None
            if len(t):
                r = t.iloc[0]
                p, fragile, settled, replication = deciding_p(r), bool(r["fragile"]), bool(r["settled"]), r["replication"]
                mark = {Verdict.BETTER.value: "▲", Verdict.WORSE.value: "▼"}.get(str(r["verdict"]), "")
            cells.append({"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n, "mark": mark, "p": p,
                          "fragile": fragile, "settled": settled, "replication": replication})
        rows.append({"placement": placement, "reference": placement == reference, "cells": cells})
    return {"headers": [c.header for c in present], "rows": rows,
            "against": [c.against for c in present],
            "regimes": [regime_label(tidy, c.regime) for c in present],
            "test": deciding_test(tests)}
