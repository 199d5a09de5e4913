"""The placement study: where can dropout go in an LSTM without destroying its memory?

    python -m studies.memory_decay                      # the default preset, about 14 min on 2 CPU cores
    python -m studies.memory_decay --preset smoke       # under a minute, for tests
    python -m studies.memory_decay --preset dose        # drop rate as an axis
    python -m studies.memory_decay --preset paper --device cuda

Trains a grid of placements x seeds on each corpus of the preset, measures
every model's memory (``probe.measure``), tests each placement against a
reference placement across seeds (``probe.analysis.inference``) and writes one
self-contained report per corpus: ``<out>/memory_decay.html`` for the default
preset (``memory_decay_<preset>.html`` for the others; a second corpus adds
``_<corpus>``), with the data as CSV and JSON beside them. The report opens
with its answer and its validity checks (``probe.report.validity``). Runs are cached under ``--runs-dir`` by a hash of
their configuration, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path



from probe.analysis.compare import reference_label
from probe.analysis.verdicts import DECIDING_TESTS
from probe.data.corpus import CorpusError
from probe.data.registry import SPLIT_MODES, load_corpus
from probe.runs.grid import run_grid
from probe.runs.cells import Cell, run_folder
from probe.runs.estimate import estimate
from probe.runs.folder import RESULT
from probe.runs.config import RunStatus
from probe.runs.ray_executor import ClusterError
from probe.measure import run_all
from probe.placements import PLACEMENT_NAMES, Placement, PlacementError, parse_placement
from probe.model.language_model import LanguageModel
from probe.report.replication import read_study_data
from probe.runs.cli import check_corpus_fits
from studies.cli import (add_grid_options, failure_summary, finish_grid_options, parse_seeds, preflight,
                         preflight_folders, report_failures, retryable, run_interruptible)

from studies.memory_decay_presets import PRESETS, CorpusPlan, StudyPreset  # noqa: F401 (re-exported)
from studies.memory_decay_report import Regime, report_capacity, report_one


# --- the study --------------------------------------------------------------


def _slug(corpus: str) -> str:
    """A file-name-safe short name of a corpus: ``synthetic``, ``tinyshakespeare``, a text file's stem."""
    head = corpus.split(":")[0]
    if head == "text" or head.startswith("text,") or "/" in corpus or "\\" in corpus or corpus.endswith(".txt"):
        head = Path(corpus.split(":", 1)[-1] if head.startswith("text") else corpus).stem or "text"
    return re.sub(r"[^A-Za-z0-9]+", "-", head).strip("-").lower()


def plan_cells(plan: CorpusPlan, placements, seeds, device: str, variants=()) -> list[Cell]:
    """Every placement x seed, or (capacity) every (placement, RunConfig overrides) variant x seed."""
    if variants:
        return [Cell(plan.run_config(p, s, device, **dict(over)), plan.measure) for p, over in variants for s in seeds]
    return [Cell(plan.run_config(p, s, device), plan.measure) for p in placements for s in seeds]


def report_name(preset: str, corpus: str, *, first: bool) -> str:
    """memory_decay.html for the default preset's first corpus; other presets and corpora get their own
    names (memory_decay_dose.html, memory_decay_<corpus>.html), so one never overwrites another's report."""
    stem = "memory_decay" if preset == "default" else f"memory_decay_{preset}"
    return f"{stem}.html" if first else f"{stem}_{_slug(corpus)}.html"


@dataclass
class StudyOutcome:
    reports: list[Path]  # the reports written
    runs: int  # cells run, over every corpus
    failed: int  # of which failed
    not_written: list[Path]  # reports left as they were because no run of their corpus finished
    retry: bool = True  # every failure is one a rerun can fix
    estimated_seconds: float = 0.0  # the grid's wall time predicted before it ran (probe.runs.estimate)


def canonical_placements(given) -> list[Placement]:
    """Every given placement, parsed once here (RunConfig and the model take the Placement as it is); one
    placement given twice is a one-line error."""
    seen: dict[str, tuple[str, Placement]] = {}
    for raw in given:
        placement = parse_placement(raw)
        if placement.spec in seen:
            raise PlacementError(f"placements {seen[placement.spec][0]!r} and {raw!r} are the same placement "
                                 f"({placement.spec}); give each once")
        seen[placement.spec] = (raw, placement)
    return [placement for _, placement in seen.values()]


