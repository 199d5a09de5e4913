"""Dropout against a smaller model: the hidden size without dropout that a dropout model is equivalent to.

A ladder of ``none`` models at several hidden sizes gives, for each measure, a curve of its mean across
seeds against log(size). A dropout model's mean on the same measure is read off that curve by linear
interpolation on log size: its *equivalent size*. A mean outside the ladder's range is ``beyond`` (below
the smallest or above the largest size), never extrapolated. The interval is a bootstrap over seeds:
seeds are resampled within each ladder size and within the dropout model, independently, and the
equivalent size recomputed; resamples that fall beyond the ladder are counted, not dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probe.analysis import inference

BELOW, ABOVE = "below", "above"


@dataclass(frozen=True)
class Equivalent:
    """The equivalent size of one model on one measure, with its bootstrap interval."""

    size: float  # NaN when beyond
    low: float
    high: float
    beyond: str  # "", BELOW (smaller than the smallest size) or ABOVE (larger than the largest)
    beyond_share: float  # bootstrap resamples that fell beyond the ladder
    n: int  # the dropout model's seeds

    @property
    def text(self) -> str:
        if self.beyond:
            return f"beyond the ladder ({'smaller than its smallest' if self.beyond == BELOW else 'larger than its largest'} size)"
        interval = f"[{_fmt(self.low)}, {_fmt(self.high)}]"
        note = f", {self.beyond_share:.1%} of resamples beyond" if self.beyond_share > 0 else ""
        return f"{_fmt(self.size)} units {interval}{note}"


def _fmt(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def crossing(sizes: np.ndarray, means: np.ndarray, target: float) -> tuple[float, str]:
    """The size where the ladder's piecewise-linear curve of ``means`` against log(size) reaches ``target``:
    (size, "") at the first crossing from the smallest size up, or (NaN, BELOW / ABOVE) where the target
    lies beyond every ladder mean on the side of the smallest / largest size."""
    order = np.argsort(sizes)
    x, y = np.log(sizes[order].astype(float)), means[order].astype(float)
    if len(x) < 2 or not np.isfinite(target) or not np.isfinite(y).all():
        return math.nan, ""
    for i in range(len(x) - 1):
        lo, hi = y[i], y[i + 1]
        if min(lo, hi) <= target <= max(lo, hi):
            t = 0.0 if hi == lo else (target - lo) / (hi - lo)
            return float(math.exp(x[i] + t * (x[i + 1] - x[i]))), ""
    # No crossing: the target is beyond the ladder; which end is nearer in the curve's direction.
    rising = y[-1] > y[0]
    return math.nan, (ABOVE if (target > y.max()) == rising else BELOW)


def equivalent_size(ladder: dict[float, np.ndarray], values: np.ndarray, *, n_boot: int = 2000,
                    confidence: float = 0.95, seed: int = 0) -> Equivalent:
    """``ladder``: per-seed values of the measure for each ``none`` size; ``values``: the dropout model's."""
    sizes = np.array(sorted(ladder), dtype=float)
    groups = [np.asarray(ladder[s], dtype=float) for s in sizes]
    groups = [g[np.isfinite(g)] for g in groups]
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0 or any(len(g) == 0 for g in groups):
        return Equivalent(math.nan, math.nan, math.nan, "", 0.0, len(values))
    size, beyond = crossing(sizes, np.array([g.mean() for g in groups]), float(values.mean()))
    rng = np.random.default_rng(seed)
    boots, out = [], 0
    for _ in range(n_boot):
        means = np.array([rng.choice(g, len(g)).mean() for g in groups])
        s, b = crossing(sizes, means, float(rng.choice(values, len(values)).mean()))
        if b:
            out += 1
        elif math.isfinite(s):
            boots.append(s)
    alpha = (1 - confidence) / 2
    low, high = (np.quantile(boots, [alpha, 1 - alpha]) if boots else (math.nan, math.nan))
    return Equivalent(size, float(low), float(high), beyond, out / n_boot, len(values))


def parameter_count(vocab: int, emb: int, hidden: int, layers: int, tied: bool = False) -> int:
    """The architecture's parameters (``probe.model.LanguageModel``): embedding, per layer W_ih, W_hh and
    one bias, decoder weight and bias; dropout's "effective" parameters are not counted."""
    lstm = sum(4 * hidden * ((emb if k == 0 else hidden) + hidden) + 4 * hidden for k in range(layers))
    decoder = (0 if tied else hidden * vocab) + vocab
    return vocab * emb + lstm + decoder


def agreement(equivalents: dict[str, Equivalent]) -> tuple[bool | None, str]:
    """Whether the equivalent sizes on several measures agree (their intervals overlap), in words."""
    inside = {m: e for m, e in equivalents.items() if not e.beyond and math.isfinite(e.size)}
    beyond = [m for m, e in equivalents.items() if e.beyond]
    if len(inside) < 2 and not (inside and beyond):
        return None, "too few measures inside the ladder to compare"
    if beyond and inside:
        return False, f"{', '.join(beyond)} fall beyond the ladder while {', '.join(inside)} do not"
    lows = max(e.low for e in inside.values())
    highs = min(e.high for e in inside.values())
    if lows <= highs:
        return True, "their intervals overlap"
    smallest = min(inside, key=lambda m: inside[m].size)
    largest = max(inside, key=lambda m: inside[m].size)
    return False, (f"{smallest} ({_fmt(inside[smallest].size)} units) and {largest} "
                   f"({_fmt(inside[largest].size)} units) do not overlap")


def per_seed(tidy: pd.DataFrame, measure: str, x: float | None = None) -> pd.DataFrame:
    """Per-seed values of one measure (at ``x``): columns placement, hidden_size, seed, value."""
    rows = tidy[tidy["measure"] == measure]
    if x is not None:
        rows = rows[np.isclose(rows["x"].astype(float), x)]
    if "layer" in rows.columns and (rows["layer"] == -1).any():
        rows = rows[rows["layer"] == -1]
    return inference.per_seed(rows, by=("placement", "hidden_size"))
