"""probe.measure: the shared table format, curve summaries and configuration checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probe.measure import COLUMNS, MeasureConfig, decay_rate, half_life, validate
from probe.measure import tidy
from probe.measure.context import position_bins
from probe.measure.curves import with_summaries


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


def test_half_life_interpolates_linearly_between_lags():
    assert half_life([1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3]) == pytest.approx(5.5)  # 4.5 lies halfway 5..6
    assert half_life([1, 2, 3], [4.0, 2.0, 1.0]) == pytest.approx(2.0)  # exactly half at lag 2


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


def test_with_summaries_adds_a_half_life_and_decay_rate_per_curve_layer_and_mode():
    rows = [tidy.row("influence_hidden", "lag", k, 2.0 ** -k, layer=l, mode=m)
            for k in range(1, 6) for l in (0, 1) for m in ("eval", "train")]
    df = with_summaries(tidy.frame(rows, {"placement": "naive", "seed": 1, "run_id": "r"}), ("influence_hidden",))
    hl = df[df["measure"] == "influence_hidden_eval_half_life"]
    assert sorted(hl["layer"]) == [0, 1] and (hl["x_name"] == "").all()
    assert hl["value"].tolist() == pytest.approx([2.0, 2.0])
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
