"""Summaries of a decay curve y(k), k = 1..K: half-life and exponential decay rate.

- half-life: the number of lags it takes the curve to halve from its value
  at the first lag (lag 1): the lag where it first falls to y(1)/2, minus
  the first lag. The crossing is found by interpolating log y linearly
  between the two lags that bracket it, so an exponential y = A exp(-r k)
  gives ln 2 / r exactly and a curve that halves every lag gives 1.0 (where
  the lower bracketing value is <= 0, log y is undefined and y itself is
  interpolated linearly). ``inf`` when the curve never falls that far within
  the measured lags (the half-life exceeds K - 1: right-censored), NaN when
  y(1) is not positive.
- decay rate: lambda of y ~ A exp(-lambda k), least squares on log y over
  the points above the measure's numerical noise floor (``NOISE_FLOORS``;
  needs two of them, else NaN). Units: per lag. A flat curve gives about 0;
  a curve that halves every lag gives ln 2.

``with_summaries`` appends both as scalar rows to a tidy table: for a curve
``m`` in mode ``mo`` the rows are ``m_mo_half_life`` and ``m_mo_decay_rate``
(``m_half_life`` where the mode is ""), with the curve's layer and mode.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from probe.measure import tidy

_EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: float32's relative rounding step
_TINY32 = float(np.finfo(np.float32).tiny)  # 1.18e-38: float32's smallest normal number

# The value below which a curve's points are rounding noise of the float32 network, not signal;
# ``decay_rate`` fits only the points above it. None: no floor is defined (not summarised here).
NOISE_FLOORS: dict[str, float | None] = {
    # nats. A float32 state perturbed at rounding level moves the logits by ~eps32 (relative), and a KL is
    # quadratic in a small logit change (1/2 d^T F d), so rounding alone gives KL ~ eps32^2 = 1.4e-14,
    # times the squared scale of the logits (a small random network with logits << 1 levels off at
    # ~1e-16). 1e-12 leaves room for logits of order 10. (The KL itself is computed in float64.)
    "influence_kl": 1e-12,
    # dimensionless: ||h_t - h'_t|| / ||h_t||, a distance relative to the original state's norm. Two
    # float32 states that differ only by rounding are ~eps32 = 1.2e-7 apart in this relative sense (a
    # fast-decaying random network levels off at 1.5e-7); above 1e-6 the float32 curve is within ~10% of
    # the same network's float64 curve.
    "influence_hidden": 1e-6,
    # nats per unit of embedding norm. Backpropagation multiplies the gradient by one Jacobian per lag, so
    # its rounding error is relative (~eps32 per step, not an absolute eps32 of anything): measured
    # against float64 it is within 1e-7 of its value down to 1e-11. The only floor is float32's range: below
    # its smallest normal number (1.2e-38) values are subnormal, lose relative precision, or flush to 0.
    "gradient_norm": _TINY32,
    # bits: a lower bound on mutual information; 0 and below carry no information (no rounding floor:
    # the probe's sampling error dominates by far and is not a threshold of its own).
    "probe_bits": 0.0,
    "probe_bits_cell": 0.0,
    "probe_bits_untrained": 0.0,
    "probe_bits_cell_untrained": 0.0,
    # accuracy on the synthetic corpus: a curve over lags, but not a decay curve; no summaries.
    "recall_accuracy": None,
}


def half_life(lags, values) -> float:
    """Lags it takes ``values`` to halve from its value at the first lag (log-linear interpolation).

    The crossing lag of y(first)/2 minus the first lag: 1.0 for a curve that
    halves every lag, ln 2 / r for y = A exp(-r k). ``inf`` if it never gets
    there (right-censored), NaN if the first value is not positive.
    """
    k, y = _sorted(lags, values)
    if y.size == 0 or not (math.isfinite(y[0]) and y[0] > 0):
        return math.nan
    half = 0.5 * y[0]
    below = np.flatnonzero(y <= half)
    if below.size == 0:
        return math.inf
    j = int(below[0])
    # y[j-1] > half >= y[j]: interpolate log y linearly between the two lags (exact for exponentials);
    # where y[j] <= 0 its log is undefined, and y itself is interpolated linearly instead.
    k0, k1, y0, y1 = k[j - 1], k[j], y[j - 1], y[j]
    if y1 > 0:
        frac = (math.log(y0) - math.log(half)) / (math.log(y0) - math.log(y1))
    else:
        frac = (y0 - half) / (y0 - y1)
    return float(k0 + frac * (k1 - k0) - k[0])


def decay_rate(lags, values, floor: float = 0.0) -> float:
    """lambda of the least-squares fit log y = log A - lambda k over the points with y > ``floor``.

    ``floor``: the measure's numerical noise floor (``NOISE_FLOORS``); points at
    or below it are rounding noise, whose logs would bend the fit. Must be >= 0.
    """
    if not floor >= 0:
        raise ValueError(f"the noise floor must be a number >= 0; got {floor!r}")
    k, y = _sorted(lags, values)
    keep = np.isfinite(y) & (y > floor)
    if keep.sum() < 2:
        return math.nan
    slope, _ = np.polyfit(k[keep], np.log(y[keep]), 1)
    return float(-slope)


def noise_floor(measure: str) -> float:
    """The stated noise floor of a curve measure, or a ValueError if it has none."""
    floor = NOISE_FLOORS.get(measure)
    if floor is None:
        why = "is not a decay curve" if measure in NOISE_FLOORS else "has no entry"
        raise ValueError(f"{measure!r} {why} in probe.measure.curves.NOISE_FLOORS; state its noise floor there")
    return floor


def _sorted(lags, values) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(lags, dtype=float)
    y = np.asarray(values, dtype=float)
    order = np.argsort(k)
    return k[order], y[order]


def summary_name(measure: str, mode: str, what: str) -> str:
    return f"{measure}_{mode}_{what}" if mode else f"{measure}_{what}"


def with_summaries(df: pd.DataFrame, measures: tuple[str, ...]) -> pd.DataFrame:
    """``df`` plus half-life and decay-rate rows for each lag curve of ``measures``, per layer and mode.

    Each decay rate is fitted above its measure's ``NOISE_FLOORS`` entry.
    """
    floors = {m: noise_floor(m) for m in measures}
    ids = {c: df[c].iloc[0] for c in df.columns[len(tidy.COLUMNS) - len(tidy.ID_COLUMNS):]} if len(df) else {}
    rows = []
    curves = df[(df["x_name"] == "lag") & df["measure"].isin(measures)]
    for (measure, layer, mode), g in curves.groupby(["measure", "layer", "mode"], sort=False):
        x, y = g["x"].to_numpy(), g["value"].to_numpy()
        rate = decay_rate(x, y, floors[measure])
        rows.append(tidy.scalar(summary_name(measure, mode, "half_life"), half_life(x, y), layer=layer, mode=mode))
        rows.append(tidy.scalar(summary_name(measure, mode, "decay_rate"), rate, layer=layer, mode=mode))
    return tidy.concat([df, tidy.frame(rows, ids)])