def check_plan_fits(plan: CorpusPlan, corpus, placements, device: str) -> float:
    """Everything a plan's training and measurements need from its corpus, before anything trains: the
    splits batch, and the measurements run (on an untrained model) without a deterministic error.
    Returns how long those measurements took (seconds; 0 for a plan that is not measured)."""
    config = plan.run_config(placements[0], 0, device)
    check_corpus_fits(corpus, config)
    if plan.measure is None:
        return 0.0
    model = LanguageModel(config.model_config(len(corpus.vocab)))
    start = time.perf_counter()
    try:
        run_all(model, corpus, plan.measure, {"placement": config.placement, "seed": 0, "run_id": "preflight"})
    except ValueError as e:
        raise CorpusError(f"corpus {plan.corpus} is too short for this preset's measurements: "
                          f"{str(e).splitlines()[0]}") from None
    return time.perf_counter() - start


def found_synthetic_study(args):
    """(name, tidy data) of the default study's data in --out, for a real-text report's transfer table; None
    (with one line) when it is not there or cannot be read, which never stops the study."""
    path = Path(args.out) / "memory_decay_data.csv"
    if not path.is_file():
        return None
    try:
        return str(path), read_study_data(path, "the synthetic study's data")
    except ValueError as e:
        print(f"no transfer table: {e}", file=sys.stderr)
        return None


