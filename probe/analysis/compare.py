"""Placements compared over tidy tables: per-seed metric values, tests against a reference, registry order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from probe.measure import names as measure_names
from probe.analysis.inference import compare, holm, n_warnings, per_seed, present_values


@dataclass(frozen=True)
class Metric:
    """One number per seed to test: a measure, optionally at one x (e.g. lag 10), layer and mode."""

    measure: str
    x: float | None = None
    layer: int | None = None  # None: model-level rows (-1) if any, else the top layer
    mode: str | None = None
    higher_is_better: bool | None = None  # None: the measure's direction in probe.measure.names
    label: str = ""  # how sentences name it, e.g. "training-mode influence at lag 10"
    unit: str = ""

    @property
    def better_is_higher(self) -> bool:
        if self.higher_is_better is not None:
            return self.higher_is_better
        if not measure_names.known(self.measure):
            raise ValueError(f"measure {self.measure!r} is not in probe.measure.names; give Metric(higher_is_better=...)")
        return measure_names.higher_is_better(self.measure)

    @property
    def name(self) -> str:
        """A short unique identifier: ``influence_kl[train]@10``, ``probe_bits[layer 1]@5``, ``test_ppl``."""
        name = self.measure + (f"[{self.mode}]" if self.mode else "")
        name += f"[layer {self.layer}]" if self.layer is not None and self.layer >= 0 else ""
        return name if self.x is None else f"{name}@{self.x:g}"

    @property
    def description(self) -> str:
        """How sentences name the metric: its label, else e.g. "training-mode influence at lag 10"."""
        if self.label:
            return self.label
        text = measure_names.label(self.measure, self.mode or "")
        if self.x is not None:
            axis = measure_names.lookup(self.measure).axis if measure_names.known(self.measure) else ""
            text += f" at {(axis or 'x').replace('_', ' ')} {self.x:g}"
        return text + (f" (layer {self.layer})" if self.layer is not None and self.layer >= 0 else "")

    @property
    def units(self) -> str:
        return self.unit or measure_names.unit(self.measure)


def as_metric(metric: str | Metric) -> Metric:
    return metric if isinstance(metric, Metric) else Metric(str(metric))


def metric_values(tidy: pd.DataFrame, metric: str | Metric) -> pd.DataFrame:
    """Per-seed values of one metric: columns placement, seed, value."""
    m = as_metric(metric)
    rows = tidy[tidy["measure"] == m.measure]
    if rows.empty:
        return pd.DataFrame(columns=["placement", "seed", "value"])
    if m.x is not None:
        at = rows[np.isclose(rows["x"].astype(float), m.x)]
        if at.empty:
            xs = ", ".join(f"{v:g}" for v in sorted(rows["x"].dropna().unique())[:12])
            raise ValueError(f"measure {m.measure!r} has no rows at x = {m.x:g}; it was measured at {xs}")
        rows = at
    elif rows["x"].notna().any() and rows["x"].nunique() > 1:
        xs = ", ".join(f"{v:g}" for v in sorted(rows["x"].dropna().unique())[:8])
        raise ValueError(f"measure {m.measure!r} is a curve; choose Metric(x=...) from {xs}, ...")
    if "layer" in rows.columns:
        layer = m.layer
        if layer is None:
            layer = -1 if (rows["layer"] == -1).any() else int(rows["layer"].max())
        rows = rows[rows["layer"] == layer]
    if m.mode is not None and "mode" in rows.columns:
        rows = rows[rows["mode"] == m.mode]
    elif "mode" in rows.columns and rows["mode"].nunique() > 1:
        raise ValueError(f"measure {m.measure!r} has modes {sorted(rows['mode'].unique())}; choose Metric(mode=...)")
    return per_seed(rows, by=("placement",))


TEST_COLUMNS = [
    "metric", "label", "unit", "measure", "x", "mode", "higher_is_better", "reference", "placement",
    "n_ref", "n", "mean_ref", "mean", "diff", "ci_low", "ci_high", "t", "df", "p_welch", "p_perm",
    "p_holm", "p_holm_welch", "holm_family", "hedges_g", "prob_improvement", "min_p", "warning",
]


def test_against_reference(
    tidy: pd.DataFrame,
    reference: str | Mapping[str, str] = "none",
    metric: str | Metric | Sequence[str | Metric] = "test_ppl",
    *,
    alpha: float = 0.05,
    confidence: float = 0.95,
    holm_within: str = "metric",
    seed: int = 0,
) -> pd.DataFrame:
    """Each placement against ``reference`` on each metric: one tidy row per placement x metric.

    ``reference``: one placement every other is tested against, or a mapping from each placement to
    test to its own reference (the memory contrasts: ``probe.placements.memory_reference``); placements
    the mapping leaves out are not tested.

    Holm's correction is applied to the permutation p-values (exact, so valid
    at any n) across the placements of one metric (``holm_within="metric"``)
    or across every row of the table (``holm_within="all"``); the column
    ``holm_family`` says which. ``p_holm_welch`` applies the same correction
    to Welch's p-values, which can be small at any n but lean on roughly
    normal seed-to-seed variation. ``warning`` says when the seed counts
    (and, after correction, the number of comparisons) put significance of
    the permutation test out of reach at ``alpha``.
    """
    if holm_within not in ("metric", "all"):
        raise ValueError(f"holm_within must be 'metric' or 'all'; got {holm_within!r}")
    metrics = [as_metric(m) for m in ([metric] if isinstance(metric, (str, Metric)) else metric)]
    rows, samples = [], []
    for m in metrics:
        values = metric_values(tidy, m)
        by_placement = {p: g["value"].to_numpy() for p, g in values.groupby("placement", sort=False)}
        pairs = _pairs(by_placement, reference)
        for placement, ref_label in pairs:
            ref = by_placement[ref_label]
            c = compare(by_placement[placement], ref, higher_is_better=m.better_is_higher,
                        confidence=confidence, alpha=alpha, seed=seed)
            rows.append({
                "metric": m.name, "label": m.description, "unit": m.units, "measure": m.measure,
                "x": math.nan if m.x is None else float(m.x), "mode": m.mode or "",
                "higher_is_better": m.better_is_higher,
                "reference": ref_label, "placement": placement, **c._asdict(),
            })
            raw = np.concatenate([by_placement[placement], ref]).astype(float)
            samples.append((present_values(by_placement[placement]), present_values(ref), int(np.isnan(raw).sum())))
    out = pd.DataFrame(rows, columns=[c for c in TEST_COLUMNS if c not in ("p_holm", "p_holm_welch", "holm_family")])
    if out.empty:
        return pd.DataFrame(columns=TEST_COLUMNS)
    families = [out.index] if holm_within == "all" else [g.index for _, g in out.groupby("metric", sort=False)]
    out["p_holm"] = out["p_holm_welch"] = math.nan
    out["holm_family"] = ""
    for idx in families:
        k = int(out.loc[idx, "p_perm"].notna().sum())
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_perm"].to_numpy())
        out.loc[idx, "p_holm_welch"] = holm(out.loc[idx, "p_welch"].to_numpy())
        scope = "all metrics" if holm_within == "all" else "this metric"
        out.loc[idx, "holm_family"] = f"Holm over {k} permutation p-values ({scope})"
        for i in idx:
            a, b, missing = samples[i]
            out.loc[i, "warning"] = n_warnings(a, b, alpha=alpha, comparisons=k, missing=missing)
    return out[TEST_COLUMNS].reset_index(drop=True)


test_against_reference.__test__ = False  # a library function, not a pytest test, despite its name


def _pairs(labels, reference: str | Mapping[str, str]) -> list[tuple[str, str]]:
    """(placement, its reference's label) for every placement to test, in registry order."""
    if isinstance(reference, str):
        ref_label = reference_label(labels, reference)
        if ref_label is None:
            return []
        return [(p, ref_label) for p in registry_order(labels) if p != ref_label]
    out = []
    for p in registry_order(labels):
        ref_label = reference_label(labels, reference[p]) if p in reference else None
        if ref_label is not None and ref_label != p:
            out.append((p, ref_label))
    return out


def reference_label(labels, reference: str) -> str | None:
    """The label in ``labels`` that names ``reference``: the same string, the same canonical spec
    (``zaremba`` is ``zaremba:p=0.5``), or, for a bare name (``zaremba``), the only label with that
    placement name; else None. The one reference resolver of the project."""
    from probe.placements import PlacementError, parse_placement, placement_name

    labels = [str(x) for x in labels]
    if reference in labels:
        return reference

    def canonical(spec: str) -> str | None:
        try:
            return parse_placement(spec).spec
        except PlacementError:
            return None

    want = canonical(reference)
    same = [x for x in labels if want is not None and canonical(x) == want]
    if len(same) == 1:
        return same[0]
    name = placement_name(reference) if ":" not in reference else None
    named = [x for x in labels if name is not None and placement_name(x) == name]
    return named[0] if len(named) == 1 else None


def registry_order(placements) -> list[str]:
    """Placement labels in registry order (then any others alphabetically), so tables and figures read alike."""
    from probe.placements import PLACEMENT_NAMES, placement_name

    rank = {n: i for i, n in enumerate(PLACEMENT_NAMES)}
    return sorted({str(p) for p in placements}, key=lambda p: (rank.get(placement_name(p), len(rank)), p))
