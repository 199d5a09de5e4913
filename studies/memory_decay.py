"""The placement study: where can dropout go in an LSTM without destroying its memory?

    python -m studies.memory_decay                      # the default preset, a few minutes on a CPU
    python -m studies.memory_decay --preset smoke       # seconds-long, for tests
    python -m studies.memory_decay --preset paper --device cuda

Trains a grid of placements x seeds on each corpus of the preset, measures
every model's memory (``probe.measure``), tests each placement against a
reference placement across seeds (``probe.stats``) and writes one
self-contained report per corpus: ``<out>/memory_decay.html`` for the first
corpus, ``<out>/memory_decay_<corpus>.html`` for the others, with the data as
CSV and JSON beside them. Runs are cached under ``--runs-dir`` by a hash of
their configuration, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from probe import stats
from probe.data import CorpusError, load_corpus
from probe.grid import Cell, CellResult, run_grid
from probe.ray_executor import ClusterError
from probe.measure import MeasureConfig, run_all
from probe.placements import PLACEMENT_NAMES, PlacementError, parse_placement
from probe.figures import standard_figures
from probe.report import collect_environment, render_report
from probe.train import RunConfig, preset
from studies.cli import add_grid_options, finish_grid_options

QUESTION = (
    "Where can dropout go in an LSTM without destroying its memory? Each placement trains the same model "
    "on the same data over several seeds; we measure how much a token k steps back still changes the "
    "prediction (counterfactual influence, with and without the placement's training masks), how much "
    "a linear probe can still read it from the hidden state, and how perplexity depends on the context "
    "the model is given, and test every placement against Zaremba et al.'s (dropout off the recurrence)."
)


@dataclass(frozen=True)
class CorpusPlan:
    """One corpus of a study: the runs trained on it and how they are measured."""

    corpus: str
    run: dict  # RunConfig fields on top of the "tiny" preset's
    measure: MeasureConfig
    split: str = "canonical"
    optional: bool = False  # include only when its files are found
    base: str = "tiny"  # the probe.train preset that ``run`` overrides

    def run_config(self, placement: str, seed: int, device: str) -> RunConfig:
        return preset(self.base, **{**self.run, "corpus": self.corpus, "split": self.split,
                                    "placement": placement, "seed": seed, "device": device})


@dataclass(frozen=True)
class StudyPreset:
    name: str
    description: str
    corpora: tuple[CorpusPlan, ...]
    seeds: int
    placements: tuple[str, ...] = PLACEMENT_NAMES
    # The metrics tested against the reference, in the report's order.
    metrics: tuple[stats.Metric, ...] = field(default_factory=tuple)


def _metrics(lag_short: int, lag_long: int, recall_lag: int | None = None) -> tuple[stats.Metric, ...]:
    """The tested metrics: memory under training masks first (the question), then memory and perplexity."""
    metrics = [
        stats.Metric("influence_kl_retained", x=lag_short, mode="train", higher_is_better=True,
                     label=f"share of lag-{lag_short} influence kept under training masks"),
        stats.Metric("influence_kl", x=lag_short, mode="train",
                     label=f"training-mode influence at lag {lag_short}", unit="nats"),
        stats.Metric("influence_kl", x=lag_short, mode="eval",
                     label=f"evaluation-mode influence at lag {lag_short}", unit="nats"),
        stats.Metric("influence_kl", x=lag_long, mode="eval",
                     label=f"evaluation-mode influence at lag {lag_long}", unit="nats"),
        stats.Metric("probe_bits", x=lag_short, mode="eval",
                     label=f"probe information about the token {lag_short} back (top layer)", unit="bits"),
    ]
    if recall_lag is not None:
        metrics.append(stats.Metric("recall_accuracy", x=recall_lag, higher_is_better=True,
                                    label=f"recall accuracy of planted copies at lag {recall_lag}"))
    metrics += [
        stats.Metric("valid_ppl", label="validation perplexity"),
        stats.Metric("test_ppl", label="test perplexity"),
        stats.Metric("effective_context", mode="eval", label="effective context", unit="tokens"),
    ]
    return tuple(metrics)


# Small models: every placement drops at one rate, so placements differ only in where the masks go.
# (The registry's defaults are the papers' rates for 650-1500-unit models; 0.5 smothers a 64-unit one.)
EQUAL_RATE_PLACEMENTS = (
    "none",
    "zaremba:p=0.25",
    "naive:p=0.25,rec=0.25",
    "variational:p=0.25,rec=0.25",
    "semeniuta:p=0.25,rec=0.25",
    "zoneout:p=0.25,zc=0.25,zh=0.025",
    "weight_drop:p=0.25,w=0.25",
    "rnndrop:p=0.25,cell=0.25",
)


# A synthetic language with copies planted at known lags (probe.synthetic):
# local Markov structure plus tokens that repeat the one k steps back.
_SYNTHETIC_SMOKE = "synthetic:train=8000,valid=3000,test=2000,lags=2+5+10"
_SYNTHETIC_DEFAULT = "synthetic:vocab=16,train=60000,valid=12000,test=6000,lags=3+8+20"

_TINY_RUN = dict(num_layers=2, hidden_size=64, emb_size=64, batch_size=20, bptt=35,
                 lr=10.0, lr_decay=2.0, init_scale=0.2, clip=5.0)

PRESETS: dict[str, StudyPreset] = {
    p.name: p
    for p in (
        StudyPreset(
            "smoke",
            "all placements, 2 seeds, tiny models on a small synthetic corpus: seconds per run, for tests",
            (
                CorpusPlan(
                    _SYNTHETIC_SMOKE,
                    dict(num_layers=2, hidden_size=24, emb_size=24, batch_size=8, bptt=20, epochs=2, decay_after=1),
                    MeasureConfig(max_lag=10, max_tokens=2000, influence_windows=64, gradient_windows=32,
                                  probe_positions=600, probe_steps=30, probe_classes=20, context_lengths=(1, 2, 5, 10, 20),
                                  context_targets=100, position_windows=32, stream_batch=8),
                ),
            ),
            seeds=2,
            placements=EQUAL_RATE_PLACEMENTS,
            metrics=_metrics(2, 5, recall_lag=2),
        ),
        StudyPreset(
            "default",
            "all placements at one drop rate (0.25), 6 seeds: a synthetic language with copies planted 3, 8 "
            "and 20 tokens back, plus Tiny Shakespeare (characters) when found",
            (
                CorpusPlan(
                    _SYNTHETIC_DEFAULT,
                    dict(_TINY_RUN, epochs=8, decay_after=5),
                    MeasureConfig(max_lag=30, max_tokens=12_000, influence_windows=192, gradient_windows=96,
                                  probe_positions=8000, probe_steps=60, probe_cell=False,
                                  context_lengths=(1, 2, 5, 10, 20, 50, 100), context_targets=300,
                                  position_windows=96),
                ),
                CorpusPlan(
                    "tinyshakespeare",
                    dict(_TINY_RUN, epochs=2, decay_after=1, train_tokens=150_000),
                    MeasureConfig(max_lag=30, max_tokens=8000, influence_windows=128, gradient_windows=64,
                                  probe_positions=6000, probe_steps=60, probe_cell=False,
                                  context_lengths=(1, 2, 5, 10, 20, 50, 100), context_targets=300,
                                  position_windows=64),
                    optional=True,
                ),
            ),
            # Six, not five: with 7 placements tested against the reference, Holm's correction
            # multiplies the smallest exact permutation p-value of 5 vs 5 seeds (0.0079) past 0.05;
            # at 6 vs 6 it is 7 x 0.0022 = 0.015 (probe.stats.seeds_needed(7) == 6).
            seeds=6,
            placements=EQUAL_RATE_PLACEMENTS,
            metrics=_metrics(2, 10, recall_lag=3),
        ),
        StudyPreset(
            "paper",
            "Zaremba et al.'s medium model on PTB, every placement at its papers' rates, 6 seeds: meant for a GPU",
            (
                CorpusPlan(
                    "ptb",
                    {},
                    MeasureConfig(max_lag=100, max_tokens=100_000, context_lengths=(1, 2, 5, 10, 20, 50, 100, 200)),
                    base="medium",
                ),
            ),
            seeds=6,
            metrics=_metrics(10, 50),
        ),
    )
}


# --- the study --------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text.split(":")[0]).strip("-").lower()


def plan_cells(plan: CorpusPlan, placements, seeds, device: str) -> list[Cell]:
    return [Cell(plan.run_config(p, s, device), plan.measure) for p in placements for s in seeds]


def training_rows(result: CellResult) -> list[dict]:
    """Perplexities and training curves of one run as tidy rows."""
    ids = result.cell.ids()
    rows = []
    for key in ("valid_ppl", "test_ppl", "seconds"):
        value = result.result.get(key, math.nan)
        rows.append(dict(ids, measure=key if key != "seconds" else "train_seconds", x_name="", x=math.nan,
                         value=value if value is not None else math.nan, layer=-1, mode=""))
    for e in result.result.get("epochs", []):
        for key, measure in (("train_ppl", "train_ppl"), ("valid_ppl", "valid_ppl_epoch")):
            rows.append(dict(ids, measure=measure, x_name="epoch", x=float(e["epoch"]), value=e[key], layer=-1, mode=""))
    return rows


def tidy_table(results: list[CellResult]) -> pd.DataFrame:
    """Every number the report shows, one row per placement x seed x measure x x-value."""
    frames = [pd.DataFrame([r for res in results for r in training_rows(res)])]
    frames += [res.measurements for res in results if res.measurements is not None]
    df = pd.concat(frames, ignore_index=True)
    df["seed"] = df["seed"].astype(int)
    return df


def _labels(df: pd.DataFrame) -> pd.DataFrame:
    """Label placements by their canonical spec (``zaremba:p=0.5``), the same in every table."""
    df = df.copy()
    df["placement"] = [parse_placement(p).spec for p in df["placement"]]
    return df


def report_one(plan: CorpusPlan, study: StudyPreset, results: list[CellResult], path: Path, args, corpus_note: str,
               reference: str) -> Path:
    df = _labels(tidy_table(results))
    placements = [parse_placement(p).spec for p in dict.fromkeys(c.run.placement for c in (r.cell for r in results))]
    status = pd.Series([r.status for r in results]).value_counts().to_dict()
    failed = [f"{r.cell.run.placement} seed {r.cell.run.seed}: {r.status}" for r in results if r.status != "finished"]
    example = results[0].cell
    config = {
        "study preset": f"{study.name}: {study.description}",
        "corpus": plan.corpus,
        "split": corpus_note,
        "seeds": ", ".join(str(s) for s in sorted({r.cell.run.seed for r in results})),
        "placements": ", ".join(placements),
        "reference placement": reference,
        "runs": ", ".join(f"{v} {k}" for k, v in status.items()),
        "training (RunConfig, placement and seed vary)": {
            k: v for k, v in dataclasses.asdict(example.run).items() if k not in ("placement", "seed")
        },
        "measurements (MeasureConfig)": dataclasses.asdict(example.measure),
        "run folders": str(args.runs_dir),
    }
    methods = [
        f"Corpus: {plan.corpus} ({corpus_note}).",
        "Training follows Zaremba et al. (2014): plain SGD, learning rate held and then divided every epoch, "
        "gradient norm clipped, hidden state carried across BPTT windows; evaluation carries state with no dropout.",
        "Counterfactual influence replaces the token k steps back by a unigram draw and measures the KL divergence "
        "of the next-token distribution; in training mode both copies share the placement's training masks.",
        "Probe information is a lower bound on the mutual information (bits) between the token k back and the "
        "top layer's hidden state, from a linear probe trained and scored on disjoint held-out positions.",
    ]
    if failed:
        methods.append("Runs that did not finish (left out of every statistic): " + "; ".join(failed) + ".")
    runtime = sum(r.result.get("seconds", 0.0) or 0.0 for r in results)
    env = collect_environment(**{"training time, all runs (s)": f"{runtime:.1f}", "jobs": str(args.jobs)})
    tests = stats.test_against_reference(df, reference, list(study.metrics))
    return render_report(
        path, title=f"Memory decay under dropout placements: {plan.corpus}", question=QUESTION, config=config,
        placements=placements, tidy=df, tests=tests, summary=headline(tests) + stats.summarize(tests),
        environment=env, figures=standard_figures(df), methods=methods,
    )


def headline(tests: pd.DataFrame, placement: str = "naive", alpha: float = 0.05) -> list[str]:
    """The toolkit's question answered first: does ``placement`` lose memory relative to the reference?"""
    rows = tests[[parse_placement(p).name == placement for p in tests["placement"]]] if len(tests) else tests
    if rows.empty:
        return []
    parts = []
    for _, r in rows.iterrows():
        significant = r["p_holm"] < alpha
        parts.append(
            f"{r['label']}: {stats.fmt(r['mean'], 3)} vs {stats.fmt(r['mean_ref'], 3)} "
            f"(difference {stats.fmt(r['diff'], 3)}, 95% CI [{stats.fmt(r['ci_low'], 3)}, {stats.fmt(r['ci_high'], 3)}], "
            f"Holm-corrected permutation p = {stats.fmt_p(r['p_holm'])}: "
            f"{'significant' if significant else 'not significant'})"
        )
    first = rows.iloc[0]
    return [f"The question first: does {first['placement']} (dropout on h_(t-1) at every step) lose memory "
            f"relative to {first['reference']}? " + "; ".join(parts) + f". n = {first['n']} vs {first['n_ref']} seeds."]


