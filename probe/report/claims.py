"""Each placement's published claim beside this study's verdict on it, and the test behind the verdict.

The claims and their sources are in docs/claims.md. A verdict reads the tests table and the validity
checks only: ``supported`` where the test the claim predicts is significant in its direction (for a
claim of *no* memory loss: no significant loss at any learned lag), ``contradicted`` where it is
significant the other way (a claimed harmless mask that loses memory; a claimed regulariser that raises
test perplexity), ``not shown`` where the difference the claim predicts is not significant at this n,
and ``not testable here`` where the placement was not run or the check its half needs failed.

The memory claims read the planted copies' log-probability at the learned lags on the synthetic language.
On natural text, which has no planted copies, they read the loss increase when the context beyond the
context check's distance is replaced (``probe.measure.perturbation``): a placement whose model uses
significantly less of that distant context than the memory reference's has lost memory. That test is
only read where the memory reference itself uses the distant context (the ``context_used`` check).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from probe.placements import placement_name
from probe.analysis.verdicts import Verdict
from probe.placements import readable
from probe.report.text import deciding_p, deciding_test, fmt, fmt_p
from probe.report.validity import Check, learned_lags

REGULARISES, COSTS_MEMORY, KEEPS_MEMORY = "regularises", "costs memory", "keeps memory"


@dataclass(frozen=True)
class Claim:
    placement: str  # registry name
    source: str
    claim: str
    kind: str  # REGULARISES, COSTS_MEMORY or KEEPS_MEMORY


CLAIMS = (
    Claim("zaremba", "Zaremba, Sutskever & Vinyals 2014",
          "Dropout on the non-recurrent connections only regularises an LSTM language model.", REGULARISES),
    Claim("naive", "Zaremba, Sutskever & Vinyals 2014",
          "Dropout on the recurrent connections (a fresh mask on h at every step) corrupts the information the "
          "LSTM carries through time.", COSTS_MEMORY),
    Claim("rnndrop", "Moon et al. 2015 (rnnDrop)",
          "One dropout mask per sequence on the memory cell keeps the memory usable.", KEEPS_MEMORY),
    Claim("variational", "Gal & Ghahramani 2016",
          "Tied (per-sequence) masks on inputs, outputs and the recurrent state regularise the recurrence.",
          REGULARISES),
    Claim("semeniuta", "Semeniuta, Severyn & Barth 2016",
          "Dropping the cell update g (not the cell) causes no memory loss, even with per-step masks.",
          KEEPS_MEMORY),
    Claim("zoneout", "Krueger et al. 2017",
          "Keeping previous values at random (zoneout) preserves the flow of information through time.",
          KEEPS_MEMORY),
    Claim("weight_drop", "Merity, Keskar & Socher 2018 (AWD-LSTM)",
          "DropConnect on the recurrent weights regularises without touching the state.", REGULARISES),
)


def _test_rows(tests: pd.DataFrame, measure: str, placement: str, lags: list[int] | None = None) -> pd.DataFrame:
    rows = tests[(tests["measure"] == measure) & (tests["placement"] == placement)]
    if lags is not None:
        rows = rows[rows["x"].astype(float).isin([float(k) for k in lags])]
    return rows


def _significant(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(significantly better, significantly worse) rows, by their verdicts."""
    return rows[rows["verdict"] == Verdict.BETTER.value], rows[rows["verdict"] == Verdict.WORSE.value]


def _describe(r) -> str:
    return (f"{r['label']}: {fmt(r['mean'], 3)} vs {readable(r['reference'])} {fmt(r['mean_ref'], 3)}, "
            f"{deciding_test(pd.DataFrame([r]))} p = {fmt_p(deciding_p(r))}"
            + ("" if r["settled"] else
               f" (not settled: {'one seed left out changes it' if r['fragile'] else 'a replication repeats it with probability ' + fmt(r['replication'], 2)})"))


def claim_verdicts(tests: pd.DataFrame, checks: list[Check], placements) -> list[dict]:
    """One row per claim: placement (the label tested), source, claim, verdict, the test behind it, whether
    one seed decides that test (``fragile``) and whether the tests behind the verdict are settled."""
    passed = {c.key: c.passed for c in checks}
    learned = learned_lags(checks)
    labels = {placement_name(p): str(p) for p in placements if placement_name(p) is not None}
    out = []
    for claim in CLAIMS:
        row = {"placement": labels.get(claim.placement, claim.placement), "source": claim.source,
               "claim": claim.claim}
        label = labels.get(claim.placement)
        if label is None:
            out.append(row | {"verdict": "not testable here", "test": "this placement was not run", "fragile": False,
                              "settled": False})
            continue
        if claim.kind == REGULARISES:
            if passed.get("overfits") is not True:
                out.append(row | {"verdict": "not testable here", "fragile": False, "settled": False,
                                  "test": "without dropout the model does not overfit, so nothing is regularised"})
                continue
            rows = _test_rows(tests, "test_ppl", label)
            better, worse = _significant(rows)
            verdict = "supported" if len(better) else "contradicted" if len(worse) else "not shown"
            test = _describe(rows.iloc[0]) if len(rows) else "no test perplexity test"
            out.append(row | {"verdict": verdict if len(rows) else "not testable here", "test": test,
                              "fragile": bool(len(rows) and rows["fragile"].astype(bool).any()),
                              "settled": bool(len(rows) and rows["settled"].astype(bool).all())})
            continue
        if learned:
            rows = _test_rows(tests, "copy_logprob", label, learned)
            if rows.empty:
                rows = _test_rows(tests, "recall_accuracy", label, learned)
            at = f"at learned lags {', '.join(map(str, learned))}"
        elif passed.get("context_used") is True:  # natural text: the distant context the reference uses
            rows = _test_rows(tests, "replaced_nll_increase", label)
            at = (f"the loss increase with the context beyond {fmt(rows['x'].iloc[0], 3)} tokens replaced"
                  if len(rows) else "")
        else:
            why = ("the memory reference uses no context beyond the recent tokens (context used: fail)"
                   if "context_used" in passed else "the memory reference did not learn the planted copies at any lag")
            out.append(row | {"verdict": "not testable here", "fragile": False, "settled": False, "test": why})
            continue
        if rows.empty:
            out.append(row | {"verdict": "not testable here", "test": "no memory test of this placement",
                              "fragile": False, "settled": False})
            continue
        better, worse = _significant(rows)
        if claim.kind == COSTS_MEMORY:
            verdict = "supported" if len(worse) else "contradicted" if len(better) else "not shown"
        else:  # KEEPS_MEMORY: a significant loss at any learned lag contradicts it
            verdict = "contradicted" if len(worse) else "supported"
        shown = worse if len(worse) else better if len(better) else rows.loc[
            rows.apply(deciding_p, axis=1).sort_values().index]
        test = f"{_describe(shown.iloc[0])} ({at}; {len(worse)} of {len(rows)} significantly lower)"
        # The verdict rests on the rows that decide it: a loss (worse), else a gain, else every lag's test.
        deciding = worse if len(worse) else better if len(better) else rows
        out.append(row | {"verdict": verdict, "test": test, "fragile": bool(deciding["fragile"].astype(bool).any()),
                          "settled": bool(deciding["settled"].astype(bool).all())})
    return out
