"""probe.analysis.inference against hand-worked examples and scipy."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from probe.report import text as report_text

from probe.analysis import compare, inference
from probe.analysis.verdicts import decide


def tidy_scalar(values: dict[str, list[float]], measure: str = "test_ppl") -> pd.DataFrame:
    """A tidy table with one scalar per placement and seed."""
    rows = [
        {"placement": p, "seed": s, "run_id": f"{p}-{s}", "measure": measure, "x_name": "", "x": np.nan,
         "value": v, "layer": -1, "mode": ""}
        for p, vs in values.items() for s, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


# --- intervals ---------------------------------------------------------------


def test_mean_ci_matches_scipy_t_interval():
    values = [83.6, 84.1, 83.9, 84.4, 83.7]
    res = inference.mean_ci(values, confidence=0.95)
    low, high = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert res.n == 5
    assert res.mean == pytest.approx(np.mean(values))
    assert res.sd == pytest.approx(np.std(values, ddof=1))
    assert (res.low, res.high) == pytest.approx((low, high))


def test_mean_ci_of_one_seed_has_no_interval():
    res = inference.mean_ci([3.0])
    assert res.mean == 3.0 and res.n == 1
    assert math.isnan(res.low) and math.isnan(res.high)
    assert inference.mean_ci([]).n == 0
    assert inference.mean_ci([1.0, np.nan, 3.0]).n == 2  # NaNs are dropped, not counted


def test_bootstrap_ci_is_seeded_and_matches_scipy_percentile():
    values = np.array([3.1, 4.0, 2.2, 5.5, 3.9, 4.4, 2.8])
    a = inference.bootstrap_ci(values, np.median, method="percentile", seed=7, n_resamples=2000)
    b = inference.bootstrap_ci(values, np.median, method="percentile", seed=7, n_resamples=2000)
    assert a == b
    ref = sps.bootstrap((values,), np.median, method="percentile", n_resamples=2000,
                        random_state=np.random.default_rng(7)).confidence_interval
    assert (a.low, a.high) == pytest.approx((ref.low, ref.high))
    assert a.statistic == np.median(values) and a.low <= a.statistic <= a.high


def test_bootstrap_ci_takes_any_statistic_and_falls_back_from_bca():
    res = inference.bootstrap_ci([1.0, 2.0, 4.0, 8.0], lambda v: float(np.max(v) - np.min(v)), n_resamples=500)
    assert res.statistic == 7.0 and res.low <= res.high
    assert math.isnan(inference.bootstrap_ci([1.0]).low)
    same = inference.bootstrap_ci([2.0, 2.0, 2.0])
    assert (same.low, same.high) == (2.0, 2.0)


# --- tests ---------------------------------------------------------------------


def test_welch_matches_scipy():
    a, b = [1.2, 2.3, 2.9, 4.1, 3.3], [2.0, 3.9, 4.4, 5.8, 4.9, 6.2]
    c = inference.compare(a, b, higher_is_better=True)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert c.t == pytest.approx(ref.statistic)
    assert c.p_welch == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)  # Welch-Satterthwaite interval of the difference of means
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))
    assert c.df == pytest.approx(ref.df)
    assert c.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (c.n, c.n_ref) == (5, 6)


def test_exact_permutation_p_on_a_hand_example():
    # Splits of {1,...,6} into two groups of 3: 20. The difference of means is (2 S_a - 21) / 3,
    # so a = {1,2,4} (S_a = 7) is beaten or matched downwards only by {1,2,3} (6) and itself (7):
    # one-sided p = 2/20, two-sided p = 2 * 2/20 = 0.2.
    assert inference.permutation_test([1, 2, 4], [3, 5, 6]).pvalue == pytest.approx(0.2)
    # Complete separation reaches the smallest possible value, 2 / C(6, 3) = 0.1.
    assert inference.permutation_test([1, 2, 3], [4, 5, 6]).pvalue == pytest.approx(0.1)


def test_exact_permutation_p_by_enumeration():
    a, b = [0.31, 0.52, 0.18, 0.44], [0.61, 0.47, 0.72, 0.58, 0.69]
    pooled = np.array(a + b)
    observed = np.mean(a) - np.mean(b)
    diffs = []
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        mask = np.zeros(len(pooled), bool)
        mask[list(idx)] = True
        diffs.append(pooled[mask].mean() - pooled[~mask].mean())
    diffs = np.array(diffs)
    eps = 1e-12
    p_less, p_greater = np.mean(diffs <= observed + eps), np.mean(diffs >= observed - eps)
    expected = min(1.0, 2 * min(p_less, p_greater))
    assert inference.permutation_test(a, b).pvalue == pytest.approx(expected)


def test_smallest_permutation_p():
    assert inference.min_permutation_p(3, 3) == pytest.approx(0.1)
    assert inference.min_permutation_p(5, 5) == pytest.approx(2 / 252)
    assert round(inference.min_permutation_p(5, 5), 4) == 0.0079
    assert inference.permutation_test(range(5), range(10, 15)).pvalue == pytest.approx(2 / 252)


def test_holm_on_known_examples():
    np.testing.assert_allclose(inference.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # By hand: sorted 0.01*5, 0.02*4, 0.03*3, 0.04*2 -> 0.08 raised to the running max 0.09, 0.05*1 -> 0.09.
    np.testing.assert_allclose(inference.holm([0.01, 0.02, 0.03, 0.04, 0.05]), [0.05, 0.08, 0.09, 0.09, 0.09])
    np.testing.assert_allclose(inference.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1


def test_holm_ignores_missing_p_values():
    out = inference.holm([0.01, np.nan, 0.04])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])
    assert inference.holm([]).shape == (0,)


def test_holm_is_not_benjamini_hochberg():
    p = [0.01, 0.02, 0.03, 0.04, 0.05]
    bh = sps.false_discovery_control(p)
    np.testing.assert_allclose(bh, [0.05] * 5)  # BH controls the false discovery rate: all at 0.05
    assert (inference.holm(p) > bh + 1e-12).any()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12))
def test_holm_properties(p):
    p = np.array(p)
    adjusted = inference.holm(p)
    assert np.all(adjusted >= p - 1e-15) and np.all(adjusted <= 1.0)
    assert np.all(adjusted >= sps.false_discovery_control(p) - 1e-12)  # Holm is never less conservative than BH
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= -1e-15)  # the order of the raw p-values is kept
    assert adjusted.min() == pytest.approx(min(1.0, p.min() * len(p)))


def test_hedges_g_on_a_hand_example():
    # a = (2, 4, 6), b = (1, 2, 3): means 4 and 2, variances 4 and 1, pooled variance (2*4 + 2*1)/4 = 2.5,
    # Cohen's d = 2 / sqrt(2.5); df = 4, J = Gamma(2) / (sqrt(2) Gamma(3/2)) = 2 / sqrt(2 pi).
    d = 2 / math.sqrt(2.5)
    j = 2 / math.sqrt(2 * math.pi)
    assert inference.hedges_g([2, 4, 6], [1, 2, 3]) == pytest.approx(d * j)
    assert j == pytest.approx(1 - 3 / (4 * 4 - 1), abs=0.003)  # the usual approximation
    assert inference.hedges_g([1, 2, 3], [2, 4, 6]) == pytest.approx(-d * j)
    assert math.isnan(inference.hedges_g([1], [2, 3]))


def test_probability_of_improvement_counts_ties_as_half():
    a, b = [1, 2, 3], [2, 2, 4]
    # higher is better: 3 beats 2 twice, 2 ties 2 twice -> (2 + 2 * 0.5) / 9
    assert inference.prob_improvement(a, b, higher_is_better=True) == pytest.approx(3 / 9)
    # lower is better: 1 beats all three, 2 and 3 beat 4, two ties -> (5 + 1) / 9
    assert inference.prob_improvement(a, b, higher_is_better=False) == pytest.approx(6 / 9)


def test_small_n_warning_for_three_seeds_not_five():
    assert "too small" in inference.compare([1, 2, 3], [4, 5, 6], higher_is_better=True).warning
    assert inference.compare([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], higher_is_better=True).warning == ""
    # Holm over 7 comparisons puts 0.0079 * 7 = 0.056 out of reach at 5 seeds; 6 seeds suffice.
    assert "Holm" in inference.small_n_warning(5, 5, comparisons=7)
    assert inference.seeds_needed(1) == 4 and inference.seeds_needed(7) == 6  # 2/C(8,4) = 0.029; 7 * 2/C(12,6) = 0.015
    assert inference.small_n_warning(6, 6, comparisons=7) == ""


def test_per_seed_averages_rows_within_a_seed_first():
    df = pd.DataFrame({
        "placement": ["a", "a", "a", "a", "b"], "seed": [0, 0, 1, 1, 0], "run_id": ["r0", "r0b", "r1", "r1", "q"],
        "measure": ["m"] * 5, "x_name": [""] * 5, "x": [np.nan] * 5, "value": [1.0, 3.0, 10.0, 20.0, 5.0],
        "layer": [-1] * 5, "mode": [""] * 5,
    })
    out = inference.per_seed(df)
    assert list(out.loc[out["placement"] == "a", "value"]) == [2.0, 15.0]
    assert len(out) == 3 and out["x"].isna().all()  # NaN x (scalars) kept as a group
    est = inference.estimate(df, by=("placement",))
    a = est[est["placement"] == "a"].iloc[0]
    assert a["n"] == 2 and a["mean"] == pytest.approx(8.5)  # mean of seed means, not of rows


def test_compare_takes_tidy_frames_and_aggregates_seeds():
    a = pd.DataFrame({"seed": [0, 0, 1, 2], "value": [1.0, 3.0, 4.0, 5.0]})
    b = pd.DataFrame({"seed": [0, 1, 2], "value": [7.0, 8.0, 9.0]})
    c = inference.compare(a, b, higher_is_better=False)
    assert (c.n, c.n_ref) == (3, 3)
    assert c.mean == pytest.approx((2 + 4 + 5) / 3)
    assert c.prob_improvement == 1.0


def test_against_reference_gives_one_row_per_placement_and_metric():
    rng = np.random.default_rng(1)
    values = {p: list(mu + rng.normal(size=5)) for p, mu in [("zaremba", 85), ("naive", 95), ("variational", 84)]}
    tidy = pd.concat([tidy_scalar(values, "test_ppl"), tidy_scalar(values, "valid_ppl")])
    out = compare.test_against_reference(tidy, "zaremba", ["test_ppl", "valid_ppl"])
    assert list(out.columns) == compare.TEST_COLUMNS
    assert len(out) == 4 and set(out["placement"]) == {"naive", "variational"}
    for _, g in out.groupby("metric"):
        np.testing.assert_allclose(g["p_holm"], inference.holm(g["p_perm"]))
        np.testing.assert_allclose(g["p_holm_welch"], inference.holm(g["p_welch"]))
    naive = out[(out["placement"] == "naive") & (out["metric"] == "test_ppl")].iloc[0]
    assert (naive["n"], naive["n_ref"]) == (5, 5)
    assert not naive["higher_is_better"] and naive["prob_improvement"] == 0.0
    assert naive["p_perm"] == pytest.approx(2 / 252) and naive["warning"] == ""
    welch = sps.ttest_ind(values["naive"], values["zaremba"], equal_var=False)
    assert naive["p_welch"] == pytest.approx(welch.pvalue)
    everything = compare.test_against_reference(tidy, "zaremba", ["test_ppl", "valid_ppl"], holm_within="all")
    np.testing.assert_allclose(everything["p_holm"], inference.holm(everything["p_perm"]))


def test_against_reference_selects_a_curve_point_and_the_direction():
    rows = []
    for p, scale in [("zaremba", 1.0), ("naive", 0.2)]:
        for s in range(3):
            for lag in (1, 10):
                rows.append({"placement": p, "seed": s, "run_id": f"{p}{s}", "measure": "influence_kl_retained",
                             "x_name": "lag", "x": float(lag), "value": scale / lag + 0.001 * s, "layer": -1,
                             "mode": "train"})
    tidy = pd.DataFrame(rows)
    with pytest.raises(ValueError, match="curve"):
        compare.test_against_reference(tidy, "zaremba", "influence_kl_retained")
    out = compare.test_against_reference(tidy, "zaremba", compare.Metric("influence_kl_retained", x=10))
    row = out.iloc[0]
    assert row["label"] == "share of influence kept under training masks at lag 10" and row["unit"] == ""
    assert row["higher_is_better"] and row["prob_improvement"] == 0.0
    assert row["mean"] == pytest.approx(0.02 + 0.001)
    assert "too small" in row["warning"]  # 3 vs 3


def permutation_verdicts(tests: pd.DataFrame) -> pd.DataFrame:
    return decide(tests, test="permutation", alpha=0.05)


def test_summarize_states_significant_findings_with_their_numbers():
    rng = np.random.default_rng(2)
    values = {"zaremba": list(0.05 + 0.001 * rng.normal(size=5)), "naive": list(0.012 + 0.001 * rng.normal(size=5))}
    tidy = tidy_scalar(values, "influence_kl_train_half_life")
    tests = permutation_verdicts(compare.test_against_reference(tidy, "zaremba", "influence_kl_train_half_life"))
    (sentence,) = report_text.summarize(tests)
    row = tests.iloc[0]
    assert sentence.startswith("naive loses memory relative to zaremba")
    for text in (report_text.fmt(row["mean"], 3), report_text.fmt(row["diff"], 3), report_text.fmt_p(row["p_holm"]), "n = 5 vs 5"):
        assert text in sentence


def test_summarize_says_plainly_when_nothing_can_be_significant():
    tidy = tidy_scalar({"zaremba": [85.0, 86.0, 84.0], "naive": [95.0, 96.0, 94.0]})
    (sentence,) = report_text.summarize(permutation_verdicts(compare.test_against_reference(tidy, "zaremba", "test_ppl")))
    assert "no test can reach significance" in sentence and "n = 3 vs 3" in sentence
    tidy = tidy_scalar({"zaremba": [85.0, 86.0, 84.0, 85.5, 84.5], "naive": [85.2, 85.9, 84.1, 85.1, 84.4]})
    (sentence,) = report_text.summarize(permutation_verdicts(compare.test_against_reference(tidy, "zaremba", "test_ppl")))
    assert "no placement differs significantly" in sentence
    assert report_text.summarize(pd.DataFrame(columns=compare.TEST_COLUMNS))[0].startswith("No comparisons")


def test_number_formatting():
    assert report_text.fmt(86.9) == "86.90" and report_text.fmt(-0.0123) == "−0.01230"
    assert report_text.fmt(float("nan")) == "–" and report_text.fmt(12345.6) == "12346"
    assert report_text.fmt(1.839e-10) == "1.839×10⁻¹⁰"
    assert report_text.fmt_p(2 / 252) == "0.0079" and report_text.fmt_p(0.1) == "0.10" and report_text.fmt_p(1e-7) == "< 0.0001"


def test_a_metric_at_an_unmeasured_x_is_an_error_not_a_silent_gap():
    tidy = pd.DataFrame({"placement": ["zaremba", "naive"], "seed": [0, 0], "run_id": ["a", "b"],
                         "measure": ["gradient_norm"] * 2, "x_name": ["lag"] * 2, "x": [1.0, 1.0], "value": [1.0, 2.0],
                         "layer": [-1, -1], "mode": ["", ""]})
    with pytest.raises(ValueError, match="measured at 1"):
        compare.test_against_reference(tidy, "zaremba", compare.Metric("gradient_norm", x=10))
    assert compare.test_against_reference(tidy, "zaremba", "test_ppl").empty  # an absent measure is skipped


def test_infinite_half_lives_are_kept_and_compared_by_rank():
    # A half-life beyond the measured lags is inf (right-censored): it must not vanish from n.
    a, b = [np.inf, np.inf, 30.0, np.inf, 25.0], [4.0, 5.0, 3.5, 4.5, 6.0]
    c = inference.compare(a, b, higher_is_better=True)
    assert (c.n, c.n_ref) == (5, 5) and c.mean == np.inf
    assert math.isnan(c.p_welch) and math.isnan(c.hedges_g)
    assert c.p_perm == pytest.approx(2 / 252)  # every a ranks above every b
    assert c.prob_improvement == 1.0
    assert "infinite" in c.warning
    assert math.isnan(inference.mean_ci([1.0, np.inf]).low)


def test_missing_seed_values_are_left_out_and_said():
    tidy = tidy_scalar({"zaremba": [1.0, 2.0, 3.0, 4.0], "naive": [2.0, np.nan, 4.0, 5.0]}, "effective_context")
    row = compare.test_against_reference(tidy, "zaremba", "effective_context").iloc[0]
    assert (row["n"], row["n_ref"]) == (3, 4)
    assert "1 seed value missing" in row["warning"]


def test_one_seed_gives_no_test():
    c = inference.compare([1.0], [2.0, 3.0, 4.0], higher_is_better=True)
    assert math.isnan(c.p_perm) and math.isnan(c.p_welch) and c.n == 1


def test_reference_is_found_by_its_canonical_spec():
    # probe.measure labels runs with the placement's full spec ("zaremba:p=0.5").
    labels = ["zaremba:p=0.5", "naive:p=0.5,rec=0.5"]
    assert compare.reference_label(labels, "zaremba") == "zaremba:p=0.5"
    assert compare.reference_label(["zaremba:p=0.3", "zaremba:p=0.5"], "zaremba") == "zaremba:p=0.5"
    assert compare.reference_label(["naive"], "zaremba") is None
    tidy = tidy_scalar({"zaremba:p=0.5": [1.0, 2.0, 3.0], "naive:p=0.5,rec=0.5": [2.0, 3.0, 4.0]})
    out = compare.test_against_reference(tidy, "zaremba", "test_ppl")
    assert list(out["reference"]) == ["zaremba:p=0.5"] and list(out["placement"]) == ["naive:p=0.5,rec=0.5"]


def test_measure_names_read_as_words():
    from probe.measure import names as measure_names

    assert measure_names.label("influence_kl_eval_half_life") == "eval-mode influence on the prediction (KL) half-life"
    assert measure_names.unit("influence_kl_eval_half_life") == "tokens"
    assert compare.Metric("influence_kl", x=10, mode="train").description == (
        "training-mode influence on the prediction (KL) at lag 10")
    assert compare.Metric("influence_kl", x=10).units == "nats"
    assert measure_names.label("something_new") == "something new"


def test_a_metric_of_an_unknown_measure_needs_an_explicit_direction():
    with pytest.raises(ValueError, match="higher_is_better"):
        compare.Metric("my_measure").better_is_higher
    assert compare.Metric("my_measure", higher_is_better=False).better_is_higher is False


def test_probability_of_improvement_counts_two_infinities_as_a_tie():
    assert inference.prob_improvement([np.inf, np.inf], [np.inf, 1.0], higher_is_better=True) == pytest.approx(0.75)
    assert inference.prob_improvement([np.inf], [np.inf], higher_is_better=False) == 0.5


def test_identical_samples_give_no_precision_warning_and_are_named_degenerate():
    import warnings as _warnings

    from probe.analysis.inference import compare as compare_groups
    from probe.analysis.inference import degenerate, welch

    same = np.full(6, 0.9947368421052631)
    varied = same + np.linspace(-0.01, 0.01, 6)
    with _warnings.catch_warnings():
        _warnings.simplefilter("error")  # scipy's "Precision loss occurred in moment calculation" would raise
        t, df = welch(varied, same)
        assert np.isfinite(t.pvalue) and np.isfinite(df)  # one constant group: Welch's test is still defined
        both, _ = welch(same, same.copy())
        assert np.isnan(both.pvalue) and degenerate(same, same.copy())
        c = compare_groups(same, same.copy(), higher_is_better=True)
    assert np.isnan(c.p_welch)
