"""One self-contained HTML report per study, with its data beside it.

``render_report`` writes ``<stem>.html`` (figures inline as SVG, no
scripts, no network) and beside it the numbers as ``<stem>_data.csv`` (the
tidy table), ``<stem>_tests.csv`` (the significance table) and
``<stem>.json`` (everything), which the page links to rather than embeds so
that it stays small. Every file is written atomically, the HTML last, so a
report on disk is always whole.

The page answers first: the headline sentences and the validity checks
(``probe.report.validity``), one answer table and the lead figures (effects with
intervals, dose-response), then the full list of comparisons, collapsed,
and the evidence.

The template is rendered with autoescape on (jinja2's default
is off, and ``select_autoescape`` would not match ``.html.j2``), so labels
from configurations and tidy tables cannot inject markup. Rendering is
deterministic: equal inputs and environment give byte-identical files.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import platform
import subprocess
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import jinja2
import numpy as np
import pandas as pd

from probe.measure import names as measure_names

from probe.report import text as report_text

from probe.analysis import inference
from probe.files import write_atomic
from probe.report.plotting import Figure, ordered_placements, placement_styles
from probe.placements import Placement, PlacementError, describe, parse_placement

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("probe.report", "templates"),
    autoescape=True,  # explicit: the templates end in .j2, which select_autoescape would not match
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(fmt=report_text.fmt, fmt_p=report_text.fmt_p, fixed=report_text.fmt_fixed)

PERPLEXITY = ("valid_ppl", "test_ppl")


def data_uri(text: str, mime: str = "text/csv") -> str:
    return f"data:{mime};charset=utf-8;base64," + base64.b64encode(text.encode("utf-8")).decode("ascii")


def to_json(obj) -> str:
    """JSON with NaN as null and numpy scalars as numbers; keys kept in insertion order."""
    return json.dumps(_plain(obj), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def _plain(obj):
    if isinstance(obj, pd.DataFrame):
        return [_plain(r) for r in obj.to_dict("records")]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(obj) else float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def render(template: str, **context) -> str:
    return ENV.get_template(template).render(**context)


# --- what the template shows -------------------------------------------------


def placement_rows(placements: Iterable[str | Placement], colours: dict[str, str],
                   specs: dict[str, str] | None = None) -> list[dict]:
    """The placements table: name, colour, sites with rates and scopes, description, citation.

    ``specs`` maps a label that is not a spec (a checkpoint's name) to the placement it was trained with."""
    rows = []
    specs = specs or {}
    for spec in placements:
        try:
            p = parse_placement(specs.get(str(spec), spec))
        except PlacementError:
            rows.append({"label": str(spec), "name": str(spec), "colour": colours.get(str(spec), "#777777"),
                         "sites": [], "description": "not in the placement registry", "citation": ""})
            continue
        label = str(spec) if isinstance(spec, str) else p.spec
        rows.append({
            "label": label, "name": p.name, "colour": colours.get(label, colours.get(p.name, "#777777")),
            "sites": describe(p), "description": p.definition.description, "citation": p.definition.citation,
        })
    return rows


def _by_regime(tidy: pd.DataFrame) -> pd.DataFrame:
    """``tidy`` with each measure named with its regime in a study of several (``measure@regime``)."""
    if "regime" not in tidy.columns or tidy["regime"].nunique() < 2:
        return tidy
    return tidy.assign(measure=tidy["measure"] + "@" + tidy["regime"].astype(str))


def _measure_label(name: str) -> str:
    measure, _, regime = name.partition("@")
    return measure_names.label(measure) + (f" ({regime} regime)" if regime else "")


def scalar_table(tidy: pd.DataFrame, measures: Sequence[str], confidence: float = 0.95) -> dict:
    """Mean and t-interval across seeds, placements as rows: {"measures", "rows": [{placement, cells}]};
    in a study of two regimes, one column per measure and regime."""
    tidy = _by_regime(tidy[tidy["measure"].isin(measures) & tidy["x"].isna()])
    measures = [m for m in sorted(tidy["measure"].unique(), key=lambda n: (list(measures).index(n.partition("@")[0]), n))]
    est = inference.estimate(tidy, by=("placement", "measure"), confidence=confidence)
    present = [m for m in measures if (est["measure"] == m).any()]
    out = []
    for placement in ordered_placements(est["placement"].unique()):
        cells = []
        for m in present:
            hit = est[(est["placement"] == placement) & (est["measure"] == m)]
            cells.append(hit.iloc[0].to_dict() if len(hit) else None)
        out.append({"placement": placement, "cells": cells})
    return {"measures": [{"name": m, "label": _measure_label(m), "unit": measure_names.unit(m.partition("@")[0])}
                         for m in present], "rows": out}


def scalar_rows_table(tidy: pd.DataFrame, measures: Sequence[str], confidence: float = 0.95) -> dict:
    """Every other scalar, one row per measure x layer (x mode where a measure has several), placements as columns."""
    rows = _by_regime(tidy[tidy["measure"].isin(measures) & tidy["x"].isna()])
    est = inference.estimate(rows, by=("measure", "layer", "mode", "placement"), confidence=confidence)
    placements = ordered_placements(est["placement"].unique())
    modes = est.groupby("measure")["mode"].nunique()
    out = []
    for (measure, layer, mode), g in est.groupby(["measure", "layer", "mode"], sort=True):
        label = _measure_label(measure)
        label += f" (layer {layer})" if layer >= 0 else ""
        label += f" [{mode}]" if modes[measure] > 1 else ""
        by = {p: r for p, r in zip(g["placement"], g.to_dict("records"))}
        out.append({"label": label, "unit": measure_names.unit(measure.partition("@")[0]),
                    "cells": [by.get(p) for p in placements]})
    return {"placements": placements, "rows": out}


def significance_groups(tests: pd.DataFrame) -> list[dict]:
    """The significance table, one block per metric, rows in registry order."""
    if tests is None or tests.empty:
        return []
    groups = []
    for metric, g in tests.groupby("metric", sort=False):
        order = ordered_placements(g["placement"].unique())
        g = g.set_index("placement").loc[order].reset_index()
        first = g.iloc[0]
        groups.append({
            "metric": metric, "label": first["label"], "unit": first["unit"], "reference": first["reference"],
            "higher_is_better": bool(first["higher_is_better"]), "family": first["holm_family"],
            "decided_by": first.get("decided_by", "the permutation test"),
            "rows": g.to_dict("records"),
        })
    return groups


def seeds_by_placement(tidy: pd.DataFrame) -> list[dict]:
    return [{"placement": p, "seeds": sorted(int(s) for s in tidy.loc[tidy["placement"] == p, "seed"].unique())}
            for p in ordered_placements(tidy["placement"].unique())]


def flatten(config: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested configuration as (dotted key, value text) pairs, in insertion order."""
    items = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(flatten(value, name + "."))
        else:
            items.append((name, value if isinstance(value, str) else json.dumps(_plain(value), ensure_ascii=False)))
    return items


def collect_environment(**extra) -> dict:
    """Versions, device, git commit and date, for the report's environment section."""
    env = {"date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
           "python": platform.python_version(), "platform": platform.platform()}
    for package in ("dropout-probe", "torch", "triton", "numpy", "scipy", "pandas", "seaborn", "matplotlib", "jinja2"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        cpu = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu
    except ImportError:
        pass
    env["git commit"] = _git_commit()
    env.update(extra)
    return env


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


STATISTICAL_METHODS = (
    "Seeds are the unit of replication: rows repeated within a seed are averaged first, and every interval and "
    "test is taken across seeds. Intervals are {level} t-intervals of the mean across seeds; the interval of a "
    "difference is Welch–Satterthwaite's. Each placement is compared with its reference by Welch's t-test and by "
    "an exact two-sided permutation test of the difference of means (every split of the pooled seeds); Holm's "
    "step-down correction is applied to each test's p-values across the placements compared on each metric. A "
    "comparison's verdict (better, worse or not distinguishable) is decided by the test the tests table names in "
    "its decided_by column, and it is fragile where leaving any one seed out of the study changes it: a fragile "
    "verdict is marked and never stated as settled. Effect sizes are Hedges' g (pooled standard deviation, exact "
    "small-sample correction) and the probability that a random seed of the placement beats a random seed of the "
    "reference (ties count one half). With n_a and n_b seeds the smallest attainable permutation p-value is "
    "2 / C(n_a + n_b, n_a): 0.10 for 3 vs 3, 0.0079 for 5 vs 5, 0.0022 for 6 vs 6."
)


@dataclass(frozen=True)
class Report:
    """Everything one report page shows.

    ``methods`` holds extra paragraphs for the methods section (the corpus
    and its split, say); the statistical methods paragraph is always added.
    ``headline``, ``checks`` (``probe.report.validity.Check``), ``answer``
    (``probe.report.answer.answer_table``) and ``lead_figures`` make the first
    screen; ``summary`` is the full list of comparisons in words.
    ``placement_specs`` maps labels that are not placement specs (checkpoints
    measured by ``probe.measure``) to the placement each was trained with.
    ``replication`` (``probe.report.replication.replication_table``) sets this
    study's verdicts beside another's.
    """

    title: str
    question: str
    config: dict
    placements: Sequence[str | Placement]
    tidy: pd.DataFrame
    tests: pd.DataFrame
    environment: dict
    summary: Sequence[str] = ()
    figures: Sequence[Figure] = ()
    methods: Sequence[str] = ()
    confidence: float = 0.95
    alpha: float = 0.05
    headline: Sequence[str] = ()
    checks: Sequence = ()
    answer: dict | None = None
    lead_figures: Sequence[Figure] = ()
    placement_specs: dict[str, str] | None = None
    claims: Sequence[dict] = ()
    tables: Sequence[dict] = ()
    replication: dict | None = None


def render_report(path: str | Path, report: Report) -> Path:
    """Write ``report`` to ``path`` (.html) and its CSV and JSON files beside it; returns the HTML path."""
    r = report
    path = Path(path)
    stem = path.with_suffix("")
    tidy = r.tidy.assign(**{c: v for c, v in (("layer", -1), ("mode", "")) if c not in r.tidy.columns})
    data_csv = tidy.to_csv(index=False, lineterminator="\n")
    tests_csv = r.tests.to_csv(index=False, lineterminator="\n")
    styles = placement_styles(list(tidy["placement"].unique()) + [str(p) for p in r.placements])
    colours = {k: s.colour for k, s in styles.items()}
    scalars = sorted(m for m in tidy.loc[tidy["x"].isna(), "measure"].unique() if m not in PERPLEXITY)
    perplexity = scalar_table(tidy, PERPLEXITY, r.confidence)
    other = scalar_rows_table(tidy, scalars, r.confidence)
    context = {
        "title": r.title, "question": r.question, "summary": list(r.summary), "environment": r.environment,
        "config": flatten(r.config),
        "methods": [*r.methods, STATISTICAL_METHODS.format(level=f"{r.confidence:.0%}")],
        "placements": placement_rows(r.placements, colours, r.placement_specs), "colours": colours,
        "perplexity": perplexity, "scalars": other, "tests": significance_groups(r.tests), "figures": list(r.figures),
        "seeds": seeds_by_placement(tidy), "level": f"{r.confidence:.0%}", "alpha": r.alpha,
        "headline": list(r.headline), "checks": list(r.checks), "answer": r.answer,
        "lead_figures": list(r.lead_figures), "claims": list(r.claims), "tables": list(r.tables),
        "replication": r.replication,
        "downloads": [
            {"name": f"{stem.name}_data.csv", "what": f"raw tidy data ({len(tidy)} rows)"},
            {"name": f"{stem.name}_tests.csv", "what": f"significance tests ({len(r.tests)} rows)"},
            {"name": f"{stem.name}.json", "what": "everything: configuration, estimates, tests, checks, data"},
        ],
    }
    html = render("report.html.j2", **context)
    write_atomic(Path(f"{stem}_data.csv"), data_csv)
    write_atomic(Path(f"{stem}_tests.csv"), tests_csv)
    write_atomic(Path(f"{stem}.json"), to_json({
        "title": r.title, "question": r.question, "headline": list(r.headline),
        "checks": [{"key": c.key, "title": c.title, "verdict": c.verdict, "detail": c.detail} for c in r.checks],
        "answer": r.answer, "claims": list(r.claims), "tables": list(r.tables), "replication": r.replication,
        "summary": list(r.summary), "config": r.config,
        "placements": context["placements"], "environment": r.environment,
        "estimates": {"perplexity": _estimates(tidy, PERPLEXITY, r.confidence),
                      "scalars": _estimates(tidy, scalars, r.confidence)},
        "tests": r.tests,
        "figures": [{"key": f.key, "title": f.title, "caption": f.caption, "note": f.note}
                    for f in [*r.lead_figures, *r.figures]],
        "data": tidy,
    }))
    return write_atomic(path, html)


def _estimates(tidy: pd.DataFrame, measures: Sequence[str], confidence: float) -> pd.DataFrame:
    rows = tidy[tidy["measure"].isin(measures) & tidy["x"].isna()]
    return inference.estimate(rows, by=("placement", "measure"), confidence=confidence)
