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

from probe.analysis.verdicts import COMPARISON_KEYS, Verdict, agreement, agreement_summary
from probe.placements import readable
from probe.analysis.design import StudyDesign, run_tests
from probe.report.answer import NOT_WORSE, stated_verdicts
from probe.report.validity import learned_lags, validity_checks

STUDY_COLUMNS = ("placement", "seed", "measure", "x", "value")


class StudyDataError(ValueError):
    """A study's data file cannot be read as one; the message says why."""


def read_study_data(path: str | Path, what: str = "--replicate-of") -> pd.DataFrame:
    """A study's tidy data (``<report>_data.csv``), checked: one line naming ``what`` was given and what is
    wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise StudyDataError(f"{what} {path}: no such file; give a study's <report>_data.csv")
    try:
        df = pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise StudyDataError(f"{what} {path} is not a CSV table ({str(e).splitlines()[0]}); give a "
                             f"study's <report>_data.csv") from None
    missing = [c for c in STUDY_COLUMNS if c not in df.columns]
    if missing:
        raise StudyDataError(f"{what} {path} lacks the columns {', '.join(missing)}; give a study's "
                             f"<report>_data.csv (its tidy data), not its tests table")
    df = df.assign(**{c: v for c, v in (("layer", -1), ("mode", ""), ("regime", "")) if c not in df.columns})
    df["mode"] = df["mode"].fillna("")
    df["regime"] = df["regime"].fillna("")
    df["seed"] = df["seed"].astype(int)
    return df


def headline_agreement(stated: pd.DataFrame, other: pd.DataFrame) -> tuple[int, int, list[str]]:
    """How many of one study's headline verdicts (``probe.report.answer.stated_verdicts``) the other study's
    tests repeat: (agreeing, stated, the ones it does not repeat, in words)."""
    keys = [k for k in COMPARISON_KEYS if k in stated.columns and k in other.columns]
    both = stated.merge(other[[*keys, "verdict"]], on=keys, how="left")
    repeat = [(v == NOT_WORSE and o in (Verdict.BETTER.value, Verdict.NOT_DISTINGUISHABLE.value)) or v == o
              for v, o in zip(both["stated"], both["verdict"])]
    missed = [f"{r['metric']}, {readable(r['placement'])}: {r['stated']} here, {r['verdict']} there"
              for (_, r), ok in zip(both.iterrows(), repeat) if not ok]
    return sum(repeat), len(both), missed


def replication_table(this: pd.DataFrame, other: pd.DataFrame, *, this_seeds: str, other_seeds: str,
                      other_name: str, stated: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> dict:
    """{"rows": [...], "summary": {...}, "headline": {...}, "this_seeds", "other_seeds", "other",
    "shared_seeds"}: one row per comparison both studies made, with each verdict and whether they agree;
    ``stated``: each study's headline verdicts, checked against the other's tests."""
    table = agreement(this, other)
    rows = [{"regime": r.get("regime", ""), "metric": r["label"], "placement": readable(r["placement"]),
             "reference": readable(r["reference"]), "this": r["verdict_a"], "this_settled": bool(r["settled_a"]),
             "other": r["verdict_b"], "other_settled": bool(r["settled_b"]), "agree": bool(r["agree"])}
            for _, r in table.iterrows()]
    shared = sorted(set(this_seeds.split(", ")) & set(other_seeds.split(", ")) - {""}, key=int)
    headline = None
    if stated is not None:
        here, there = headline_agreement(stated[0], other), headline_agreement(stated[1], this)
        headline = {"agree": here[0] + there[0], "stated": here[1] + there[1], "missed": here[2] + there[2]}
    return {"rows": rows, "summary": agreement_summary(this, other), "headline": headline, "this_seeds": this_seeds,
            "other_seeds": other_seeds, "other": other_name, "shared_seeds": ", ".join(shared)}


def seeds_text(tidy: pd.DataFrame) -> str:
    return ", ".join(str(s) for s in sorted(int(x) for x in tidy["seed"].unique()))


def replicate(this: pd.DataFrame, other: pd.DataFrame, design: StudyDesign, *, other_name: str,
              this_tests: pd.DataFrame | None = None) -> dict:
    """The replication table of two studies' tidy data under one design: both tests tables computed anew
    (``this_tests`` reused when given), and each study's headline verdicts checked against the other."""
    tests = [run_tests(this, design) if this_tests is None else this_tests, run_tests(other, design)]
    stated = tuple(stated_verdicts(t, learned_lags(validity_checks(d, alpha=design.alpha, test=design.test)),
                                   design.short_lag) for d, t in zip((this, other), tests))
    return replication_table(*tests, this_seeds=seeds_text(this), other_seeds=seeds_text(other),
                             other_name=other_name, stated=stated)


def replication_lines(rep: dict) -> list[str]:
    """The replication table as printed lines: the agreement first, then every disagreement."""
    s = rep["summary"]
    lines = [f"replication against {rep['other']} (seeds {rep['this_seeds']} here, {rep['other_seeds']} there): "
             f"{s['agree']} of {s['compared']} verdicts agree ({100 * s['rate']:.0f}%); of the verdicts each calls "
             f"settled, {s['settled_a_agree']} of {s['settled_a']} here and {s['settled_b_agree']} of {s['settled_b']} "
             f"there are repeated by the other"]
    if rep.get("headline"):
        h = rep["headline"]
        lines.append(f"headline verdicts (each study's, in the other's tests): {h['agree']} of {h['stated']} repeat")
        lines += [f"  not repeated: {m}" for m in h["missed"]]
    if rep["shared_seeds"]:
        lines.append(f"warning: both studies ran seeds {rep['shared_seeds']}, so they are not independent")
    for r in rep["rows"]:
        if not r["agree"]:
            mark = lambda settled: "" if settled else " (not settled)"  # noqa: E731
            regime = f"[{r['regime']}] " if r["regime"] else ""
            lines.append(f"  disagree: {regime}{r['metric']}, {r['placement']} vs {r['reference']}: "
                         f"{r['this']}{mark(r['this_settled'])} here, {r['other']}{mark(r['other_settled'])} there")
    return lines


def print_replication(rep: dict) -> None:
    for line in replication_lines(rep):
        print(line, file=sys.stderr)
