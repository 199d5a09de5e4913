"""``python -m probe.train``: train one model from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path


from probe.data.corpus import Corpus
from probe.data.registry import load_corpus
from probe.signals import exit_code, handled_signals
from probe.preflight import check_backend, check_device, check_folder
from probe.runs.folder import RESULT, RunFolder
from kernels.layer import backend_help
from probe.runs.config import PRESETS, RunConfig, RunResult, RunStatus, preset
from probe.runs.train import train


# --- command line ---------------------------------------------------------


def default_runs_dir() -> Path:
    return Path(os.environ.get("DROPOUT_PROBE_RUNS", "runs"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m probe.train",
        description="Train one LSTM language model under a dropout placement (Zaremba et al.'s protocol).",
    )
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="starting configuration: Zaremba's small/medium/large, or tiny for tests (default tiny)")
    p.add_argument("--corpus", help="synthetic (default), ptb, ptb-char, wikitext-2, tinyshakespeare, "
                   "a synthetic spec such as synthetic:lags=5+20,cue=0.2, or your own UTF-8 text: a file "
                   "PATH.txt (word level, cut in order 90/5/5 into train/valid/test), a folder PATH/ holding "
                   "train.txt, valid.txt and test.txt, or with options text,level=char,valid=0.1,test=0.1:PATH "
                   "(level=word|char; everything after the first ':' is the path; vocabulary from the "
                   "training text, unseen tokens become <unk>; see probe.data.text)")
    p.add_argument("--split", choices=["canonical", "substitute"],
                   help="'substitute' uses a corpus's valid file as training text where the train file is absent")
    p.add_argument("--placement", help="placement spec, e.g. variational:p=0.5,rec=0.3 (see probe.placements)")
    help_text = {
        "num_layers": "LSTM layers", "hidden_size": "units per layer", "emb_size": "embedding size",
        "batch_size": "parallel streams", "bptt": "BPTT window length",
        "lr": "initial learning rate (of SGD or Adam; Adam wants about 1e-3)",
        "lr_decay": "divide the learning rate by this: every epoch after --decay-after (fixed schedule), "
                    "or after every epoch that did not improve validation loss (plateau schedule)",
        "decay_after": "epochs at the initial learning rate (fixed schedule only)", "epochs": "training epochs",
        "clip": "max gradient norm", "init_scale": "uniform(-s, s) initialisation", "seed": "random seed",
        "device": "cpu or cuda", "dtype": "float32, float64 or bfloat16",
        "backend": backend_help(),
        "train_tokens": "train on only the first N training tokens",
        "forget_bias": "added to every forget-gate bias after the uniform init (0: Zaremba; 1: Jozefowicz et al. 2015)",
        "optimizer": "sgd (plain p -= lr * grad, the default) or adam (torch.optim.Adam, default betas)",
        "schedule": "fixed (Zaremba's: hold, then decay every epoch; the default) or plateau (decay after "
                    "every epoch whose validation loss did not improve on the best so far)",
        "select": "which epoch's model the run reports and keeps: best (lowest validation perplexity, the "
                  "default) or final (the last epoch); the final epoch's perplexities are reported either way",
    }
    for f in dataclasses.fields(RunConfig):
        if f.name in ("corpus", "split", "placement", "tie_weights"):
            continue
        kind = int if f.name == "train_tokens" else type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, help=help_text.get(f.name))
    p.add_argument("--tie-weights", action="store_true", default=None, help="share embedding and decoder weights")
    p.add_argument("--data-dir", help="corpora folder (else $DROPOUT_PROBE_DATA, else the user cache)")
    p.add_argument("--download", action="store_true", help="download missing corpus files (checksummed)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="where run folders go (default $DROPOUT_PROBE_RUNS or ./runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if getattr(args, f.name, None) is not None
    }
    return preset(args.preset, **overrides)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        check_device(config.device)
        check_backend(config.backend, config.device)
        corpus = load_corpus(config.corpus, args.data_dir, split=config.split, download=args.download)
        check_corpus_fits(corpus, config)
        runs_dir = check_folder(args.runs_dir or default_runs_dir(), "--runs-dir")  # created last: no litter
    except ValueError as e:  # CorpusError, PlacementError and PreflightError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = runs_dir / config.run_id()
    print(f"run {config.run_id()} -> {run_dir}\ncorpus: {corpus.label}: {corpus.split_note}", file=sys.stderr)
    if _finished(run_dir, config):
        print(f"reusing the finished run in {run_dir} (same configuration; delete the folder to train again)",
              file=sys.stderr)
    done: list[dict] = []

    def log(e: dict) -> None:
        done.append(e)
        _print_epoch(e)

    try:
        with handled_signals():
            result = train(config, run_dir, corpus=corpus, progress=not args.no_progress, log=log)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the checkpoint of the last finished epoch is kept
        print(f"interrupted; rerun the same command to resume ({len(done)} of {config.epochs} epochs finished)",
              file=sys.stderr)
        return exit_code(e)
    except (OSError, ValueError, RuntimeError) as e:  # a full disk, a folder made read-only, a foreign folder
        print(f"error: run {config.run_id()} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 1
    print(_summary_line(result, run_dir))
    return 0 if result.status == RunStatus.FINISHED else 1


def check_corpus_fits(corpus: Corpus, config: RunConfig) -> None:
    """A one-line ValueError, before any training, when a split is too short to batch."""
    need = 2 * config.batch_size
    for split in ("train", "valid", "test"):
        n = getattr(corpus, split).numel()
        if split == "train" and config.train_tokens is not None:
            n = min(n, config.train_tokens)
        if n < need:
            raise ValueError(
                f"corpus {corpus.label}: its {split} split has {n} tokens but batch size {config.batch_size} needs "
                f"at least {need}; use a longer text or a smaller --batch-size"
            )


def _finished(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` already holds this configuration's finished run (train() then only reloads it)."""
    try:
        saved = RunFolder(run_dir).files.read_json(RESULT)  # verified, read-only
    except (OSError, ValueError):
        return False
    return saved is not None and saved.get("run_id") == config.run_id() and saved.get("status") == RunStatus.FINISHED.value


def _print_epoch(e: dict) -> None:
    speed = f"  {e['words_per_sec']:.0f} words/s" if "words_per_sec" in e else ""
    print(f"epoch {e['epoch']:3d}  lr {e['lr']:.4g}  train ppl {e['train_ppl']:.2f}  valid ppl {e['valid_ppl']:.2f}"
          f"{speed}", file=sys.stderr, flush=True)


def _summary_line(result: RunResult, run_dir) -> str:
    if result.status != RunStatus.FINISHED:
        return f"{result.status} after {len(result.epochs)} epochs, run folder {run_dir}"
    final = result.epochs[-1]["epoch"] if result.epochs else None
    line = (f"{result.status}: epoch {result.selected_epoch} selected (--select {result.config.select}; best epoch "
            f"{result.best_epoch} of {final}): valid ppl {result.valid_ppl:.2f}, test ppl {result.test_ppl:.2f}")
    if result.selected_epoch != final:
        line += (f"; final epoch {final}: valid ppl {result.final_valid_ppl:.2f}, "
                 f"test ppl {result.final_test_ppl:.2f}")
    return line + f", run folder {run_dir}"


if __name__ == "__main__":
    raise SystemExit(main())
