"""The placement study: where can dropout go in an LSTM without destroying its memory?

    python -m studies.memory_decay                      # the default preset, about 10 min on 2 CPU cores
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
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probe.report import text as report_text

from probe.analysis import compare
from probe.analysis.regimes import MEMORY, REGULARISATION, has_regimes, regime_rows, two_reference_tests
from probe.report.answer import answer_columns, answer_table, headline
from probe.report.claims import claim_verdicts
from probe.data.corpus import CorpusError
from probe.data.registry import load_corpus
from probe.runs.grid import run_grid
from probe.runs.cells import Cell, CellResult, tidy_table
from probe.runs.ray_executor import ClusterError
from probe.measure import MeasureConfig, run_all
from probe.placements import PLACEMENT_NAMES, PlacementError, parse_placement, placement_name
from probe.report.effect_figures import dose_figure, forest_figure
from probe.report.plotting import placement_styles
from probe.report.figures import standard_figures
from probe.report.html import collect_environment, render_report
from probe.model.language_model import LanguageModel
from probe.runs.cli import check_corpus_fits
from probe.runs.config import RunConfig, preset
from probe.report.validity import planted_lags, validity_checks
from studies.cli import (add_grid_options, failure_summary, finish_grid_options, preflight, preflight_folders,
                        report_failures, retryable, run_interruptible)

QUESTION = (
    "Where can dropout go in an LSTM without destroying its memory? Each placement trains the same model "
    "on the same data over several seeds; we measure how much regularisation it buys (test perplexity "
    "against no dropout) and how much memory it costs: recall of copies planted at known lags, how much a "
    "token k steps back still changes the prediction (counterfactual influence, with and without the "
    "placement's training masks), how much a linear probe can read it from the hidden state, and how "
    "perplexity depends on the context the model is given. Every placement is tested against the model "
    "without dropout."
)


@dataclass(frozen=True)
class CorpusPlan:
    """One corpus of a study: the runs trained on it and how they are measured."""

    corpus: str
    run: dict  # RunConfig fields on top of the base preset's
    measure: MeasureConfig | None  # None: trained only (a regularisation regime needs no measurements)
    split: str = "canonical"
    optional: bool = False  # include only when its files are found
    base: str = "tiny"  # the probe.runs.train preset that ``run`` overrides
    regime: str = ""  # regimes.REGULARISATION or regimes.MEMORY in a study of two regimes; "" for one

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
    short_lag: int = 2  # the lag of the retained-influence and probe metrics
    long_lag: int = 10  # a lag for long-range influence


def study_metrics(lags: list[int], short_lag: int, long_lag: int) -> tuple[list[compare.Metric], list[compare.Metric]]:
    """The tested metrics: (regularisation metrics, tested against none; memory metrics, tested against
    each placement's memory reference), the answer table's first, then the rest of the evidence."""
    columns = answer_columns(lags, short_lag)
    fit = [c.metric for c in columns if c.regime == REGULARISATION] + [compare.Metric("valid_ppl")]
    memory = [c.metric for c in columns if c.regime == MEMORY]
    memory += [compare.Metric("source_influence", x=k, mode="eval") for k in lags[:-1]]
    memory += [compare.Metric("recall_accuracy", x=k, mode="eval") for k in lags]
    memory += [
        compare.Metric("influence_kl_eval_half_life", mode="eval"),
        compare.Metric("influence_kl", x=short_lag, mode="train",
                       label=f"training-mode influence at lag {short_lag}", unit="nats"),
        compare.Metric("influence_kl", x=long_lag, mode="eval",
                       label=f"evaluation-mode influence at lag {long_lag}", unit="nats"),
        compare.Metric("probe_bits", x=short_lag, mode="eval",
                       label=f"probe information about the token {short_lag} back (top layer)", unit="bits"),
        compare.Metric("effective_context", mode="eval"),
    ]
    return fit, memory


def _rated(rate: float) -> tuple[str, ...]:
    """Every placement dropping at one rate, so placements differ only in where the masks go
    (the registry's defaults are the papers' rates for 650-1500-unit models)."""
    r = f"{rate:g}"
    return (
        "none", f"zaremba:p={r}", f"naive:p={r},rec={r}", f"variational:p={r},rec={r}",
        f"semeniuta:p={r},rec={r}", f"zoneout:p={r},zc={r},zh=0.025", f"weight_drop:p={r},w={r}",
        f"rnndrop:p={r},cell={r}",
    )


def _doses(rates=(0.1, 0.3, 0.5)) -> tuple[str, ...]:
    """none plus zaremba, naive and variational at each rate: the dose-response grid."""
    out = ["none"]
    for name in ("zaremba", "naive", "variational"):
        for rate in rates:
            r = f"{rate:g}"
            out.append(f"zaremba:p={r}" if name == "zaremba" else f"{name}:p={r},rec={r}")
    return tuple(out)


# The synthetic language with marked recalls (probe.data.synthetic, docs/synthetic.md): a Markov chain over
# 16 tokens, and copies of a <mark>ed token planted 3, 8 and 20 tokens later. Its regime was chosen by
# the validity checks (docs/regime.md), never by how the placements compare.
_SYNTHETIC_SMOKE = "synthetic:vocab=8,train=6000,valid=3000,test=2000,lags=2+5+10,cue=0.3,mark=1"
# Two regimes of one language (docs/regime.md): scarce data, where none overfits (regularisation), and
# enough data, where the memory reference learns every planted lag close to the optimum (memory).
_SYNTHETIC_DEFAULT = "synthetic:vocab=16,train=30000,valid=10000,test=10000,lags=3+8+20,cue=0.2,mark=1"
_SYNTHETIC_MEMORY = "synthetic:vocab=16,train=90000,valid=10000,test=10000,lags=3+8+20,cue=0.2,mark=1"
_DEFAULT_RUN = dict(num_layers=2, hidden_size=96, emb_size=96, batch_size=16, bptt=35, optimizer="adam", forget_bias=1.0,
                    lr=5e-3, lr_decay=2.0, decay_after=19, epochs=23, init_scale=0.1, clip=5.0)
_MEMORY_RUN = dict(_DEFAULT_RUN, decay_after=10, epochs=14)
_DEFAULT_MEASURE = MeasureConfig(
    max_lag=30, max_tokens=10_000, influence_windows=128, gradient_windows=64, probe_positions=3000,
    probe_steps=40, probe_cell=False, context_lengths=(1, 2, 5, 10, 20, 50, 100), context_targets=300,
    position_windows=64,
)
_SMOKE = CorpusPlan(
    _SYNTHETIC_SMOKE,
    dict(num_layers=2, hidden_size=24, emb_size=24, batch_size=8, bptt=24, epochs=3, decay_after=2,
         optimizer="adam", lr=1e-2),
    MeasureConfig(max_lag=12, max_tokens=2000, influence_windows=64, gradient_windows=32,
                  probe_positions=600, probe_steps=30, probe_classes=20, context_lengths=(1, 2, 5, 10, 20),
                  context_targets=100, position_windows=32, stream_batch=8),
)
_DEFAULT = (CorpusPlan(_SYNTHETIC_DEFAULT, _DEFAULT_RUN, None, regime=REGULARISATION),
            CorpusPlan(_SYNTHETIC_MEMORY, _MEMORY_RUN, _DEFAULT_MEASURE, regime=MEMORY))
_SHAKESPEARE = CorpusPlan(
    "tinyshakespeare",
    dict(_DEFAULT_RUN, epochs=6, decay_after=4, train_tokens=200_000),
    MeasureConfig(max_lag=30, max_tokens=8000, influence_windows=128, gradient_windows=64,
                  probe_positions=6000, probe_steps=50, probe_cell=False,
                  context_lengths=(1, 2, 5, 10, 20, 50, 100), context_targets=300, position_windows=64),
)

PRESETS: dict[str, StudyPreset] = {
    p.name: p
    for p in (
        StudyPreset(
            "smoke",
            "all placements plus zaremba at a second rate, 2 seeds, tiny models on a small synthetic corpus: "
            "under a minute, for tests",
            (_SMOKE,), seeds=2, placements=_rated(0.25) + ("zaremba:p=0.5",), short_lag=2, long_lag=5,
        ),
        StudyPreset(
            "default",
            "all eight placements at one drop rate (0.3), 6 seeds, on a synthetic language with copies planted "
            "3, 8 and 20 tokens back, in two regimes: 30k training tokens (regularisation) and 90k (memory)",
            _DEFAULT, seeds=6, placements=_rated(0.3), short_lag=2, long_lag=10,
        ),
        StudyPreset(
            "dose",
            "dose-response: zaremba, naive and variational at drop rates 0.1, 0.3 and 0.5 against none, 6 seeds, "
            "on the default's synthetic language and regimes (shares the default's runs at 0.3)",
            _DEFAULT, seeds=6, placements=_doses(), short_lag=2, long_lag=10,
        ),
        StudyPreset(
            "shakespeare",
            "all eight placements at 0.3, 6 seeds, on Tiny Shakespeare (characters; its file must be found)",
            (_SHAKESPEARE,), seeds=6, placements=_rated(0.3), short_lag=2, long_lag=10,
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
            seeds=6, short_lag=10, long_lag=50,
        ),
    )
}


# --- the study --------------------------------------------------------------


def _slug(corpus: str) -> str:
    """A file-name-safe short name of a corpus: ``synthetic``, ``tinyshakespeare``, a text file's stem."""
    head = corpus.split(":")[0]
    if head == "text" or head.startswith("text,") or "/" in corpus or "\\" in corpus or corpus.endswith(".txt"):
        head = Path(corpus.split(":", 1)[-1] if head.startswith("text") else corpus).stem or "text"
    return re.sub(r"[^A-Za-z0-9]+", "-", head).strip("-").lower()


def plan_cells(plan: CorpusPlan, placements, seeds, device: str) -> list[Cell]:
    return [Cell(plan.run_config(p, s, device), plan.measure) for p in placements for s in seeds]


@dataclass(frozen=True)
class Regime:
    """One corpus plan of a report, its corpus and its finished (or failed) runs."""

    plan: CorpusPlan
    corpus: object  # probe.data.corpus.Corpus
    results: list[CellResult]


def regime_table(regimes: list[Regime]) -> pd.DataFrame:
    """The tidy table of every regime, labelled by a ``regime`` column."""
    frames = []
    for r in regimes:
        df = tidy_table(r.results)  # placements are labelled by the canonical specs their RunConfigs hold
        df["regime"] = r.plan.regime
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _training_text(run: RunConfig) -> str:
    return (f"{run.num_layers} x {run.hidden_size} LSTM, {run.optimizer} at learning rate {run.lr:g} held "
            f"for {run.decay_after} epochs and then divided by {run.lr_decay:g} every epoch, {run.epochs} epochs, batch "
            f"{run.batch_size}, BPTT {run.bptt}, gradient norm clipped at {run.clip:g}")


def report_one(regimes: list[Regime], study: StudyPreset, path: Path, args, reference: str = "none") -> Path:
    df = regime_table(regimes)
    results = [r for g in regimes for r in g.results]
    two = has_regimes(df)
    memory = next((g for g in regimes if g.plan.regime == MEMORY), regimes[-1])
    corpus, plan = memory.corpus, memory.plan
    placements = list(dict.fromkeys(r.cell.run.placement for r in results))
    status = pd.Series([r.status for r in results]).value_counts().to_dict()
    failed = [f"{r.cell.run.placement} seed {r.cell.run.seed}: {r.status}" for r in results if r.status != "finished"]
    example = memory.results[0].cell
    optimum = math.exp(corpus.entropy_rate) if corpus.entropy_rate is not None else None
    config = {
        "study preset": f"{study.name}: {study.description}",
        **({f"{g.plan.regime} regime corpus": f"{g.plan.corpus} ({g.corpus.split_note})" for g in regimes} if two
           else {"corpus": plan.corpus, "split": corpus.split_note}),
        "optimum perplexity": "unknown (a real corpus)" if optimum is None else f"{optimum:.4f}",
        "seeds": ", ".join(str(s) for s in sorted({r.cell.run.seed for r in results})),
        "placements": ", ".join(placements),
        "references": "test perplexity against none; memory against each placement's memory reference (zaremba "
                      "at its non-recurrent rate; zaremba itself against none)",
        "runs": ", ".join(f"{v} {k}" for k, v in status.items()),
        **{(f"training, {g.plan.regime} regime" if two else "training") + " (RunConfig, placement and seed vary)": {
            k: v for k, v in dataclasses.asdict(g.results[0].cell.run).items() if k not in ("placement", "seed")}
           for g in regimes},
        "measurements (MeasureConfig)": dataclasses.asdict(example.measure) if example.measure else "none",
        "run folders": str(args.runs_dir),
    }
    run = example.run
    methods = [
        "Two regimes of one language, the same placements and seeds in both: the regularisation regime "
        f"({regimes[0].plan.corpus}; training: {_training_text(regimes[0].results[0].cell.run)}) has scarce "
        "data, so the model without dropout overfits and test perplexity shows what a placement regularises "
        f"(tested against none); the memory regime ({plan.corpus}; training: {_training_text(run)}) has enough "
        "data for the memory reference to learn every planted copy, so memory measures show what a recurrent "
        "mask costs (tested against zaremba at the placement's non-recurrent rate). The answer table takes "
        "regularisation from the first and memory from the second; the data's regime column says which is which."
        if two else f"Corpus: {plan.corpus} ({corpus.split_note}). Training: {_training_text(run)}.",
        "Hidden state is carried across BPTT windows; evaluation carries state with no dropout. Every run is "
        f"evaluated and measured at its best-validation epoch ({run.select} model selection, as pytorch/examples "
        "and AWD-LSTM do); the last epoch's perplexities are kept in the data (final_valid_ppl, final_test_ppl).",
        "Memory references: a placement that adds a recurrent mechanism to non-recurrent dropout is compared "
        "with zaremba at the same non-recurrent rate, so the contrast isolates the recurrent mechanism; where "
        "its non-recurrent masks are tied per sequence (variational, weight_drop) the tests table says that the "
        "contrast is not exact. zaremba is compared with none.",
        "Copy log-probability above chance: at each planted copy's position, the model's log-probability of the "
        "copy minus the log-frequency of that token among the copies at that lag (nats; 0 knows only which "
        "tokens get copied). Source influence: the KL divergence of the prediction at the copy when its marked "
        "source is replaced by another content token (nats).",
        "Counterfactual influence replaces the token k steps back by a unigram draw and measures the KL divergence "
        "of the next-token distribution (computed in float64); in training mode both copies share the placement's "
        "training masks. KL is quadratic in small perturbations, so it decays at twice the rate of the hidden-state "
        "distance and the gradient norm on the same network. Half-lives are the number of lags a curve takes to "
        "halve from its lag-1 value (log-interpolated between the bracketing lags); decay rates are fitted only "
        "above each measure's numerical noise floor.",
        "Probe information is a lower bound on the mutual information (bits) between the token k back and the "
        "top layer's hidden state, from a linear probe trained and scored on disjoint held-out positions.",
    ]
    if failed:
        methods.append("Runs that did not finish (left out of every statistic): " + "; ".join(failed) + ".")
    runtime = sum(r.result.seconds for r in results if r.result is not None)
    env = collect_environment(**{"training time, all runs (s)": f"{runtime:.1f}", "jobs": str(args.jobs)})
    lags = planted_lags(df)
    fit_metrics, memory_metrics = study_metrics(lags, study.short_lag, study.long_lag)
    tests = two_reference_tests(df, _present(regime_rows(df, REGULARISATION), fit_metrics),
                                _present(regime_rows(df, MEMORY), memory_metrics), fit_reference=reference)
    checks = validity_checks(df, optimum_ppl=optimum)
    answer_cols = answer_columns(lags, study.short_lag)
    styles = placement_styles(df["placement"].unique())
    lead = [forest_figure(tests, [c.metric.name for c in answer_cols], styles)]
    dose_panels = [("test_ppl", None, None, "test perplexity (lower is better)")]
    dose_panels += [("recall_accuracy", k, "eval", f"recall at lag {k}") for k in lags]
    dose_panels += [("influence_kl_eval_half_life", None, "eval", "influence half-life (tokens)")]
    dose = dose_figure(regime_rows(df, MEMORY), dose_panels, styles)
    if dose is not None:
        lead.append(dose)
    return render_report(
        path, title=f"Memory decay under dropout placements: {plan.corpus}", question=QUESTION, config=config,
        placements=placements, tidy=df, tests=tests, summary=report_text.summarize(tests), environment=env,
        figures=standard_figures(regime_rows(df, MEMORY), optimum), methods=methods,
        headline=headline(tests, checks, reference=reference, lags=lags, short_lag=study.short_lag),
        checks=checks, answer=answer_table(df, tests, answer_cols, reference), lead_figures=lead,
        claims=claim_verdicts(tests, checks, placements),
    )


def _present(df: pd.DataFrame, metrics: list[compare.Metric]) -> list[compare.Metric]:
    """The metrics this study measured (a real corpus has no recall; a short max_lag no long lag)."""
    out = []
    for m in metrics:
        try:
            if len(compare.metric_values(df, m)):
                out.append(m)
        except ValueError:
            continue
    return out


def report_name(preset: str, corpus: str, *, first: bool) -> str:
    """memory_decay.html for the default preset's first corpus; other presets and corpora get their own
    names (memory_decay_dose.html, memory_decay_<corpus>.html), so one never overwrites another's report."""
    stem = "memory_decay" if preset == "default" else f"memory_decay_{preset}"
    return f"{stem}.html" if first else f"{stem}_{_slug(corpus)}.html"


def resolve_reference(reference: str, placements: list[str]) -> str:
    """The placement spec the others are tested against: an exact spec, or a name that one spec has."""
    ref = parse_placement(reference)
    if ref.spec in placements:
        return ref.spec
    same_name = [p for p in placements if placement_name(p) == ref.name]
    if ":" not in reference and len(same_name) == 1:
        return same_name[0]
    raise PlacementError(f"reference placement {reference!r} is not among the placements: {', '.join(placements)}")


@dataclass
class StudyOutcome:
    reports: list[Path]  # the reports written
    runs: int  # cells run, over every corpus
    failed: int  # of which failed
    not_written: list[Path]  # reports left as they were because no run of their corpus finished
    retry: bool = True  # every failure is one a rerun can fix


def canonical_placements(given) -> list[str]:
    """The canonical spec of every given placement; one placement given twice is a one-line error."""
    seen: dict[str, str] = {}
    for raw in given:
        spec = parse_placement(raw).spec
        if spec in seen:
            raise PlacementError(f"placements {seen[spec]!r} and {raw!r} are the same placement ({spec}); "
                                 "give each once")
        seen[spec] = raw
    return list(seen)


def check_plan_fits(plan: CorpusPlan, corpus, placements, device: str) -> None:
    """Everything a plan's training and measurements need from its corpus, before anything trains: the
    splits batch, and the measurements run (on an untrained model) without a deterministic error."""
    config = plan.run_config(placements[0], 0, device)
    check_corpus_fits(corpus, config)
    if plan.measure is None:
        return
    model = LanguageModel(config.model_config(len(corpus.vocab)))
    try:
        run_all(model, corpus, plan.measure, {"placement": config.placement, "seed": 0, "run_id": "preflight"})
    except ValueError as e:
        raise CorpusError(f"corpus {plan.corpus} is too short for this preset's measurements: "
                          f"{str(e).splitlines()[0]}") from None


def run_study(args) -> StudyOutcome:
    study = PRESETS[args.preset]
    placements = canonical_placements(args.placements or study.placements)
    reference = resolve_reference(args.reference, placements)
    seeds = list(range(args.seeds if args.seeds is not None else study.seeds))
    plans = list(study.corpora)
    if args.corpus:  # one corpus, one regime: the settings of the preset's measured plan
        base = next((p for p in plans if p.measure is not None), plans[0])
        plans = [dataclasses.replace(base, corpus=args.corpus, optional=False, split=args.split or base.split,
                                     regime="")]
    elif args.split:
        plans = [dataclasses.replace(p, split=args.split) for p in plans]
    preflight(args, folders=False)
    corpora = []  # every corpus is found before any run trains
    for plan in plans:
        try:
            corpora.append((plan, load_corpus(plan.corpus, args.data_dir, split=plan.split, download=args.download)))
        except CorpusError as e:
            if not plan.optional:
                raise
            print(f"skipping optional corpus {plan.corpus}: {str(e).splitlines()[0]}", file=sys.stderr)
    if not corpora:
        raise CorpusError("no corpus of this preset could be loaded")
    for plan, corpus in corpora:
        check_plan_fits(plan, corpus, placements, args.device)
    preflight_folders(args)
    cells = [plan_cells(plan, placements, seeds, args.device) for plan, _ in corpora]
    for (plan, _), planned in zip(corpora, cells):
        regime = f" ({plan.regime} regime)" if plan.regime else ""
        print(f"{plan.corpus}{regime}: {len(planned)} runs ({len(placements)} placements x {len(seeds)} seeds) "
              f"-> {args.runs_dir}", file=sys.stderr)
    # One grid over every plan, so that no worker waits between regimes.
    every = [c for planned in cells for c in planned]
    results = run_grid(every, args.runs_dir, run_all, jobs=args.jobs, data_dir=args.data_dir,
                       progress=not args.no_progress, executor=args.executor, address=args.address, threads=1)
    outcome = StudyOutcome([], len(results), report_failures(results), [], retryable(results))
    by_cell = iter(results)
    regimes = [Regime(plan, corpus, [next(by_cell) for _ in planned]) for (plan, corpus), planned in zip(corpora, cells)]
    # Regimes of one study share a report; corpora of a study without regimes get one report each.
    reports = [regimes] if any(g.plan.regime for g in regimes) else [[g] for g in regimes]
    for i, group in enumerate(reports):
        first = group[0].plan
        path = Path(args.out) / report_name(study.name, first.corpus, first=i == 0 and not args.corpus)
        if not any(r.status == "finished" for g in group for r in g.results):
            print(f"no run on {first.corpus} finished, so {path} was not written"
                  + (" (the existing report is kept)" if path.exists() else ""), file=sys.stderr)
            outcome.not_written.append(path)
            continue
        if any(not any(r.status == "finished" for r in g.results) for g in group):
            print(f"no run of a regime finished, so {path} was not written", file=sys.stderr)
            outcome.not_written.append(path)
            continue
        outcome.reports.append(report_one(group, study, path, args, reference))
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
    p.add_argument("--seeds", type=int, help="seeds per placement (default: the preset's)")
    p.add_argument("--corpus", help="run on this corpus only, with the preset's first corpus settings: a registry name, "
                   "a synthetic spec, or your own text (PATH.txt, a folder with train/valid/test.txt, or "
                   "text,level=char,valid=0.1,test=0.1:PATH)")
    p.add_argument("--split", choices=["canonical", "substitute"], help="corpus split (substitute: see probe.data.registry)")
    add_grid_options(p, study="memory_decay", jobs=2)
    return p


def main(argv=None) -> int:
    args = finish_grid_options(build_parser().parse_args(argv), study="memory_decay")
    if args.seeds is not None and args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
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
    print(f"done in {seconds:.0f} s: " + ", ".join(str(p) for p in outcome.reports), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
