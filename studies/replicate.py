"""Do two runs of the placement study agree? Sets each verdict of one beside the other's.

    python -m studies.replicate reports/memory_decay_data.csv other/memory_decay_data.csv
    python -m studies.replicate A_data.csv B_data.csv --test permutation   # the verdicts of another test

Both studies' tests are computed anew from their tidy data (``<report>_data.csv``) with one design (the
preset's metrics and references, ``--test`` deciding), so the two columns are comparable whatever version
wrote them. Prints the agreement rate over every comparison and over the verdicts the first study states as
settled (significant and not fragile), then every disagreement. Runs of one preset with disjoint seeds
(``--seeds 0-5`` and ``--seeds 6-11``) make an independent replication.
"""

from __future__ import annotations

import argparse
import sys

from probe.analysis.design import placement_design
from probe.analysis.verdicts import DECIDING_TESTS
from probe.report.replication import StudyDataError, read_study_data, replicate, replication_lines
from probe.report.validity import planted_lags
from studies.memory_decay_presets import PRESETS


def compare_studies(first, second, *, preset: str = "default", test: str = "welch", name: str = "") -> dict:
    """The replication table of two studies' tidy data under one design."""
    study = PRESETS[preset]
    design = placement_design(planted_lags(first), study.short_lag, study.long_lag, test=test)
    return replicate(first, second, design, other_name=name or "the second study")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies.replicate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", help="a study's <report>_data.csv")
    p.add_argument("second", help="another run's <report>_data.csv (disjoint seeds for an independent replication)")
    p.add_argument("--preset", default="default", choices=[k for k, v in PRESETS.items() if not v.variants],
                   help="the preset whose lags define the tested metrics (default: default)")
    p.add_argument("--test", default="welch", choices=DECIDING_TESTS,
                   help="the test that decides each verdict, Holm-corrected (default: welch)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        first, second = read_study_data(args.first, "first"), read_study_data(args.second, "second")
        rep = compare_studies(first, second, preset=args.preset, test=args.test, name=args.second)
    except StudyDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in replication_lines(rep):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
