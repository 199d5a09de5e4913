"""Time the measurement suite, one measurement at a time, and count the work each one does.

    python -m probe.measure.timing                      # preset tiny's shape on a synthetic corpus
    python -m probe.measure.timing --hidden 256 --vocab 1000 --tokens 20000 --max-lag 50

Timing does not depend on the weights, so the model is freshly initialised.
"Token-steps" counts (batch row x time step) positions the LSTM runs over
(forward only, except ``gradient``: forward and backward); see
docs/measurements.md for how the counts scale with tokens, K and L.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from probe.model.language_model import LanguageModel, ModelConfig
from probe.data.synthetic_spec import SyntheticSpec
from probe.data.synthetic import make_synthetic_corpus

from probe.measure import run_all
from probe.measure.config import MEASURES, MeasureConfig


def work(config: MeasureConfig, n_tokens: int, num_layers: int) -> dict[str, int]:
    """Token-steps each measurement runs the model over, and (probe) the size of the probe problem."""
    K, Ls = config.max_lag, config.context_lengths
    return {
        "influence": len(config.influence_modes) * config.influence_windows * (K + 1) ** 2 + n_tokens,
        "gradient": config.gradient_windows * (K + 1) + n_tokens,
        "probe": (2 if config.probe_untrained else 1) * n_tokens,
        "context": config.context_targets * sum(Ls) + n_tokens,
        "position": config.position_windows * config.position_length,
        "recall": n_tokens,
    }


def time_suite(model: LanguageModel, corpus, config: MeasureConfig) -> dict[str, float]:
    """Seconds per measurement (each run alone through ``run_all``)."""
    seconds = {}
    for measure in config.measures or MEASURES:
        if measure == "recall" and f"{config.split}_lag" not in corpus.annotations:
            continue
        t0 = time.perf_counter()
        run_all(model, corpus, dataclasses.replace(config, measures=(measure,)))
        seconds[measure] = time.perf_counter() - t0
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m probe.measure.timing", description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=32, help="units per layer (= embedding size)")
    p.add_argument("--layers", type=int, default=2, help="LSTM layers")
    p.add_argument("--vocab", type=int, default=64, help="content tokens of the synthetic corpus")
    p.add_argument("--tokens", type=int, default=20_000, help="held-out tokens measured")
    p.add_argument("--max-lag", type=int, default=20, help="K")
    p.add_argument("--context", type=int, nargs="+", default=list(MeasureConfig.context_lengths),
                   help="context lengths L")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = SyntheticSpec(vocab_size=args.vocab, lags=(5, 20), n_train=2_000, n_valid=args.tokens, n_test=2)
    corpus = make_synthetic_corpus(spec)
    torch.manual_seed(0)
    shape = ModelConfig(len(corpus.vocab), emb_size=args.hidden, hidden_size=args.hidden, num_layers=args.layers)
    model = LanguageModel(shape).eval()
    config = MeasureConfig(max_lag=args.max_lag, context_lengths=tuple(args.context), max_tokens=args.tokens)
    counts = work(config, args.tokens, args.layers)
    t0 = time.perf_counter()
    seconds = time_suite(model, corpus, config)
    total = time.perf_counter() - t0
    print(f"model {args.layers}x{args.hidden}, vocab {len(corpus.vocab)}, {args.tokens} held-out tokens, "
          f"K={args.max_lag}, L up to {max(config.context_lengths)}, {torch.get_num_threads()} thread(s)")
    print(f"{'measure':<10} {'seconds':>8} {'token-steps':>12}")
    for name, s in seconds.items():
        print(f"{name:<10} {s:8.2f} {counts[name]:12,d}")
    print(f"{'total':<10} {total:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