def run_study(args) -> StudyOutcome:
    study = PRESETS[args.preset]
    variants = study.variants if not args.placements else ()
    placements = canonical_placements(args.placements or study.placements if not variants
                                      else dict.fromkeys(p for p, _ in variants))
    specs = [p.spec for p in placements]
    reference = reference_label(specs, args.reference)
    if reference is None:
        raise PlacementError(f"reference placement {args.reference!r} is not among the placements: "
                             f"{', '.join(specs)}")
    seeds = args.seeds if args.seeds is not None else list(range(study.seeds))
    plans = list(study.corpora)
    if args.corpus:  # one corpus, one regime: the settings of the preset's measured plan
        base = next((p for p in plans if p.measure is not None), plans[0])
        plans = [dataclasses.replace(base, corpus=args.corpus, optional=False, split=args.split or base.split,
                                     regime="")]
    elif args.split:
        plans = [dataclasses.replace(p, split=args.split) for p in plans]
    preflight(args, folders=False)
    replicate = (str(args.replicate_of), read_study_data(args.replicate_of)) if args.replicate_of else None
    explicit = None
    if args.compare_with:  # read before anything trains: a bad file is one line
        explicit = str(args.compare_with), read_study_data(args.compare_with, "--compare-with")
    if replicate is not None and variants:
        raise ValueError("--replicate-of compares placement studies; the capacity preset has no verdicts to compare")
    corpora = []  # every corpus is found before any run trains
    for plan in plans:
        try:
            corpus = load_corpus(plan.corpus, args.data_dir, split=plan.split, download=args.download)
            # split="auto" is resolved by what was found: the runs record the split they trained on.
            corpora.append((dataclasses.replace(plan, split=corpus.split), corpus))
        except CorpusError as e:
            if not plan.optional:
                raise
            print(f"skipping optional corpus {plan.corpus}: {str(e).splitlines()[0]}", file=sys.stderr)
    if not corpora:
        raise CorpusError("no corpus of this preset could be loaded")
    real_text = any(corpus.entropy_rate is None for _, corpus in corpora)
    compare_with = (explicit or found_synthetic_study(args)) if real_text else None
    measuring = [check_plan_fits(plan, corpus, placements, args.device) for plan, corpus in corpora]
    preflight_folders(args)
    cells = [plan_cells(plan, placements, seeds, args.device, variants) for plan, _ in corpora]
    for (plan, _), planned in zip(corpora, cells):
        regime = f" ({plan.regime} regime)" if plan.regime else ""
        what = f"{len(variants)} models" if variants else f"{len(placements)} placements"
        print(f"{plan.corpus}{regime}: {len(planned)} runs ({what} x {len(seeds)} seeds) "
              f"-> {args.runs_dir}", file=sys.stderr)
    todo = [(c.run, corpus, seconds) for (_, corpus), planned, seconds in zip(corpora, cells, measuring)
            for c in planned if not (run_folder(args.runs_dir, c).path / RESULT).is_file()]
    outcome_estimate = estimate(todo, args.jobs)
    print(outcome_estimate.line(args.jobs), file=sys.stderr)
    # One grid over every plan, so that no worker waits between regimes.
    every = [c for planned in cells for c in planned]
    results = run_grid(every, args.runs_dir, run_all, jobs=args.jobs, data_dir=args.data_dir,
                       progress=not args.no_progress, executor=args.executor, address=args.address, threads=1)
    outcome = StudyOutcome([], len(results), report_failures(results), [], retryable(results),
                           estimated_seconds=outcome_estimate.seconds)
    by_cell = iter(results)
    regimes = [Regime(plan, corpus, [next(by_cell) for _ in planned]) for (plan, corpus), planned in zip(corpora, cells)]
    # Regimes of one study share a report; corpora of a study without regimes get one report each.
    reports = [regimes] if any(g.plan.regime for g in regimes) else [[g] for g in regimes]
    for i, group in enumerate(reports):
        first = group[0].plan
        path = Path(args.out) / report_name(study.name, first.corpus, first=i == 0 and not args.corpus)
        if not any(r.status == RunStatus.FINISHED for g in group for r in g.results):
            print(f"no run on {first.corpus} finished, so {path} was not written"
                  + (" (the existing report is kept)" if path.exists() else ""), file=sys.stderr)
            outcome.not_written.append(path)
            continue
        if any(not any(r.status == RunStatus.FINISHED for r in g.results) for g in group):
            print(f"no run of a regime finished, so {path} was not written", file=sys.stderr)
            outcome.not_written.append(path)
            continue
        write = report_capacity if variants else report_one
        synthetic = None if any(g.corpus.entropy_rate is not None for g in group) else compare_with
        outcome.reports.append(write(group, study, path, args, reference, replicate, synthetic))
        print(f"report: {path}", file=sys.stderr)
    return outcome


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m studies.memory_decay", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--placements", nargs="+", metavar="SPEC",
                   help=f"placement specs to compare (default: all of {', '.join(PLACEMENT_NAMES)})")
    p.add_argument("--reference", default="none",
                   help="placement every other is tested against on test perplexity (default none: the model "
                        "without dropout); memory is always tested against each placement's memory reference, "
                        "zaremba at its non-recurrent rate")
    p.add_argument("--seeds", type=parse_seeds, metavar="SEEDS",
                   help="the seeds of every placement: a count (6: seeds 0-5), a range (6-11) or a list (0,2,5) "
                        "(default: the preset's count); disjoint seeds make an independent replication")
    p.add_argument("--corpus", help="run on this corpus only, with the preset's first corpus settings: a registry name, "
                   "a synthetic spec, or your own text (PATH.txt, a folder with train/valid/test.txt, or "
                   "text,level=char,valid=0.1,test=0.1:PATH)")
    p.add_argument("--test", default="welch", choices=DECIDING_TESTS,
                   help="the test that decides each verdict, Holm-corrected across placements (default welch: "
                        "docs/regime.md says why; permutation: the exact permutation test)")
    p.add_argument("--replicate-of", type=Path, metavar="DATA_CSV",
                   help="another run of this study (its <report>_data.csv, e.g. from disjoint --seeds): the report "
                        "and the terminal set each verdict beside that study's, with the agreement rate")
    p.add_argument("--compare-with", type=Path, metavar="DATA_CSV",
                   help="a real-text report sets each placement's verdicts beside this synthetic study's (its "
                        "<report>_data.csv; default: <out>/memory_decay_data.csv when it exists)")
    p.add_argument("--split", choices=SPLIT_MODES,
                   help="corpus split: canonical, substitute (a corpus's valid file as training text where the train "
                        "file is absent) or auto (canonical where its files are found); see probe.data.registry")
    add_grid_options(p, study="memory_decay", jobs=2)
    return p


def main(argv=None) -> int:
    args = finish_grid_options(build_parser().parse_args(argv), study="memory_decay")
    start = time.perf_counter()
    try:
        ok, outcome = run_interruptible(run_study, args)
    except (CorpusError, PlacementError, ValueError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not ok:
        return outcome
    seconds = time.perf_counter() - start
    if outcome.failed or outcome.not_written:
        what = (failure_summary(outcome.failed, outcome.runs, outcome.retry) if outcome.failed
                else "no run finished (every one diverged)")
        written = f"reports written: {', '.join(map(str, outcome.reports))}" if outcome.reports else "no report written"
        print(f"error: {what}; {written}", file=sys.stderr)
        return 1
    print(f"done in {seconds:.0f} s (estimated {outcome.estimated_seconds:.0f} s before the grid): "
          + ", ".join(str(p) for p in outcome.reports), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
