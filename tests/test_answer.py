"""probe.report.answer: the headline and answer table come from the tests and checks, and say no more than they allow."""

from __future__ import annotations

import numpy as np
import pandas as pd

from probe.analysis import compare
from probe.analysis.design import StudyDesign, run_tests
from probe.analysis.regimes import MEMORY, REGULARISATION
from probe.analysis.verdicts import decide
from probe.report.answer import AnswerColumn, answer_columns, answer_table, headline
from probe.report.validity import Check

LAGS = [3, 8, 20]
SEEDS = range(6)


def tidy() -> pd.DataFrame:
    """none regularises worst; zaremba lowers perplexity and keeps the copies; naive loses them at 8 and 20
    (recall and the copy's log-probability alike)."""
    truth = {
        "none": dict(ppl=4.0, recall={3: 0.9, 8: 0.6, 20: 0.4}),
        "zaremba:p=0.3": dict(ppl=3.7, recall={3: 0.9, 8: 0.6, 20: 0.4}),
        "naive:p=0.3,rec=0.3": dict(ppl=4.3, recall={3: 0.88, 8: 0.3, 20: 0.15}),
    }
    rows = []
    for placement, t in truth.items():
        for s in SEEDS:
            jitter = 0.01 * (s - 2.5)
            rows.append(dict(placement=placement, seed=s, measure="test_ppl", x_name="", x=np.nan,
                             value=t["ppl"] + jitter, layer=-1, mode=""))
            for lag, acc in t["recall"].items():
                for measure, value in (("recall_accuracy", acc), ("copy_logprob", acc)):
                    rows.append(dict(placement=placement, seed=s, measure=measure, x_name="lag", x=float(lag),
                                     value=value + jitter, layer=-1, mode="eval"))
    return pd.DataFrame(rows)


def comparisons(df: pd.DataFrame, test: str = "welch") -> pd.DataFrame:
    """Test perplexity against none; memory against each placement's memory reference (naive against zaremba)."""
    columns = tuple(c for c in answer_columns(LAGS, None) if (df["measure"] == c.metric.measure).any())
    fit = tuple(c.metric for c in columns if c.regime == REGULARISATION)
    memory = tuple(c.metric for c in columns if c.regime == MEMORY)
    return run_tests(df, StudyDesign(fit, memory, columns, tuple(LAGS), test=test))


def decided(tests: pd.DataFrame, test: str = "permutation") -> pd.DataFrame:
    """A bare tests table (compare.test_against_reference) with the verdicts a study would give it."""
    return decide(tests, test=test, alpha=0.05)


PASSING = [Check("overfits", "t", True, "", "f1"),
           Check("memory_learned", "t", True, "", "f2", values={"learned_lags": LAGS, "failed_lags": []})]


def test_headline_says_what_regularises_and_what_loses_memory_at_which_lags():
    sentences = headline(comparisons(tidy()), PASSING, reference="none", lags=LAGS)
    assert 2 <= len(sentences) <= 6
    text = " ".join(sentences)
    assert sentences[0].startswith("This study can answer its question")
    assert "settled lower with zaremba, p = 0.3" in text
    assert "settled higher with naive, p = 0.3" in text
    assert "lower, settled, at lag 8, 20 with naive, p = 0.3 (vs zaremba, p = 0.3)" in text  # its memory reference
    # zaremba's copies equal none's in every seed: not distinguishable, but a null result at 6 seeds is never
    # settled (a replication's z spreads around 0 with variance 2 and clears 1.96 in about 17% of cases).
    assert "no settled verdict" in text and "for zaremba, p = 0.3" in text
    assert ":p=" not in text  # prose names placements by name and rate, never by raw spec


def test_a_failed_check_is_stated_first_and_blocks_the_memory_claims():
    failed = [Check("overfits", "t", True, "", "f1"),
              Check("memory_learned", "t", False, "", "Memory is not learned at lag 20.", "short clause",
                    {"learned_lags": [3, 8], "failed_lags": [20]})]
    sentences = headline(comparisons(tidy()), failed, reference="none", lags=LAGS)
    assert sentences[0].startswith("This study cannot fully answer its question: short clause")
    text = " ".join(sentences)
    # Claims only where the memory reference learned the copies; the unlearned lag is named, with no claim.
    assert "lag 8 with naive, p = 0.3" in text and "lag 8, 20 with naive" not in text
    assert "at lag 20 the memory reference did not learn its copies" in text


