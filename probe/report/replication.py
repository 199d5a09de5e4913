"""Two studies' verdicts side by side: does an independent replication (disjoint seeds) agree?

``replication_table`` takes two tests tables computed with one design (``probe.analysis.design.run_tests``
on each study's tidy data) and gives the report's replication section and the printed table: each
comparison, its verdict in each study, whether they agree, and the agreement rate, over every comparison
and over the verdicts this study states as settled (significant, not fragile).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from probe.analysis.verdicts import agreement, agreement_summary
from probe.placements import readable

STUDY_COLUMNS = ("placement", "seed", "measure", "x", "value")


class StudyDataError(ValueError):
    """A study's data file cannot be read as one; the message says why."""


def read_study_data(path: str | Path) -> pd.DataFrame:
    """A study's tidy data (``<report>_data.csv``), checked: one line naming what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise StudyDataError(f"--replicate-of {path}: no such file; give a study's <report>_data.csv")
    try:
        df = pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise StudyDataError(f"--replicate-of {path} is not a CSV table ({str(e).splitlines()[0]}); give a "
                             f"study's <report>_data.csv") from None
    missing = [c for c in STUDY_COLUMNS if c not in df.columns]
    if missing:
        raise StudyDataError(f"--replicate-of {path} lacks the columns {', '.join(missing)}; give a study's "
                             f"<report>_data.csv (its tidy data), not its tests table")
    df = df.assign(**{c: v for c, v in (("layer", -1), ("mode", ""), ("regime", "")) if c not in df.columns})
    df["mode"] = df["mode"].fillna("")
    df["regime"] = df["regime"].fillna("")
    df["seed"] = df["seed"].astype(int)
    return df


def replication_table(this: pd.DataFrame, other: pd.DataFrame, *, this_seeds: str, other_seeds: str,
                      other_name: str) -> dict:
    """{"rows": [...], "summary": {...}, "this_seeds", "other_seeds", "other", "shared_seeds"}: one row per
    comparison both studies made, with each verdict and whether they agree."""
    table = agreement(this, other)
    rows = [{"regime": r.get("regime", ""), "metric": r["label"], "placement": readable(r["placement"]),
             "reference": readable(r["reference"]), "this": r["verdict_a"], "this_fragile": bool(r["fragile_a"]),
             "other": r["verdict_b"], "other_fragile": bool(r["fragile_b"]), "agree": bool(r["agree"])}
            for _, r in table.iterrows()]
    shared = sorted(set(this_seeds.split(", ")) & set(other_seeds.split(", ")) - {""}, key=int)
    return {"rows": rows, "summary": agreement_summary(this, other), "this_seeds": this_seeds,
            "other_seeds": other_seeds, "other": other_name, "shared_seeds": ", ".join(shared)}


def replication_lines(rep: dict) -> list[str]:
    """The replication table as printed lines: the agreement first, then every disagreement."""
    s = rep["summary"]
    lines = [f"replication against {rep['other']} (seeds {rep['this_seeds']} here, {rep['other_seeds']} there): "
             f"{s['agree']} of {s['compared']} verdicts agree ({100 * s['rate']:.0f}%); "
             f"{s['settled_a_agree']} of {s['settled_a']} settled verdicts of this study agree"]
    if rep["shared_seeds"]:
        lines.append(f"warning: both studies ran seeds {rep['shared_seeds']}, so they are not independent")
    for r in rep["rows"]:
        if not r["agree"]:
            mark = lambda fragile: " (fragile)" if fragile else ""  # noqa: E731
            regime = f"[{r['regime']}] " if r["regime"] else ""
            lines.append(f"  disagree: {regime}{r['metric']}, {r['placement']} vs {r['reference']}: "
                         f"{r['this']}{mark(r['this_fragile'])} here, {r['other']}{mark(r['other_fragile'])} there")
    return lines


def print_replication(rep: dict) -> None:
    for line in replication_lines(rep):
        print(line, file=sys.stderr)
