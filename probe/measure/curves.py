"""Summaries of a decay curve y(k), k = 1..K: half-life and exponential decay rate.

- half-life: the lag where the curve first falls to half its lag-1 value,
  linearly interpolated between the two lags that bracket the crossing;
  ``inf`` when it never falls that far within the measured lags (the
  half-life exceeds K: right-censored), NaN when y(1) is not positive.
- decay rate: lambda of y ~ A exp(-lambda k), least squares on log y over
  the points with y > 0 (needs two of them, else NaN). Units: per lag.
  A flat curve gives about 0; a curve that halves every lag gives ln 2.

``with_summaries`` appends both as scalar rows to a tidy table: for a curve
``m`` in mode ``mo`` the rows are ``m_mo_half_life`` and ``m_mo_decay_rate``
(``m_half_life`` where the mode is ""), with the curve's layer and mode.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import tidy


def half_life(lags, values) -> float:
    """First lag where ``values`` falls to half of its value at the first lag (interpolated)."""
    k, y = _sorted(lags, values)
    if y.size == 0 or not (math.isfinite(y[0]) and y[0] > 0):
        return math.nan
    half = 0.5 * y[0]
    below = np.flatnonzero(y <= half)
    if below.size == 0:
        return math.inf
    j = int(below[0])
    # y[j-1] > half >= y[j]: interpolate linearly between the two lags.
    k0, k1, y0, y1 = k[j - 1], k[j], y[j - 1], y[j]
    return float(k0 + (y0 - half) / (y0 - y1) * (k1 - k0))


def decay_rate(lags, values) -> float:
    """lambda of the least-squares fit log y = log A - lambda k over the points with y > 0."""
    k, y = _sorted(lags, values)
    keep = np.isfinite(y) & (y > 0)
    if keep.sum() < 2:
        return math.nan
    slope, _ = np.polyfit(k[keep], np.log(y[keep]), 1)
    return float(-slope)


def _sorted(lags, values) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(lags, dtype=float)
    y = np.asarray(values, dtype=float)
    order = np.argsort(k)
    return k[order], y[order]


def summary_name(measure: str, mode: str, what: str) -> str:
    return f"{measure}_{mode}_{what}" if mode else f"{measure}_{what}"


def with_summaries(df: pd.DataFrame, measures: tuple[str, ...]) -> pd.DataFrame:
    """``df`` plus half-life and decay-rate rows for each lag curve of ``measures``, per layer and mode."""
    ids = {c: df[c].iloc[0] for c in df.columns[len(tidy.COLUMNS) - len(tidy.ID_COLUMNS):]} if len(df) else {}
    rows = []
    curves = df[(df["x_name"] == "lag") & df["measure"].isin(measures)]
    for (measure, layer, mode), g in curves.groupby(["measure", "layer", "mode"], sort=False):
        x, y = g["x"].to_numpy(), g["value"].to_numpy()
        rows.append(tidy.scalar(summary_name(measure, mode, "half_life"), half_life(x, y), layer=layer, mode=mode))
        rows.append(tidy.scalar(summary_name(measure, mode, "decay_rate"), decay_rate(x, y), layer=layer, mode=mode))
    return tidy.concat([df, tidy.frame(rows, ids)])