def test_headline_admits_when_n_is_too_small():
    small = tidy()
    small = small[small["seed"] < 2]
    # 2 vs 2 seeds: the exact permutation test cannot go below 1/3, so it can never decide.
    sentences = headline(comparisons(small, "permutation"), PASSING, reference="none", lags=LAGS)
    assert any("cannot reach significance at this number of seeds" in s for s in sentences)
    assert not any("significantly lower with" in s for s in sentences)


def test_answer_table_marks_significant_differences_against_the_reference():
    df = tidy()
    table = answer_table(df, comparisons(df), answer_columns(LAGS, None), "none")
    assert table["headers"] == ["test perplexity"] + [f"copy log-prob above chance, lag {k}" for k in LAGS]
    assert table["against"] == ["none"] + ["zaremba at its rate"] * 3
    rows = {r["placement"]: r for r in table["rows"]}
    assert rows["none"]["reference"] and all(c["mark"] == "" for c in rows["none"]["cells"])
    assert rows["zaremba:p=0.3"]["cells"][0]["mark"] == "▲"  # lower perplexity is better
    assert [c["mark"] for c in rows["zaremba:p=0.3"]["cells"][1:]] == ["", "", ""]  # the same copies as none
    naive = [c["mark"] for c in rows["naive:p=0.3,rec=0.3"]["cells"]]
    assert naive[0] == "▼" and naive[2:] == ["▼", "▼"]  # perplexity vs none; copies vs zaremba
    assert abs(rows["zaremba:p=0.3"]["cells"][0]["mean"] - 3.7) < 1e-9


def test_infinite_values_take_their_direction_from_the_rank_test():
    # Half-lives beyond the measured lags are infinite; the difference of means is then undefined and the
    # permutation test compares ranks, so the mark follows P(better), not the NaN difference.
    rows = []
    for s in SEEDS:
        rows.append(dict(placement="none", seed=s, measure="influence_kl_eval_half_life", x_name="", x=np.nan,
                         value=np.inf if s == 0 else 1.0 + 0.1 * s, layer=-1, mode="eval"))
        rows.append(dict(placement="zaremba:p=0.3", seed=s, measure="influence_kl_eval_half_life", x_name="",
                         x=np.nan, value=np.inf, layer=-1, mode="eval"))
    df = pd.DataFrame(rows)
    metric = compare.Metric("influence_kl_eval_half_life", mode="eval")
    tests = decided(compare.test_against_reference(df, "none", [metric]), "welch")
    assert np.isnan(tests["diff"].iloc[0]) and tests["p_holm"].iloc[0] < 0.05
    assert np.isnan(tests["p_holm_welch"].iloc[0])  # Welch's test is undefined here: the rank test decides
    table = answer_table(df, tests, [AnswerColumn(metric, "influence half-life")], "none")
    zaremba = next(r for r in table["rows"] if r["placement"] == "zaremba:p=0.3")
    assert zaremba["cells"][0]["mark"] == "▲"


def test_holm_out_of_reach_is_called_unreachable_not_indistinguishable():
    # 5 vs 5 seeds: the smallest exact p is 0.0079, times 7 comparisons after Holm is 0.056 > 0.05.
    placements = ["none", "zaremba:p=0.3", "naive:p=0.3,rec=0.3", "variational:p=0.3,rec=0.3",
                  "semeniuta:p=0.3,rec=0.3", "zoneout:p=0.3,zc=0.3,zh=0.025", "weight_drop:p=0.3,w=0.3",
                  "rnndrop:p=0.3,cell=0.3"]
    rows = [dict(placement=p, seed=s, measure="test_ppl", x_name="", x=np.nan, value=4.0 - 0.1 * i + 0.01 * s,
                 layer=-1, mode="") for i, p in enumerate(placements) for s in range(5)]
    tests = decided(compare.test_against_reference(pd.DataFrame(rows), "none", ["test_ppl"]))
    sentences = headline(tests, PASSING, reference="none", lags=[])
    assert any("7 of 7 comparisons cannot reach significance" in s for s in sentences)


def test_without_checks_the_headline_claims_no_verdict():
    sentences = headline(comparisons(tidy()), [], reference="none", lags=LAGS)
    assert not any("can answer its question" in s for s in sentences)
