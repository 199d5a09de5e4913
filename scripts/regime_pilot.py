"""One pilot run for choosing a study's regime: train one model, print its curves and, optionally, how much it
uses the context beyond d tokens, with a paired t statistic over targets.

Run:  python scripts/regime_pilot.py corpus=ptb split=auto train_tokens=70000 epochs=12 decay_after=6 \\
          placement=zaremba:p=0.3 seed=0 targets=3000 [data=DIR] [threads=2]

Every other key=value is a RunConfig field on top of the default study's model (2 x 96, Adam 5e-3, clip 5,
forget-gate bias 1, batch 16, BPTT 35, a constant rate unless ``decay_after`` is below ``epochs``). Prints one
JSON line: the seconds training took, validation and training perplexity per epoch, test perplexity of the
selected epoch, and with ``targets`` > 0 the loss increase when everything beyond d = 20, 50, 100, 200 tokens is
replaced by other text (prefix 300, ``probe.measure.perturbation``'s sampling) as (mean, t over targets): the
study's measure reads only the mean, and a pilot needs to see whether an increase of 0.001 nats is noise.
The pilots in docs/regime.md were run with this script.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from probe.data.registry import load_corpus
from probe.measure.checks import cpu_generator, eval_mode, heldout
from probe.measure.perturbation import PerturbationConfig, _sample, perturb  # the measure's own target sampling
from probe.measure.stream import gather_windows, prefix_nll
from probe.runs.config import preset
from probe.runs.train import train

DEFAULT_RUN = dict(num_layers=2, hidden_size=96, emb_size=96, batch_size=16, bptt=35, optimizer="adam", forget_bias=1.0,
                   lr=5e-3, lr_decay=2.0, decay_after=100, epochs=4, init_scale=0.1, clip=5.0, placement="zaremba:p=0.3")
TEXT_KEYS = ("placement", "optimizer", "schedule")


def parse(argv: list[str]) -> dict:
    try:
        args = dict(a.split("=", 1) for a in argv)
    except ValueError:
        sys.exit(f"arguments are key=value; got {argv}")
    return {k: v if k in TEXT_KEYS + ("corpus", "split", "data") else (float(v) if "." in v or "e-" in v else int(v))
            for k, v in args.items()}


def context_use(model, stream: torch.Tensor, targets: int, prefix: int = 300) -> dict:
    config = PerturbationConfig(distances=(20, 50, 100, 200), prefix=prefix, targets=targets)
    at, donor_ends = _sample(stream.numel(), config)
    prefixes, donors = gather_windows(stream, at - 1, prefix), gather_windows(stream, donor_ends - 1, prefix)
    gold = stream[at]
    out = {}
    with eval_mode(model):
        intact = prefix_nll(model, prefixes, gold, 1 << 15)
        g = cpu_generator(0, 12)
        for d in config.distances:
            diff = (prefix_nll(model, perturb(prefixes, donors, d, "replace", g), gold, 1 << 15) - intact).numpy()
            sd = diff.std(ddof=1)
            t = diff.mean() / (sd / np.sqrt(diff.size)) if sd > 0 else 0.0  # a model blind to d: no change at all
            out[d] = (round(float(diff.mean()), 5), round(float(t), 2))
    return out


def main(argv=None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    corpus_name, split, data = args.pop("corpus", "tinyshakespeare"), args.pop("split", "canonical"), args.pop("data", None)
    targets, seed = args.pop("targets", 0), args.pop("seed", 0)
    torch.set_num_threads(args.pop("threads", 2))
    corpus = load_corpus(corpus_name, data, split=split)
    config = preset("tiny", corpus=corpus_name, split=split, seed=seed, **{**DEFAULT_RUN, **args})
    start = time.perf_counter()
    result = train(config, None, corpus=corpus, progress=False)
    line = dict(args=sys.argv[1:] if argv is None else argv, secs=round(time.perf_counter() - start),
                valid=[round(e["valid_ppl"], 2) for e in result.epochs],
                train=[round(e["train_ppl"], 2) for e in result.epochs], test=round(result.test_ppl, 2))
    if targets:
        line["increase_t"] = context_use(result.model, heldout(corpus, "valid", 200_000), targets)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
