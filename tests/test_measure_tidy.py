"""probe.measure: the shared table format, curve summaries and configuration checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probe.measure import COLUMNS, MeasureConfig, decay_rate, half_life, validate
from probe.measure import tidy
from probe.measure.context import position_bins
from probe.measure.gradient import CURVES as GRADIENT_CURVES
from probe.measure.influence import CURVES as INFLUENCE_CURVES
from probe.measure.probe_info import CURVES as PROBE_CURVES
from probe.measure.curves import NOISE_FLOORS, noise_floor, with_summaries


def test_frame_has_exactly_the_shared_columns_in_order_with_ids():
    df = tidy.frame(
        [tidy.row("influence_kl", "lag", 1, 0.5, mode="eval"), tidy.scalar("effective_context", 20.0)],
        {"placement": "zaremba", "seed": 3, "run_id": "abc"},
    )
    assert tuple(df.columns) == COLUMNS
    assert COLUMNS == ("measure", "x_name", "x", "value", "layer", "mode", "placement", "seed", "run_id")
    assert df["x"].dtype == np.float64 and df["value"].dtype == np.float64
    assert df["layer"].dtype == np.int64 and df["seed"].dtype == np.int64
    assert list(df["placement"]) == ["zaremba", "zaremba"] and list(df["run_id"]) == ["abc", "abc"]
    assert math.isnan(df.loc[1, "x"]) and df.loc[1, "x_name"] == "" and df.loc[1, "layer"] == -1
    validate(df)


def test_missing_ids_get_defaults_and_extra_ids_become_columns():
    df = tidy.frame([tidy.row("context_ppl", "context_length", 5, 80.0)], {"corpus": "ptb"})
    assert tuple(df.columns) == COLUMNS + ("corpus",)
    assert (df["placement"].iloc[0], df["seed"].iloc[0], df["run_id"].iloc[0]) == ("", -1, "")


def test_ids_cannot_overwrite_measurement_columns():
    with pytest.raises(ValueError, match="ids may not name"):
        tidy.frame([], {"value": 1})


def test_validate_rejects_tables_of_another_format():
    good = tidy.frame([tidy.row("influence_kl", "lag", 1, 0.5)])
    with pytest.raises(ValueError, match="lacks columns"):
        validate(good.drop(columns="mode"))
    with pytest.raises(ValueError, match="x_name"):
        validate(good.assign(x_name="time"))
    with pytest.raises(ValueError, match="NaN exactly"):
        validate(good.assign(x=np.nan))


def test_half_life_is_the_number_of_lags_to_halve_from_lag_one():
    # Half-life in its usual sense: steps to halve, not the lag where the curve is halved.
    assert half_life([1, 2, 3], [4.0, 2.0, 1.0]) == pytest.approx(1.0)  # halves every lag
    assert half_life([2, 3, 4], [4.0, 2.0, 1.0]) == pytest.approx(1.0)  # counted from the first lag
    assert half_life([1, 2, 3, 4, 5], [8.0, 6.0, 4.0, 3.0, 2.0]) == pytest.approx(2.0)  # exactly half at lag 3
    assert half_life([3, 1, 2], [1.0, 4.0, 2.0]) == pytest.approx(1.0)  # lags in any order


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.5, math.log(2), 1.7])
def test_half_life_of_an_exponential_is_ln2_over_its_rate_exactly(rate):
    k = np.arange(1, 101)
    assert half_life(k, 3.0 * np.exp(-rate * k)) == pytest.approx(math.log(2) / rate, rel=1e-12)


def test_half_life_interpolates_log_y_between_the_bracketing_lags():
    # 4.5 lies between y(5) = 5 and y(6) = 4; on a log scale at 5 + ln(5/4.5)/ln(5/4), 4 lags after lag 1.
    expected = 4 + math.log(5 / 4.5) / math.log(5 / 4)
    assert half_life([1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3]) == pytest.approx(expected)
    # Where the value below the crossing is <= 0, log y is undefined: y is interpolated linearly.
    assert half_life([1, 2, 3], [1.0, 0.8, -0.2]) == pytest.approx(1.3)
    assert half_life([1, 2], [1.0, 0.0]) == pytest.approx(0.5)


def test_half_life_is_inf_when_never_reached_and_nan_when_undefined():
    assert half_life([1, 2, 3], [1.0, 0.9, 0.8]) == math.inf
    assert math.isnan(half_life([1, 2, 3], [0.0, 0.0, 0.0]))
    assert math.isnan(half_life([1, 2, 3], [-1.0, 0.5, 0.2]))


def test_decay_rate_recovers_an_exponential_and_ignores_nonpositive_points():
    k = np.arange(1, 21)
    assert decay_rate(k, 3.0 * np.exp(-0.3 * k)) == pytest.approx(0.3)
    assert decay_rate(k, np.ones_like(k, dtype=float)) == pytest.approx(0.0, abs=1e-12)
    y = 2.0 ** -k.astype(float)
    y[5] = -0.1  # a probe's negative bits: left out of the log fit
    assert decay_rate(k, y) == pytest.approx(math.log(2))
    assert math.isnan(decay_rate([1, 2], [1.0, -1.0]))


def test_decay_rate_fits_only_the_points_above_the_noise_floor():
    k = np.arange(1, 81)
    y = np.exp(-0.5 * k)  # falls below 1e-12 after lag 55
    floor = NOISE_FLOORS["influence_kl"]
    noisy = y.copy()
    below = noisy <= floor
    assert below.sum() > 20
    noisy[below] = np.resize([1e-13, 3e-14], below.sum())  # rounding noise that levels off
    assert decay_rate(k, noisy, floor) == pytest.approx(0.5, rel=1e-12)
    assert decay_rate(k, noisy) < 0.45  # with no floor the noise bends the fit
    assert math.isnan(decay_rate(k[:3], [1e-13, 2e-13, 5e-13], floor))  # nothing above the floor
    with pytest.raises(ValueError, match="floor"):
        decay_rate(k, y, -1.0)


def test_every_summarised_curve_states_its_noise_floor():
    assert NOISE_FLOORS["influence_kl"] == 1e-12
    assert NOISE_FLOORS["influence_hidden"] == 1e-6
    assert 0 < NOISE_FLOORS["gradient_norm"] < 1e-30  # rounding error of a gradient is relative
    assert NOISE_FLOORS["probe_bits"] == 0.0
    assert NOISE_FLOORS["recall_accuracy"] is None
    for measure in INFLUENCE_CURVES + GRADIENT_CURVES + PROBE_CURVES:
        assert noise_floor(measure) >= 0, measure
    with pytest.raises(ValueError, match="NOISE_FLOORS"):
        noise_floor("recall_accuracy")
    with pytest.raises(ValueError, match="NOISE_FLOORS"):
        with_summaries(tidy.frame([tidy.row("attention", "lag", 1, 1.0)]), ("attention",))


def test_with_summaries_fits_the_decay_rate_above_the_measure_s_floor():
    k = np.arange(1, 81)
    y = np.exp(-0.5 * k)
    y[y <= 1e-12] = 1e-13
    rows = [tidy.row("influence_kl", "lag", kk, yy, mode="eval") for kk, yy in zip(k, y)]
    df = with_summaries(tidy.frame(rows), ("influence_kl",))
    (rate,) = df[df["measure"] == "influence_kl_eval_decay_rate"]["value"]
    assert rate == pytest.approx(0.5, rel=1e-12)
    (hl,) = df[df["measure"] == "influence_kl_eval_half_life"]["value"]
    assert hl == pytest.approx(2 * math.log(2), rel=1e-12)


def test_with_summaries_adds_a_half_life_and_decay_rate_per_curve_layer_and_mode():
    rows = [tidy.row("influence_hidden", "lag", k, 2.0 ** -k, layer=l, mode=m)
            for k in range(1, 6) for l in (0, 1) for m in ("eval", "train")]
    df = with_summaries(tidy.frame(rows, {"placement": "naive", "seed": 1, "run_id": "r"}), ("influence_hidden",))
    hl = df[df["measure"] == "influence_hidden_eval_half_life"]
    assert sorted(hl["layer"]) == [0, 1] and (hl["x_name"] == "").all()
    assert hl["value"].tolist() == pytest.approx([1.0, 1.0])  # halves every lag
    rate = df[df["measure"] == "influence_hidden_train_decay_rate"]
    assert rate["value"].tolist() == pytest.approx([math.log(2)] * 2)
    assert (df["placement"] == "naive").all() and (df["seed"] == 1).all()
    validate(df)


def test_position_bins_double_and_end_at_the_last_position():
    assert position_bins(1) == [(1, 1)]
    assert position_bins(10) == [(1, 1), (2, 3), (4, 7), (8, 10)]
    assert position_bins(200)[-1] == (128, 200)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_lag=0), "max_lag"),
        (dict(context_lengths=(0, 5)), "context_lengths"),
        (dict(context_lengths=()), "context_lengths"),
        (dict(influence_modes=("test",)), "influence_modes"),
        (dict(measures=("influence", "attention")), "measures"),
        (dict(stream_batch=0), "stream_batch"),
        (dict(effective_tolerance=1.5), "effective_tolerance"),
    ],
)
def test_bad_config_is_a_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MeasureConfig(**kwargs)


def test_config_sorts_context_lengths_and_defaults_position_length():
    c = MeasureConfig(context_lengths=(50, 1, 5, 5))
    assert c.context_lengths == (1, 5, 50) and c.position_length == 50
    assert MeasureConfig(position_max=7).position_length == 7
