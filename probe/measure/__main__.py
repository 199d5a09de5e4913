"""Measure the memory of LSTM language models trained elsewhere, and write one report.

    python -m probe.measure --checkpoint runs/3f2a9c0d1e2b4a5f/
    python -m probe.measure --checkpoint model.pt --corpus data/wikitext-2
    python -m probe.measure --checkpoint a.pt --label dropout-0.2 --checkpoint b.pt --label dropout-0.5 \\
        --corpus data/wikitext-2 --out reports/compare

Each checkpoint (a probe.train run folder or its checkpoint.pt, or a
pytorch/examples word_language_model LSTM saved with torch.save(model) or as a
state dict; see probe.runs.checkpoints) is converted into the toolkit's model,
measured with probe.measure.run_all (influence, probe information and
gradient curves with half-lives, context-length and position curves) and
evaluated for validation and test perplexity with carried state. The report,
<out>/measure.html with the data as CSV and JSON beside it, has the same
tables and figures as a study; with one model per label there are no tests
across seeds, and it says so.

Only load checkpoints you trust: a checkpoint is a pickle, and unpickling can
run code.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import pandas as pd

from probe.runs.checkpoints import FORMATS, CheckpointError, Loaded, load_checkpoint
from probe.data.corpus import CorpusError, batchify
from probe.measure import MeasureConfig, run_all, tidy
from probe.placements import PlacementError

PROG = "python -m probe.measure"
DEFAULTS = dict(  # sized for a CPU: a 2 x 200 model on 10k held-out tokens takes minutes
    max_lag=30, max_tokens=10_000, influence_windows=128, gradient_windows=64, probe_positions=3000,
    probe_steps=40, probe_cell=False, context_lengths=(1, 2, 5, 10, 20, 50, 100), context_targets=300,
    position_windows=64,
)
BPTT = 35  # pytorch/examples' default; with carried state the perplexity does not depend on it
QUESTION = (
    "How long does each trained model remember? For each model: how much a token k steps back still changes its "
    "prediction (counterfactual influence, in evaluation mode and under its training masks), how much a linear "
    "probe can read that token from its hidden state, how large the gradient of its prediction with respect to "
    "that token is, how its perplexity depends on the context it is given, and its validation and test perplexity."
)
NO_TESTS = ("With one model per label there are no tests across seeds (n = 1), so differences between the "
            "models are not tested: they are single measurements, not significant or non-significant findings.")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own prints the usage too)
        print(f"error: {message} (see {PROG} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                   help="a probe.train run folder or its checkpoint.pt, or a pytorch/examples word_language_model "
                        "LSTM checkpoint (torch.save(model) or its state_dict); repeat to compare several. "
                        "Only load checkpoints you trust: unpickling can run code")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="a name for each checkpoint, in the same order (default: from the paths); the report "
                        "shows labels where a study shows placements")
    p.add_argument("--corpus", metavar="NAME_OR_FOLDER",
                   help="the text to measure on. A toolkit run: its own corpus by default, or any --corpus of "
                        "python -m probe.train (re-encoded in the run's vocabulary). An examples checkpoint "
                        "(required): the data folder it was trained on, holding train.txt, valid.txt and "
                        "test.txt (its vocabulary is rebuilt as examples' data.py does), or a registry name "
                        "whose folder under --data-dir holds those files (wikitext-2)")
    p.add_argument("--data-dir", metavar="DIR", help="corpora folder (else $DROPOUT_PROBE_DATA, else the user cache)")
    p.add_argument("--format", default="auto", metavar="|".join(FORMATS),
                   help="checkpoint format: auto (from the file, the default), toolkit or examples")
    p.add_argument("--dropout", type=float, metavar="P",
                   help="the dropout rate of an examples state dict (not saved in one; a pickled model has its "
                        "own): measured as placement zaremba:p=P. Without it a state dict is measured in "
                        "evaluation mode only")
    p.add_argument("--out", default="reports", metavar="DIR", help="report folder (default reports): writes "
                   "measure.html, measure_data.csv, measure_tests.csv and measure.json")
    p.add_argument("--split", default="valid", metavar="valid|test",
                   help="held-out split the memory measurements read (default valid)")
    p.add_argument("--max-lag", type=int, default=DEFAULTS["max_lag"], metavar="K",
                   help=f"lags 1..K for the decay curves (default {DEFAULTS['max_lag']})")
    p.add_argument("--max-tokens", type=int, default=DEFAULTS["max_tokens"], metavar="N",
                   help=f"use the first N held-out tokens for the measurements (default {DEFAULTS['max_tokens']}; "
                        "perplexities always use the whole split)")
    p.add_argument("--windows", type=int, metavar="N",
                   help=f"windows per lag for influence (default {DEFAULTS['influence_windows']}), gradient "
                        f"({DEFAULTS['gradient_windows']}) and position ({DEFAULTS['position_windows']}) curves: "
                        "N for all three")
    p.add_argument("--probe-positions", type=int, default=DEFAULTS["probe_positions"], metavar="N",
                   help=f"positions for the linear probes, half to train, half to score "
                        f"(default {DEFAULTS['probe_positions']})")
    p.add_argument("--context-lengths", metavar="L,L,...",
                   default=",".join(str(L) for L in DEFAULTS["context_lengths"]),
                   help="context lengths of the context-length curve (default %(default)s)")
    p.add_argument("--stream-batch", type=int, default=MeasureConfig.stream_batch, metavar="B",
                   help=f"parallel streams the held-out text is cut into (default {MeasureConfig.stream_batch}; "
                        "smaller for short texts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the measurements' sampling (never the model's)")
    p.add_argument("--bptt", type=int, default=BPTT, help=f"BPTT window for perplexity (default {BPTT})")
    p.add_argument("--eval-batch-size", type=int, metavar="B",
                   help="streams for perplexity (default: each checkpoint's own training script's: a toolkit "
                        "run's batch size, examples' 10), so its own reported perplexity is reproduced")
    return p


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def measure_config(args) -> MeasureConfig:
    try:
        lengths = tuple(int(v) for v in args.context_lengths.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--context-lengths must be integers separated by commas; got {args.context_lengths!r}") from None
    if args.split not in ("valid", "test"):
        raise ValueError(f"--split must be valid or test; got {args.split!r}")
    windows = {}
    if args.windows is not None:
        windows = dict(influence_windows=args.windows, gradient_windows=args.windows, position_windows=args.windows)
    fields = {**DEFAULTS, **windows, "max_lag": args.max_lag, "max_tokens": args.max_tokens,
              "probe_positions": args.probe_positions, "context_lengths": lengths,
              "stream_batch": args.stream_batch, "seed": args.seed, "split": args.split}
    return MeasureConfig(**fields)


def default_labels(paths: list[str]) -> list[str]:
    """A label per checkpoint from its path: the file's stem, or the run folder's name."""
    labels = []
    for text in paths:
        p = Path(text)
        name = (p if p.is_dir() else p.parent).resolve().name if p.is_dir() or p.name == "checkpoint.pt" else p.stem
        labels.append(name or str(p))
    if len(set(labels)) < len(labels):
        raise ValueError(f"checkpoints {', '.join(paths)} give the same default labels ({', '.join(labels)}); "
                         "name each with --label")
    return labels


def check_labels(args) -> list[str]:
    if args.label is None:
        return default_labels(args.checkpoint)
    if len(args.label) != len(args.checkpoint):
        raise ValueError(f"{len(args.label)} --label for {len(args.checkpoint)} --checkpoint; give one label per "
                         "checkpoint, in the same order, or none")
    bad = [label for label in args.label if not label.strip()]
    if bad:
        raise ValueError("a --label is empty")
    if len(set(args.label)) < len(args.label):
        raise ValueError(f"--label names must differ; got {', '.join(args.label)}")
    return list(args.label)


def perplexities(loaded: Loaded, bptt: int, batch_size: int | None) -> dict[str, float]:
    """Validation and test perplexity of a loaded model, with carried state (probe.runs.train.evaluate)."""
    from probe.runs.train import evaluate

    B = batch_size or loaded.eval_batch_size
    out = {}
    for split in ("valid", "test"):
        ids = getattr(loaded.corpus, split)
        if ids.numel() < 2 * B:
            raise ValueError(f"the {split} split of {loaded.corpus.name} has {ids.numel()} tokens, too few for "
                             f"{B} streams; pass a smaller --eval-batch-size")
        nll = evaluate(loaded.model, batchify(ids, B), bptt)
        out[f"{split}_ppl"] = math.exp(nll) if nll < 700 else math.inf
    return out


def measure_one(loaded: Loaded, label: str, config: MeasureConfig, args) -> tuple[pd.DataFrame, dict]:
    ids = {"placement": label, "seed": 0, "run_id": loaded.run_id}
    if not loaded.placement_known:
        config = dataclasses.replace(config, influence_modes=("eval",))
    ppl = perplexities(loaded, args.bptt, args.eval_batch_size)
    rows = tidy.frame([tidy.scalar(k, v) for k, v in ppl.items()], ids)
    return tidy.concat([rows, run_all(loaded.model, loaded.corpus, config, ids)]), ppl


def _half_life(df: pd.DataFrame, label: str) -> float:
    hit = df[(df["placement"] == label) & (df["measure"] == "influence_kl_eval_half_life")]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def _num(x: float, digits: int = 4) -> str:
    from probe.report.text import fmt

    return fmt(x, digits)


def headline(labels, ppls, df, config: MeasureConfig, corpus_names) -> list[str]:
    n = len(labels)
    where = ", ".join(dict.fromkeys(corpus_names))
    sentences = [f"{n} model{'s' if n > 1 else ''} measured on {where}: {', '.join(labels)}."]
    sentences.append("Test perplexity: " + "; ".join(
        f"{label} {_num(p['test_ppl'])} (validation {_num(p['valid_ppl'])})" for label, p in zip(labels, ppls)) + ".")
    parts = []
    for label in labels:
        h = _half_life(df, label)
        if math.isinf(h):
            parts.append(f"{label} more than {config.max_lag} tokens (it does not halve within the measured lags)")
        else:
            parts.append(f"{label} {_num(h, 3)} tokens")
    sentences.append("Evaluation-mode influence half-life (lags for a past token's influence on the prediction to "
                     "halve from its lag-1 value): " + "; ".join(parts) + ".")
    if n == 1:
        sentences.append("There is one model (n = 1): there are no tests across seeds, and nothing is compared.")
    else:
        sentences.append(NO_TESTS)
    return sentences


def write_report(out: Path, labels, loaded: list[Loaded], frames, ppls, config: MeasureConfig, args, seconds) -> Path:
    from probe.report.figures import standard_figures
    from probe.report.html import Report, collect_environment, render_report
    from probe.analysis.compare import TEST_COLUMNS

    df = pd.concat(frames, ignore_index=True)
    df["seed"] = df["seed"].astype(int)
    rates = [m.corpus.entropy_rate for m in loaded]
    optimum = math.exp(rates[0]) if rates[0] is not None and len(set(rates)) == 1 else None
    eval_batches = [args.eval_batch_size or m.eval_batch_size for m in loaded]
    config_section = {
        "checkpoints": {label: str(m.path) for label, m in zip(labels, loaded)},
        "formats": {label: m.format for label, m in zip(labels, loaded)},
        "models": {label: m.description for label, m in zip(labels, loaded)},
        "placements of the models": {label: m.model.placement.spec + ("" if m.placement_known else " (rate unknown)")
                                     for label, m in zip(labels, loaded)},
        "corpus": {label: f"{m.corpus.label}: {m.corpus.split_note}" for label, m in zip(labels, loaded)},
        "perplexity": f"probe.runs.train.evaluate, carried state, no dropout, BPTT {args.bptt}, streams "
                      + ", ".join(f"{label} {b}" for label, b in zip(labels, eval_batches)),
        "measurements (MeasureConfig)": dataclasses.asdict(config),
        "tests": "none: one model per label (n = 1), no tests across seeds",
    }
    methods = [f"Model {label}: {m.description}" for label, m in zip(labels, loaded)]
    methods += [
        f"Perplexity: validation and test splits in full, with the state carried across BPTT windows of {args.bptt} "
        f"and no dropout (probe.runs.train.evaluate), over "
        + ", ".join(f"{b} streams for {label}" for label, b in zip(labels, eval_batches))
        + " (by default each checkpoint's own training script's number of evaluation streams, so its reported "
          "perplexity is reproduced).",
        f"Memory measurements: probe.measure.run_all on the first {config.max_tokens} tokens of the {config.split} "
        f"split, lags 1 to {config.max_lag}. Counterfactual influence replaces the token k steps back by a unigram "
        "draw and measures the KL divergence of the next-token distribution (float64), with the network in "
        "evaluation mode and under its placement's training masks (both copies share them). Half-lives are the "
        "number of lags a curve takes to halve from its lag-1 value (log-interpolated). Probe information is a "
        "lower bound on the mutual information (bits) between the token k back and a layer's hidden state, from a "
        "linear probe trained and scored on disjoint positions.",
        "Labels stand where a study shows placements; the placements table lists them as not in the placement "
        "registry, and each model's own placement is in the configuration above. " + NO_TESTS,
    ]
    unknown = [label for label, m in zip(labels, loaded) if not m.placement_known]
    if unknown:
        methods.append(f"No dropout rate is known for {', '.join(unknown)} (an examples state dict saves none; "
                       "pass --dropout P): measured in evaluation mode only, with no training-mode curves.")
    env = collect_environment(**{"measurement time, all models (s)": f"{seconds:.1f}"})
    title = (f"Memory of a trained model: {labels[0]}" if len(labels) == 1
             else f"Memory of {len(labels)} trained models: {', '.join(labels)}")
    return render_report(out / "measure.html", Report(
        title=title, question=QUESTION, config=config_section, placements=labels, tidy=df,
        tests=pd.DataFrame(columns=TEST_COLUMNS),
        summary=["No comparisons were tested: " + NO_TESTS[0].lower() + NO_TESTS[1:]],
        environment=env, figures=standard_figures(df, optimum), methods=methods,
        headline=headline(labels, ppls, df, config, [m.corpus.label for m in loaded]),
        placement_specs={label: m.model.placement.spec for label, m in zip(labels, loaded)},
    ))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.format not in FORMATS:
            raise ValueError(f"unknown --format {args.format!r}; valid formats: {', '.join(FORMATS)}")
        labels = check_labels(args)
        config = measure_config(args)
        loaded = []
        for path, label in zip(args.checkpoint, labels):
            m = load_checkpoint(path, corpus=args.corpus, data_dir=args.data_dir, format=args.format,
                                dropout=args.dropout)
            print(f"{label}: {m.description}", file=sys.stderr)
            loaded.append(m)
        frames, ppls = [], []
        for label, m in zip(labels, loaded):
            print(f"{label}: measuring ...", file=sys.stderr, flush=True)
            df, ppl = measure_one(m, label, config, args)
            frames.append(df)
            ppls.append(ppl)
            print(f"{label}: valid ppl {ppl['valid_ppl']:.4g}, test ppl {ppl['test_ppl']:.4g}", file=sys.stderr)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = write_report(out, labels, loaded, frames, ppls, config, args, time.perf_counter() - start)
    except (CheckpointError, CorpusError, PlacementError, ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
