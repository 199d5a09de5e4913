"""Packed against padded masked MaskedLSTM runs, timed in alternating pairs in one process.

Run:  python scripts/dropin_paired.py [--pairs 60]

On shared CPU cores the speed of the machine drifts between pytest-benchmark's groups, which time one
implementation after the other; a ratio of two such medians moves by 10% from run to run. Here each pair
times one training step of the packed run and one of the padded run back to back (in alternating order),
so drift cancels within the pair; the line printed per case is the median of the pairs' ratios with a
95% bootstrap interval. The cases, placements and steps are ``tests/benchmarks/test_dropin_bench.py``'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "benchmarks"))
from test_dropin_bench import CASES, DEVICE, PLACEMENTS, training_step  # noqa: E402


def warm_step(case: str, impl: str):
    step, _ = training_step(case, impl)
    step()  # warm-up: the compiled loop loads, the allocator settles
    return step


def paired_ratios(a, b, pairs: int) -> np.ndarray:
    ratios = []
    for i in range(pairs):
        seconds = {}
        for key, step in ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a)):
            start = time.perf_counter()
            step()
            seconds[key] = time.perf_counter() - start
        ratios.append(seconds[0] / seconds[1])
    return np.asarray(ratios)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60, help="timed pairs per case (default 60)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"device {DEVICE}, {torch.get_num_threads()} threads, {args.pairs} pairs per case")
    for case in CASES:
        for placement in PLACEMENTS:
            packed = warm_step(case, f"masked_{placement}")
            padded = warm_step(case, f"masked_{placement}_padded")
            r = paired_ratios(packed, padded, args.pairs)
            boots = np.median(rng.choice(r, (2000, r.size)), axis=1)
            lo, hi = np.percentile(boots, [2.5, 97.5])
            print(f"{case:14s} {placement:30s} packed/padded {np.median(r):.3f} [{lo:.3f}, {hi:.3f}]", flush=True)


if __name__ == "__main__":
    main()
