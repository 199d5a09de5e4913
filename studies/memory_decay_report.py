"""The placement study's reports: the tidy table of its regimes, the tests against each reference, and the
HTML report of the placement comparison (``report_one``) and of the capacity preset (``report_capacity``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probe.report import text as report_text

from probe.analysis import compare
from probe.data.synthetic_spec import parse_synthetic_spec
from probe.analysis.design import placement_design, run_tests
from probe.analysis.regimes import MEMORY, has_regimes, regime_rows
from probe.report.answer import answer_table, headline
from probe.report import capacity
from probe.report.claims import claim_verdicts
from probe.report.replication import print_replication, replicate as replicate_study
from probe.runs.cells import CellResult, tidy_table
from probe.report.effect_figures import dose_figure, forest_figure
from probe.report.plotting import placement_styles
from probe.report.figures import standard_figures
from probe.report.html import Report, collect_environment, render_report
from probe.report.tradeoff import tradeoff_figure
from probe.report.transfer import transfer_table
from probe.runs.config import RunConfig, RunStatus
from probe.report.validity import CONTEXT_DISTANCE, learned_lags, planted_lags, validity_checks


from studies.memory_decay_presets import CorpusPlan, StudyPreset


QUESTION = (
    "Where can dropout go in an LSTM without destroying its memory? Each placement trains the same model "
    "on the same data over several seeds; we measure how much regularisation it buys (test perplexity "
    "against no dropout, where data are scarce enough for the model without dropout to overfit) and how "
    "much memory it costs (against zaremba's non-recurrent dropout at the same rate, where data suffice for "
    "that reference to learn every planted copy): the log-probability and recall of copies planted at known "
    "lags, the influence of a copy's marked source on it, how much a token k steps back still changes the "
    "prediction (with and without the placement's training masks), how much a linear probe can read it "
    "from the hidden state, and how perplexity depends on the context the model is given."
)

# Natural text has no planted copies: memory is how far back the model uses what it read.
REAL_TEXT_QUESTION = (
    "Where can dropout go in an LSTM without destroying its memory? Each placement trains the same model "
    "on the same natural text over several seeds; we measure how much regularisation it buys (test perplexity "
    "against no dropout, where data are scarce enough for the model without dropout to overfit) and how much "
    "memory it costs (against zaremba's non-recurrent dropout at the same rate): how much the loss rises when "
    "everything beyond d tokens back is shuffled or replaced by other text (Khandelwal et al. 2018), the "
    "log-probability of a token whose previous occurrence d tokens back is intact against the same context "
    "with that occurrence replaced, how much a token k steps back still changes the prediction, how much a "
    "linear probe can read it from the hidden state, and how perplexity depends on the context the model is given."
)


@dataclass(frozen=True)
class Regime:
    """One corpus plan of a report, its corpus and its finished (or failed) runs."""

    plan: CorpusPlan
    corpus: object  # probe.data.corpus.Corpus
    results: list[CellResult]


def regime_table(regimes: list[Regime]) -> pd.DataFrame:
    """The tidy table of every regime, labelled by a ``regime`` column (and each run's ``hidden_size``)."""
    frames = []
    for r in regimes:
        df = tidy_table(r.results)  # placements are labelled by the canonical specs their RunConfigs hold
        df["regime"] = r.plan.regime
        sizes = {c.run.run_id(): c.run.hidden_size for c in (res.cell for res in r.results)}
        df["hidden_size"] = df["run_id"].map(sizes).astype("Int64")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _title_corpus(regimes: list[Regime]) -> str:
    """How the title names the corpus, never as a raw spec (the configuration has that): the synthetic
    language by what it plants, a registry corpus or a text file by its label."""
    names = []
    for g in regimes:
        try:
            names.append(parse_synthetic_spec(g.plan.corpus).title())
        except ValueError:
            names.append(g.corpus.label)
    names = list(dict.fromkeys(names))
    return names[0] if len(names) == 1 else ", ".join(names)


def _training_text(run: RunConfig) -> str:
    return (f"{run.num_layers} x {run.hidden_size} LSTM, {run.optimizer} at learning rate {run.lr:g} held "
            f"for {run.decay_after} epochs and then divided by {run.lr_decay:g} every epoch, {run.epochs} epochs, batch "
            f"{run.batch_size}, BPTT {run.bptt}, gradient norm clipped at {run.clip:g}")


def report_one(regimes: list[Regime], study: StudyPreset, path: Path, args, reference: str = "none",
               replicate: tuple[str, pd.DataFrame] | None = None,
               compare_with: tuple[str, pd.DataFrame] | None = None) -> Path:
    """The placement study's report; ``replicate``: (name, tidy data) of another run of this study to set
    beside it; ``compare_with``: (name, tidy data) of the synthetic study, for a real-text report's transfer
    table."""
    df = regime_table(regimes)
    results = [r for g in regimes for r in g.results]
    two = has_regimes(df)
    memory = next((g for g in regimes if g.plan.regime == MEMORY), regimes[-1])
    corpus, plan = memory.corpus, memory.plan
    placements = list(dict.fromkeys(r.cell.run.placement for r in results))
    status = pd.Series([r.status for r in results]).value_counts().to_dict()
    failed = [f"{r.cell.run.placement} seed {r.cell.run.seed}: {r.status}" for r in results if r.status != RunStatus.FINISHED]
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
    distance = CONTEXT_DISTANCE.get(corpus.level, CONTEXT_DISTANCE["word"])
    design = placement_design(planted_lags(df), study.short_lag, study.long_lag, fit_reference=reference,
                              test=getattr(args, "test", "welch"), context_distance=distance)
    tests = run_tests(df, design)
    checks = validity_checks(df, optimum_ppl=optimum, alpha=design.alpha, test=design.test, context_distance=distance)
    styles = placement_styles(df["placement"].unique())
    lead = [tradeoff_figure(tests, design, learned_lags(checks), styles, real_text=compare_with is not None
                            or (df["measure"] == "replaced_nll_increase").any()),
            forest_figure(tests, [c.metric.name for c in design.answer], styles)]
    lags = list(design.lags)
    dose_panels = [("test_ppl", None, None, "test perplexity (lower is better)")]
    dose_panels += [("recall_accuracy", k, "eval", f"recall at lag {k}") for k in lags]
    dose_panels += [("influence_kl_eval_half_life", None, "eval", "influence half-life (tokens)")]
    dose = dose_figure(regime_rows(df, MEMORY), dose_panels, styles)
    if dose is not None:
        lead.append(dose)
    replication = None
    if replicate is not None:
        name, other = replicate
        replication = replicate_study(df, other, design, other_name=name, this_tests=tests)
        print_replication(replication)
    sentences = headline(tests, checks, reference=reference, lags=lags, short_lag=study.short_lag, alpha=design.alpha)
    tables = []
    if compare_with is not None:  # real text beside the synthetic study
        name, synthetic = compare_with
        table = synthetic_transfer(tests, synthetic, name, distance, study)
        tables.append(table)
        if table["disagree"]:
            sentences.insert(-1, f"On this text, the settled verdicts of {', '.join(table['disagree'])} differ from "
                                 f"the synthetic study's (transfer table below).")
    return render_report(path, Report(
        title=f"Memory decay under dropout placements: {_title_corpus(regimes)}",
        question=QUESTION if planted_lags(df) else REAL_TEXT_QUESTION, config=config,
        placements=placements, tidy=df, tests=tests, summary=report_text.summarize(tests, alpha=design.alpha),
        environment=env, figures=standard_figures(regime_rows(df, MEMORY), optimum), methods=methods,
        headline=sentences[:6], checks=checks, answer=answer_table(df, tests, design.answer, reference),
        lead_figures=lead, claims=claim_verdicts(tests, checks, placements), alpha=design.alpha,
        replication=replication, tables=tables,
    ))


def synthetic_transfer(tests: pd.DataFrame, synthetic: pd.DataFrame, name: str, distance: int,
                       study: StudyPreset) -> dict:
    """The transfer table of a real-text report against a synthetic study's data (its own design)."""
    lags = planted_lags(synthetic)
    design = placement_design(lags, study.short_lag, study.long_lag)
    there = run_tests(synthetic, design)
    learned = learned_lags(validity_checks(synthetic, test=design.test))
    memory_there = f"copy_logprob[eval]@{max(learned):g}" if learned else None
    return transfer_table(tests, there, memory_here=f"replaced_nll_increase[eval]@{distance:g}",
                          memory_synthetic=memory_there, synthetic_name=name)


def report_capacity(regimes: list[Regime], study: StudyPreset, path: Path, args, reference: str = "none",
                    replicate=None, compare_with=None) -> Path:
    """The capacity preset's report: each dropout model's equivalent size without dropout, per measure."""
    (group,) = regimes
    df = regime_table(regimes)
    df = capacity.with_selected_train_ppl(df)
    size = int(group.plan.run["hidden_size"])
    layers = int(group.plan.run["num_layers"])
    lags = planted_lags(df)
    measures = capacity.capacity_measures(lags)
    eqs = capacity.equivalents(df, measures, size)
    vocab = len(group.corpus.vocab)
    results = group.results
    status = pd.Series([r.status for r in results]).value_counts().to_dict()
    config = {
        "study preset": f"{study.name}: {study.description}",
        "corpus": f"{group.plan.corpus} ({group.corpus.split_note})",
        "seeds": ", ".join(str(s) for s in sorted({r.cell.run.seed for r in results})),
        "ladder (none)": ", ".join(str(h) for h in sorted({r.cell.run.hidden_size for r in results
                                                            if r.cell.run.placement == "none"})),
        "dropout models (at the default's size)": ", ".join(p for p in dict.fromkeys(
            r.cell.run.placement for r in results) if p != "none"),
        "runs": ", ".join(f"{v} {k}" for k, v in status.items()),
        "training (RunConfig, placement, size and seed vary)": {
            k: v for k, v in dataclasses.asdict(results[0].cell.run).items()
            if k not in ("placement", "seed", "hidden_size", "emb_size")},
        "run folders": str(args.runs_dir),
    }
    methods = [
        f"Corpus: {group.plan.corpus}, the default study's memory regime. Training: {_training_text(results[0].cell.run)}.",
        "Equivalent size: the ladder's mean across seeds against log hidden size, linearly interpolated, read at the "
        "dropout model's mean; a mean outside the ladder's range is reported as beyond it, never extrapolated. The "
        "interval is a 95% percentile bootstrap over seeds (2000 resamples, seeds resampled within each ladder size "
        "and within the dropout model). Training perplexity is each run's, with its dropout, at its selected epoch.",
    ]
    env = collect_environment(**{"jobs": str(args.jobs)})
    tables = [capacity.capacity_table(eqs, measures, vocab, size, layers), capacity.ladder_table(df, vocab, layers)]
    return render_report(path, Report(
        title=f"Dropout against a smaller model: {_title_corpus(regimes)}", question=CAPACITY_QUESTION,
        config=config, placements=placements_of(df), tidy=df, tests=pd.DataFrame(columns=compare.TEST_COLUMNS),
        environment=env, methods=methods, headline=capacity.sentences(eqs),
        lead_figures=[capacity.capacity_figure(df, measures, eqs, size)], tables=tables,
    ))


CAPACITY_QUESTION = (
    "Dropout is said to simulate a smaller model: is a model with dropout equivalent to a smaller model "
    "without it, and is it the same smaller model for memory as for perplexity? Each dropout model is read "
    "off a ladder of models without dropout at several hidden sizes, measure by measure."
)


def placements_of(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(str(p) for p in df["placement"]))


