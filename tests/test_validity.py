"""probe.report.validity: each precondition passes and fails where it should, on fabricated tidy tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from probe.report import validity


def _row(placement, seed, measure, value, x=math.nan, x_name="", mode=""):
    return dict(placement=placement, seed=seed, measure=measure, x_name=x_name, x=x, value=value, layer=-1,
                mode=mode, run_id=f"{placement}-{seed}")


def curves(placement: str, valid: list[float], train: list[float], seeds=range(6), jitter=0.01) -> list[dict]:
    rows = []
    for s in seeds:
        for e, (v, t) in enumerate(zip(valid, train), start=1):
            rows.append(_row(placement, s, "valid_ppl_epoch", v * (1 + jitter * s), e, "epoch"))
            rows.append(_row(placement, s, "train_ppl", t * (1 + jitter * s), e, "epoch"))
    return rows


def test_ppl(placement: str, mean: float, seeds=range(6), spread=0.02) -> list[dict]:
    return [_row(placement, s, "test_ppl", mean + spread * (s - 2.5)) for s in seeds]


test_ppl.__test__ = False  # a table builder, not a test


def recall(placement: str, by_lag: dict[int, float], chance: dict[int, float], seeds=range(6)) -> list[dict]:
    rows = []
    for s in seeds:
        for lag, acc in by_lag.items():
            rows.append(_row(placement, s, "recall_accuracy", acc + 0.01 * (s - 2.5), lag, "lag", "eval"))
            rows.append(_row(placement, s, "recall_accuracy_chance", chance[lag], lag, "lag"))
    return rows


OVERFIT_VALID = [6.0, 5.0, 4.5, 4.3, 4.4, 4.6]  # best at epoch 4, then rises
OVERFIT_TRAIN = [6.5, 5.0, 4.2, 3.8, 3.5, 3.2]
HEALTHY_VALID = [6.0, 5.0, 4.5, 4.3, 4.2, 4.15]  # still falling: no overfitting
HEALTHY_TRAIN = [6.5, 5.2, 4.6, 4.35, 4.25, 4.2]
CHANCE = {3: 0.15, 8: 0.12, 20: 0.11}


def table(*parts) -> pd.DataFrame:
    return pd.DataFrame([r for p in parts for r in p])


def test_overfitting_passes_when_validation_rises_above_training():
    check = validity.check_overfits(table(curves("none", OVERFIT_VALID, OVERFIT_TRAIN)))
    assert check.passed is True
    assert "6 of 6 seeds" in check.detail


def test_overfitting_fails_when_validation_keeps_falling():
    check = validity.check_overfits(table(curves("none", HEALTHY_VALID, HEALTHY_TRAIN)))
    assert check.passed is False and check.failure


def test_overfitting_fails_without_a_gap_even_if_validation_wobbles():
    valid = [6.0, 5.0, 4.5, 4.3, 4.4, 4.35]
    check = validity.check_overfits(table(curves("none", valid, [v * 1.0 for v in valid])))
    assert check.passed is False


def test_a_late_learning_rate_decay_does_not_hide_a_rise():
    valid = [6.0, 5.0, 4.5, 4.3, 4.45, 4.2]  # rose 3.5% at epoch 5, then a decay brought it below
    check = validity.check_overfits(table(curves("none", valid, OVERFIT_TRAIN)))
    assert check.passed is True


def test_overfitting_is_not_computable_without_the_reference():
    check = validity.check_overfits(table(curves("zaremba:p=0.3", OVERFIT_VALID, OVERFIT_TRAIN)))
    assert check.passed is None


def test_dropout_helps_needs_a_significantly_lower_test_perplexity():
    good = validity.check_dropout_helps(table(test_ppl("none", 4.0), test_ppl("zaremba:p=0.3", 3.7)))
    assert good.passed is True and "zaremba:p=0.3" in good.detail
    same = validity.check_dropout_helps(table(test_ppl("none", 4.0), test_ppl("zaremba:p=0.3", 4.0, spread=0.03)))
    assert same.passed is False
    worse = validity.check_dropout_helps(table(test_ppl("none", 3.7), test_ppl("naive:p=0.3,rec=0.3", 4.2)))
    assert worse.passed is False


def test_dropout_helps_fails_when_n_cannot_reach_significance():
    # 2 vs 2 seeds: the exact permutation test cannot go below 1/3; Welch's test needs two seeds a side.
    two = table(test_ppl("none", 4.0, seeds=range(2)), test_ppl("zaremba:p=0.3", 3.0, seeds=range(2)))
    check = validity.check_dropout_helps(two, test="permutation")
    assert check.passed is False and "too small" in check.detail
    one = table(test_ppl("none", 4.0, seeds=range(1)), test_ppl("zaremba:p=0.3", 3.0, seeds=range(1)))
    check = validity.check_dropout_helps(one, test="welch")
    assert check.passed is False and "too small" in check.detail


def test_memory_learned_needs_every_planted_lag_clearly_above_chance():
    learned = validity.check_memory_learned(table(recall("none", {3: 0.9, 8: 0.5, 20: 0.3}, CHANCE)))
    assert learned.passed is True
    lost = validity.check_memory_learned(table(recall("none", {3: 0.9, 8: 0.5, 20: 0.15}, CHANCE)))
    assert lost.passed is False and "lag 20" in lost.failure and "lag 3" not in lost.failure


def test_memory_learned_reads_only_the_model_without_dropout():
    rows = table(recall("none", {3: 0.9, 8: 0.12, 20: 0.11}, CHANCE),
                 recall("zaremba:p=0.3", {3: 0.99, 8: 0.99, 20: 0.99}, CHANCE))
    assert validity.check_memory_learned(rows).passed is False


def test_lag_span_needs_short_and_long_planted_lags():
    assert validity.check_lag_span(table(recall("none", {3: 0.9, 20: 0.3}, CHANCE))).passed is True
    assert validity.check_lag_span(table(recall("none", {3: 0.9, 8: 0.5}, CHANCE))).passed is False
    assert validity.check_lag_span(table(recall("none", {8: 0.5, 20: 0.3}, CHANCE))).passed is False


@pytest.mark.parametrize("best, passed", [(3.40, True), (3.47, True), (3.48, False), (4.0, False)])
def test_fitted_compares_the_best_placement_with_the_optimum(best, passed):
    rows = table(test_ppl("none", 4.2), test_ppl("zaremba:p=0.3", best, spread=0.0))
    check = validity.check_fitted(rows, optimum_ppl=3.155)
    assert check.passed is passed
    assert "zaremba:p=0.3" in check.detail and f"{100 * (best / 3.155 - 1):.3g}" in check.detail.replace("−", "-")


def test_converged_passes_for_a_plateau_and_fails_for_a_falling_curve():
    plateau = table(curves("zaremba:p=0.3", [5.0, 4.5, 4.3, 4.2, 4.19, 4.185], HEALTHY_TRAIN),
                    test_ppl("zaremba:p=0.3", 4.2))
    assert validity.check_converged(plateau).passed is True
    falling = table(curves("zaremba:p=0.3", [5.0, 4.5, 4.3, 4.1, 3.9, 3.7], HEALTHY_TRAIN),
                    test_ppl("zaremba:p=0.3", 3.7))
    assert validity.check_converged(falling).passed is False


def test_synthetic_corpora_get_memory_and_fit_checks_real_ones_convergence():
    synthetic = table(curves("none", OVERFIT_VALID, OVERFIT_TRAIN), test_ppl("none", 4.0),
                      test_ppl("zaremba:p=0.3", 3.5), recall("none", {3: 0.9, 8: 0.5, 20: 0.3}, CHANCE))
    keys = [c.key for c in validity.validity_checks(synthetic, optimum_ppl=3.155)]
    assert keys == ["overfits", "dropout_helps", "lag_span", "memory_learned", "fitted"]
    real = table(curves("none", OVERFIT_VALID, OVERFIT_TRAIN), test_ppl("none", 4.0), test_ppl("zaremba:p=0.3", 3.5))
    keys = [c.key for c in validity.validity_checks(real)]
    assert keys == ["overfits", "dropout_helps", "converged"]
    assert all(np.isin(c.verdict, ["pass", "fail", "not computable"]) for c in validity.validity_checks(real))


def test_a_run_that_diverged_in_its_first_epoch_does_not_break_the_checks():
    rows = curves("none", OVERFIT_VALID, OVERFIT_TRAIN, seeds=range(5))
    rows += curves("none", [math.nan] * 6, [math.inf] * 6, seeds=[5])
    rows += test_ppl("none", 4.0) + test_ppl("zaremba:p=0.3", 3.6)
    rows += curves("zaremba:p=0.3", [math.nan] * 6, [math.inf] * 6, seeds=[0])
    checks = validity.validity_checks(table(rows))
    assert checks[0].passed is True and "5 of 5 seeds" in checks[0].detail
    assert {c.key for c in checks} == {"overfits", "dropout_helps", "converged"}


def test_memory_is_not_computable_without_chance_rows():
    rows = [r for r in recall("none", {3: 0.9, 20: 0.3}, CHANCE) if r["measure"] != "recall_accuracy_chance"]
    assert validity.check_memory_learned(table(rows)).passed is None


def perturbed(placement: str, increase_at: dict[int, float], effective: float, seeds=range(6)) -> list[dict]:
    rows = []
    for s in seeds:
        for d, inc in increase_at.items():
            rows.append(_row(placement, s, "replaced_nll_increase", inc + 0.002 * (s - 2.5), d, "distance", "eval"))
        rows.append(_row(placement, s, "replaced_effective_context", effective + s, mode="eval"))
    return rows


def test_context_used_needs_a_loss_increase_beyond_the_distance_clearly_above_zero():
    used = validity.check_context_used(table(perturbed("zaremba:p=0.3", {20: 0.05, 50: 0.01}, 60)), "zaremba:p=0.3", 20)
    assert used.passed is True and "zaremba, p = 0.3" in used.title and "bootstrap 95% CI" in used.detail
    unused = validity.check_context_used(table(perturbed("zaremba:p=0.3", {20: 0.0, 50: 0.0}, 10)), "zaremba:p=0.3", 20)
    assert unused.passed is False
    unmeasured = validity.check_context_used(table(perturbed("zaremba:p=0.3", {50: 0.05}, 60)), "zaremba:p=0.3", 20)
    assert unmeasured.passed is None and "measured at d = 50, not at 20" in unmeasured.detail


def test_a_perturbation_measured_study_gets_the_context_check_at_its_level():
    # naive is tested against zaremba at its rate, which makes zaremba the memory reference checked
    rows = table(test_ppl("none", 4.0), test_ppl("zaremba:p=0.3", 3.7), perturbed("none", {20: 0.0, 100: 0.0}, 5),
                 perturbed("zaremba:p=0.3", {20: 0.05, 100: 0.0}, 60),
                 perturbed("naive:p=0.3,rec=0.3", {20: 0.0, 100: 0.0}, 5))
    words = {c.key: c for c in validity.validity_checks(rows)}
    chars = {c.key: c for c in validity.validity_checks(rows, context_distance=validity.CONTEXT_DISTANCE["char"])}
    assert words["context_used"].passed is True and chars["context_used"].passed is False
    assert "beyond 100 tokens" in chars["context_used"].title
