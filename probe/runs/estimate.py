"""A grid's cost before it runs: a short timed calibration of each kind of run on this machine.

For every distinct model shape and placement among the cells still to train, ``calibrate`` trains a fresh
model for one short epoch (``CALIBRATION_WINDOWS`` BPTT windows of the cell's batch) with the workers'
thread count and reads its training speed. ``estimate`` turns the speeds into a wall time: each run's
training tokens (epochs x training tokens) at that speed, plus its evaluation passes (the validation
split every epoch and the test split twice) at ``EVAL_SPEEDUP`` times it, plus its measurements (timed by
the caller, e.g. the study's preflight measurement of an untrained model), spread over the workers.
Cached runs cost nothing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from kernels.reference import compiled_loop

from probe.data.corpus import Corpus
from probe.runs.config import RunConfig
from probe.runs.train import train

CALIBRATION_WINDOWS = 12  # BPTT windows per calibration epoch: a second or so per kind of run on 2 cores
EVAL_SPEEDUP = 3.0  # a forward pass without backward or update, against a training step


@dataclass(frozen=True)
class Estimate:
    seconds: float  # predicted wall time of the runs to train, measurements included
    runs: int  # runs to train (cached ones excluded)
    speeds: dict  # tokens per second of one worker, by kind of run ("2 x 96 naive")

    def line(self, jobs: int) -> str:
        """The line a study prints before its grid."""
        if not self.runs:
            return "estimated wall time on this machine: every run is cached"
        lo, hi = min(self.speeds.values()), max(self.speeds.values())
        rate = f"{lo / 1000:.0f}k" if round(lo, -3) == round(hi, -3) else f"{lo / 1000:.0f}k-{hi / 1000:.0f}k"
        return (f"estimated wall time on this machine: about {_minutes(self.seconds)} for {self.runs} runs on "
                f"{jobs} worker{'s' if jobs > 1 else ''} (calibrated at {rate} training tokens/s per worker)")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def kind(config: RunConfig) -> str:
    """What sets a run's speed: its model shape, batch, BPTT window and placement."""
    return (f"{config.num_layers} x {config.hidden_size} (emb {config.emb_size}, batch {config.batch_size}, "
            f"BPTT {config.bptt}) {config.placement}")


def calibrate(config: RunConfig, corpus: Corpus, *, threads: int | None = 1) -> float:
    """Training tokens per second of ``config``'s kind of run on this machine (one short epoch)."""
    tokens = CALIBRATION_WINDOWS * config.batch_size * config.bptt + config.batch_size
    short = dataclasses.replace(config, epochs=1, train_tokens=min(tokens, corpus.train.numel()))
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = train(short, None, corpus=corpus, progress=False)
    finally:
        torch.set_num_threads(before)
    return float(result.epochs[0]["words_per_sec"])


def warm_up(config: RunConfig, corpus: Corpus, *, threads: int | None = 1) -> None:
    """Pay once, untimed, what only a process's first run pays: building or loading the compiled CPU loop
    (tens of seconds on a fresh clone) and the first training step's setup. Timed, they made the first
    calibration read 1k tokens/s where runs trained at 30k, and the estimate 10 times too long."""
    compiled_loop(torch.zeros(1))
    calibrate(config, corpus, threads=threads)


def run_seconds(config: RunConfig, corpus: Corpus, speed: float) -> float:
    """One run's predicted training and evaluation time at ``speed`` training tokens per second."""
    train_tokens = min(config.train_tokens or corpus.train.numel(), corpus.train.numel())
    eval_tokens = config.epochs * corpus.valid.numel() + 2 * corpus.test.numel()
    return (config.epochs * train_tokens + eval_tokens / EVAL_SPEEDUP) / speed


def estimate(runs: list[tuple[RunConfig, Corpus, float]], jobs: int, *, threads: int | None = 1) -> Estimate:
    """The wall time of ``runs`` (config, corpus, seconds its measurements take; those not cached) on ``jobs``
    workers, from one calibration per kind of run."""
    speeds: dict[str, float] = {}
    if runs:
        warm_up(*runs[0][:2], threads=threads)
    for config, corpus, _ in runs:
        if kind(config) not in speeds:
            speeds[kind(config)] = calibrate(config, corpus, threads=threads)
    each = [run_seconds(c, corpus, speeds[kind(c)]) + measuring for c, corpus, measuring in runs]
    total = sum(each)
    longest = max(each, default=0.0)  # the runs are spread over the workers; the longest one bounds the time
    seconds = max(total / max(1, jobs), longest) if runs else 0.0
    return Estimate(seconds if math.isfinite(seconds) else math.inf, len(runs), speeds)
