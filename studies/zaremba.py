"""Reproduce Zaremba, Sutskever & Vinyals (2014), Table 1: PTB word-level perplexity.

    python -m studies.zaremba --device cuda                          # small, medium, large; 3 seeds
    python -m studies.zaremba --sizes small --seeds 2 --split substitute --epochs 1

Trains the paper's small (no dropout), medium and large (dropout off the
recurrence) configurations, optionally under other placements at the same
size, over several seeds, and writes ``<out>/zaremba.html``: the paper's
validation and test perplexities beside ours with t-intervals across seeds,
training curves, words per second, seconds per epoch and the device.

The PTB training file is not in the local corpus folder. Without it the
study stops with an error saying how to obtain it, unless ``--split
substitute`` is given (PTB valid as training text, halves of PTB test for
evaluation); the report then says prominently that its numbers are not
comparable with the paper's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import pandas as pd

from probe.report import text as report_text

from probe.analysis import compare, inference
from probe.data.corpus import CorpusError
from probe.data.registry import load_corpus
from probe.report.figures import standard_figures
from probe.runs.grid import run_grid
from probe.runs.cells import Cell, CellResult
from probe.runs.ray_executor import ClusterError
from probe.placements import PlacementError, parse_placement
from probe.report.html import Report, collect_environment, render_report
from probe.runs.config import PRESETS as TRAIN_PRESETS
from probe.runs.config import RunStatus, preset
from studies.cli import (add_grid_options, failure_summary, finish_grid_options, preflight, preflight_folders,
                        report_failures, run_interruptible)

# Zaremba, Sutskever & Vinyals 2014, Table 1 (valid / test perplexity).
PAPER = {"small": (120.7, 114.5), "medium": (86.2, 82.7), "large": (82.2, 78.4)}
SIZES = tuple(PAPER)

QUESTION = (
    "Does this toolkit reproduce Zaremba et al.'s (2014) Penn Treebank results? Each of the paper's three "
    "configurations is trained over several seeds with the paper's protocol; the table sets our validation "
    "and test perplexities, with t-intervals across seeds, beside the published ones."
)


def group_label(size: str, placement: str) -> str:
    """How tables name a group: the size and the canonical spec a RunConfig holds."""
    return f"{size} · {placement}"


def plan(args) -> list[tuple[str, Cell]]:
    """(size, cell) for every size x placement x seed of the study."""
    cells = []
    for size in args.sizes:
        placements = [TRAIN_PRESETS[size]["placement"], *(args.placements or [])]
        for placement in dict.fromkeys(parse_placement(p).spec for p in placements):
            for seed in range(args.seeds):
                overrides = dict(corpus=args.corpus, split=args.split, placement=placement, seed=seed,
                                 device=args.device)
                if args.epochs is not None:
                    overrides.update(epochs=args.epochs, decay_after=min(TRAIN_PRESETS[size]["decay_after"], args.epochs))
                if args.train_tokens is not None:
                    overrides["train_tokens"] = args.train_tokens
                cells.append((size, Cell(preset(size, **overrides))))
    return cells


def tidy_rows(size: str, result: CellResult) -> list[dict]:
    """Perplexities, speed and training curves of one run, labelled by size and placement."""
    label = group_label(size, result.cell.run.placement)
    ids = {"placement": label, "seed": result.cell.run.seed, "run_id": result.cell.run.run_id(), "layer": -1, "mode": ""}
    res = result.result
    if res is None:  # a failed run: no numbers
        return []
    epochs = res.epochs
    rows = [dict(ids, measure=m, x_name="", x=math.nan, value=getattr(res, m)) for m in ("valid_ppl", "test_ppl")]
    if epochs:
        rows.append(dict(ids, measure="words_per_sec", x_name="", x=math.nan,
                         value=sum(e.get("words_per_sec", math.nan) for e in epochs) / len(epochs)))
        rows.append(dict(ids, measure="seconds_per_epoch", x_name="", x=math.nan,
                         value=sum(e["seconds"] for e in epochs) / len(epochs)))
    for e in epochs:
        rows.append(dict(ids, measure="train_ppl", x_name="epoch", x=float(e["epoch"]), value=e["train_ppl"]))
        rows.append(dict(ids, measure="valid_ppl_epoch", x_name="epoch", x=float(e["epoch"]), value=e["valid_ppl"]))
    return rows


def summary(tidy: pd.DataFrame, results: list[tuple[str, CellResult]], substitute: bool,
            corpus: str = "ptb") -> list[str]:
    sentences = []
    if corpus != "ptb":
        sentences.append(
            f"OTHER CORPUS: trained and evaluated on {corpus}, not Penn Treebank; the paper's perplexities are shown "
            "for reference only and are NOT comparable with these.")
    if substitute:
        sentences.append(
            "SUBSTITUTE SPLIT: trained on PTB's validation text and evaluated on halves of its test text, with the "
            "vocabulary of those files; these perplexities are NOT comparable with the paper's."
        )
    for size in dict.fromkeys(s for s, _ in results):
        for label in dict.fromkeys(group_label(size, r.cell.run.placement) for s, r in results if s == size):
            rows = tidy[tidy["placement"] == label]
            parts = []
            for measure, paper in zip(("valid_ppl", "test_ppl"), PAPER[size]):
                ci = inference.mean_ci(rows.loc[rows["measure"] == measure, "value"].dropna().to_numpy())
                parts.append(f"{measure.split('_')[0]} {report_text.fmt(ci.mean)} (95% CI [{report_text.fmt(ci.low)}, "
                             f"{report_text.fmt(ci.high)}], n = {ci.n}) against the paper's {paper}")
            sentences.append(f"{label}: " + "; ".join(parts) + ".")
    diverged = [f"{group_label(s, r.cell.run.placement)} seed {r.cell.run.seed} ({r.status})"
                for s, r in results if r.status != RunStatus.FINISHED]
    if diverged:
        sentences.append("Runs that did not finish, left out of every number: " + ", ".join(diverged) + ".")
    return sentences


def run_study(args) -> tuple[Path | None, int, int]:
    """Train and report; returns the report (None if no run finished), the failed runs and all runs."""
    preflight(args, folders=False)
    cells = plan(args)  # placement specs are parsed here, before anything trains
    try:
        corpus = load_corpus(args.corpus, args.data_dir, split=args.split, download=args.download)
    except CorpusError as e:
        if args.split == "canonical" and args.corpus == "ptb":
            raise CorpusError(
                f"{e}\nThe paper's numbers need PTB's training file. To run on the files at hand anyway, pass "
                "--split substitute (PTB valid as training text); the report will say it is not comparable."
            ) from None
        raise
    preflight_folders(args)
    results = run_grid([c for _, c in cells], args.runs_dir, None, jobs=args.jobs, data_dir=args.data_dir,
                       progress=not args.no_progress, executor=args.executor, address=args.address)
    failed = report_failures(results)
    path = Path(args.out) / "zaremba.html"
    if not any(r.status == RunStatus.FINISHED for r in results):
        print(f"no run finished, so {path} was not written" + (" (the existing report is kept)" if path.exists() else ""),
              file=sys.stderr)
        return None, failed, len(results)
    paired = [(size, r) for (size, _), r in zip(cells, results)]
    tidy = pd.DataFrame([row for size, r in paired for row in tidy_rows(size, r)])
    substitute = args.split == "substitute"
    title = "Zaremba et al. (2014) on Penn Treebank" + (" — SUBSTITUTE SPLIT, not comparable" if substitute else "")
    if args.corpus != "ptb":
        title = f"Zaremba et al.'s (2014) configurations on {args.corpus} — not comparable with the paper's PTB numbers"
    config = {
        "sizes": ", ".join(args.sizes), "seeds": args.seeds, "corpus": corpus.label, "split": corpus.split_note,
        "epochs override": args.epochs if args.epochs is not None else "none (the paper's)",
        "train tokens": args.train_tokens if args.train_tokens is not None else "all",
        "device": args.device, "run folders": str(args.runs_dir),
        **{f"RunConfig ({size})": {k: v for k, v in dataclasses.asdict(c.run).items() if k not in ("placement", "seed")}
           for size, c in dict((s, c) for s, c in cells).items()},
    }
    methods = [
        f"Corpus: {corpus.label}: {corpus.split_note}",
        "Protocol (probe.runs.train): plain SGD at learning rate 1, held for the paper's number of epochs and then divided "
        "every epoch, gradient norm clipped, uniform initialisation, hidden state carried across BPTT windows; "
        "evaluation carries state with no dropout. Paper values: Zaremba, Sutskever & Vinyals 2014, Table 1.",
    ]
    placements = list(dict.fromkeys(r.cell.run.placement for _, r in paired))
    env = collect_environment(jobs=str(args.jobs))
    report = render_report(path, Report(
        title=title, question=QUESTION, config=config, placements=placements,
        tidy=tidy, tests=pd.DataFrame(columns=compare.TEST_COLUMNS), summary=summary(tidy, paired, substitute, args.corpus),
        environment=env, figures=[f for f in standard_figures(tidy) if f.key in ("perplexity", "training")],
        methods=methods,
    ))
    return report, failed, len(results)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies.zaremba", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES), help="configurations (default all)")
    p.add_argument("--placements", nargs="+", metavar="SPEC",
                   help="other placements to train at each size, beside the paper's")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    p.add_argument("--corpus", default="ptb",
                   help="ptb (the paper's, default), or another corpus: a registry name or your own text "
                        "(PATH.txt, a folder with train/valid/test.txt, text,level=char:PATH); the report then "
                        "says its numbers are not comparable with the paper's")
    p.add_argument("--split", choices=["canonical", "substitute"], default="canonical",
                   help="'substitute' trains on PTB valid when ptb.train.txt is absent (not comparable)")
    p.add_argument("--epochs", type=int, help="cut every configuration to this many epochs (a budget, not the paper)")
    p.add_argument("--train-tokens", type=int, help="train on only the first N training tokens (a budget)")
    add_grid_options(p, study="zaremba", jobs=1)
    return p


def main(argv=None) -> int:
    args = finish_grid_options(build_parser().parse_args(argv), study="zaremba")
    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1):
        print("error: --seeds and --epochs must be at least 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        ok, outcome = run_interruptible(run_study, args)
    except (CorpusError, PlacementError, ValueError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not ok:
        return outcome
    path, failed, total = outcome
    if failed or path is None:
        what = failure_summary(failed, total) if failed else "no run finished (every one diverged)"
        print(f"error: {what}; " + (f"report written: {path}" if path else "no report written"), file=sys.stderr)
        return 1
    print(f"report: {path} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