def resolve_reference(reference: str, placements: list[str]) -> str:
    """The placement spec the others are tested against: an exact spec, or a name that one spec has."""
    spec = parse_placement(reference).spec
    if spec in placements:
        return spec
    same_name = [p for p in placements if parse_placement(p).name == parse_placement(reference).name]
    if ":" not in reference and len(same_name) == 1:
        return same_name[0]
    raise PlacementError(f"reference placement {reference!r} is not among the placements: {', '.join(placements)}")


def run_study(args) -> list[Path]:
    study = PRESETS[args.preset]
    placements = [parse_placement(p).spec for p in (args.placements or study.placements)]
    reference = resolve_reference(args.reference, placements)
    seeds = list(range(args.seeds if args.seeds is not None else study.seeds))
    plans = list(study.corpora)
    if args.corpus:
        plans = [dataclasses.replace(plans[0], corpus=args.corpus, optional=False, split=args.split or plans[0].split)]
    elif args.split:
        plans = [dataclasses.replace(p, split=args.split) for p in plans]
    paths = []
    for plan in plans:
        try:
            corpus = load_corpus(plan.corpus, args.data_dir, split=plan.split)
        except CorpusError as e:
            if plan.optional:
                print(f"skipping optional corpus {plan.corpus}: {str(e).splitlines()[0]}", file=sys.stderr)
                continue
            raise
        cells = plan_cells(plan, placements, seeds, args.device)
        print(f"{plan.corpus}: {len(cells)} runs ({len(placements)} placements x {len(seeds)} seeds) "
              f"-> {args.runs_dir}", file=sys.stderr)
        results = run_grid(cells, args.runs_dir, run_all, jobs=args.jobs, data_dir=args.data_dir,
                           progress=not args.no_progress, executor=args.executor, address=args.address, threads=1)
        for r in results:
            if r.status == "failed":
                print(f"run {r.cell.run.run_id()} failed:\n{r.error}", file=sys.stderr)
        name = "memory_decay.html" if not paths else f"memory_decay_{_slug(plan.corpus)}.html"
        paths.append(report_one(plan, study, results, Path(args.out) / name, args, corpus.split_note, reference))
        print(f"report: {paths[-1]}", file=sys.stderr)
    if not paths:
        raise CorpusError("no corpus of this preset could be loaded")
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m studies.memory_decay", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--placements", nargs="+", metavar="SPEC",
                   help=f"placement specs to compare (default: all of {', '.join(PLACEMENT_NAMES)})")
    p.add_argument("--reference", default="zaremba", help="placement every other is tested against (default zaremba)")
    p.add_argument("--seeds", type=int, help="seeds per placement (default: the preset's)")
    p.add_argument("--corpus", help="run on this corpus only, with the preset's first corpus settings")
    p.add_argument("--split", choices=["canonical", "substitute"], help="corpus split (substitute: see probe.data)")
    add_grid_options(p, study="memory_decay", jobs=2)
    return p


def main(argv=None) -> int:
    args = finish_grid_options(build_parser().parse_args(argv), study="memory_decay")
    if args.seeds is not None and args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        paths = run_study(args)
    except (CorpusError, PlacementError, ValueError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.0f} s: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
