"""The one table format every measurement returns: a tidy DataFrame.

docs/measurements.md ("The table") describes the same format for users.

One row per measure x x-value, with columns, in this order::

    measure  str    what was measured, e.g. "influence_kl", "context_ppl"
    x_name   str    "lag", "context_length", "position", or "" for a scalar
    x        float  the lag / length / position; NaN for a scalar
    value    float  the measurement
    layer    int    0-based LSTM layer, or -1 for a model-level measure
    mode     str    "eval", "train", or "" where no mode applies
    placement, seed, run_id   the run identifiers passed in as ``ids``

Any further keys in ``ids`` become further columns after these. Statistics
and plots read only this format, never a measurement's internals.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import pandas as pd

X_NAMES = ("lag", "context_length", "position", "")
MODES = ("eval", "train", "")
ID_COLUMNS = ("placement", "seed", "run_id")
ID_DEFAULTS = {"placement": "", "seed": -1, "run_id": ""}
COLUMNS = ("measure", "x_name", "x", "value", "layer", "mode") + ID_COLUMNS
_DTYPES = {
    "measure": str, "x_name": str, "x": "float64", "value": "float64", "layer": "int64", "mode": str,
    "placement": str, "seed": "int64", "run_id": str,
}


def row(measure: str, x_name: str, x: float, value: float, *, layer: int = -1, mode: str = "") -> dict:
    """One row of the table (without the run identifiers)."""
    return {
        "measure": measure, "x_name": x_name, "x": float(x), "value": float(value), "layer": int(layer), "mode": mode
    }


def scalar(measure: str, value: float, *, layer: int = -1, mode: str = "") -> dict:
    """A row with no x: x_name "" and x NaN."""
    return row(measure, "", math.nan, value, layer=layer, mode=mode)


def frame(rows: Iterable[Mapping], ids: Mapping | None = None) -> pd.DataFrame:
    """The tidy table of ``rows``, with the run identifiers ``ids`` as constant columns."""
    ids = {**ID_DEFAULTS, **(ids or {})}
    clash = set(ids) & set(COLUMNS[:6])
    if clash:
        raise ValueError(f"ids may not name the measurement columns {sorted(clash)}; ids are e.g. {ID_COLUMNS}")
    df = pd.DataFrame(list(rows), columns=list(COLUMNS[:6]))
    for key, value in ids.items():
        df[key] = value
    extra = [k for k in ids if k not in ID_COLUMNS]
    df = df[list(COLUMNS) + extra]
    return df.astype({k: v for k, v in _DTYPES.items()}).reset_index(drop=True)


def concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Stack tables of this format (keeping the column order and dtypes)."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return frame([])
    return pd.concat(frames, ignore_index=True).astype(_DTYPES)


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Raise ValueError if ``df`` is not in this format; return it unchanged otherwise."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"tidy table lacks columns {missing}; expected {list(COLUMNS)} (+ extra ids)")
    if list(df.columns[: len(COLUMNS)]) != list(COLUMNS):
        raise ValueError(f"tidy columns out of order: {list(df.columns)}; expected {list(COLUMNS)} first")
    bad_x = set(df["x_name"]) - set(X_NAMES)
    if bad_x:
        raise ValueError(f"unknown x_name values {sorted(bad_x)}; valid: {X_NAMES}")
    bad_mode = set(df["mode"]) - set(MODES)
    if bad_mode:
        raise ValueError(f"unknown mode values {sorted(bad_mode)}; valid: {MODES}")
    scalars = df["x_name"] == ""
    if df.loc[scalars, "x"].notna().any() or df.loc[~scalars, "x"].isna().any():
        raise ValueError("x must be NaN exactly where x_name is '' (scalar rows)")
    return df
