"""Microbenchmarks of one masked LSTM layer: Triton, the reference, and torch.nn.LSTM.

Run:  pytest tests/benchmarks --benchmark-only --benchmark-json reports/bench.json
(default test runs only collect these: the project's addopts hold --benchmark-skip);
``python -m studies.kernel_bench reports/bench.json`` renders the JSON as a report.

Every row times a whole layer, input projection included
(``layer_incl_input_proj``): x (T, B, H) -> W_ih x + b -> recurrence -> hs,
because torch.nn.LSTM cannot run its recurrence without its projection.
One group per shape (Zaremba small, medium, large, and a long sequence);
in each, "forward" (autograd recording, as in training) and
"forward_backward" (gradients of x and every weight) of:

- triton_<mode>: ``kernels.lstm_layer(backend="triton")`` with masks, in
  both launch modes (per_step, persistent), float32 products in the
  precision named by DROPOUT_PROBE_BENCH_PRECISION (default tf32, which is
  what cuDNN uses for float32 by default). GPU only: never time the
  interpreter.
- reference: ``backend="reference"`` with the same masks.
- nn_lstm: torch.nn.LSTM without masks (cuDNN on GPU, oneDNN on CPU).

Placements: variational (recurrent mask, sequence scope), naive (recurrent,
step scope), zoneout (zoneout_h + zoneout_c, step scope). The device is
synchronised after each timed call. On CPU, fewer rounds for larger
shapes and one for the long sequence (the reference takes seconds there);
``-k "not long"`` leaves it out.
"""

from __future__ import annotations

import os

import pytest
import torch

from kernels import linear, lstm_layer

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.float32
TRITON_TIMEABLE = CUDA and os.environ.get("TRITON_INTERPRET") != "1"
PRECISION = os.environ.get("DROPOUT_PROBE_BENCH_PRECISION", "tf32")

SHAPES = {  # name: (T, B, H)
    "small": (20, 20, 200),
    "medium": (35, 20, 650),
    "large": (35, 20, 1500),
    "long": (1024, 16, 768),
}
PLACEMENTS = {  # name: {mask: scope}
    "variational": {"recurrent": "sequence"},
    "naive": {"recurrent": "step"},
    "zoneout": {"zoneout_h": "step", "zoneout_c": "step"},
}
RATES = {"recurrent": 0.5, "zoneout_h": 0.025, "zoneout_c": 0.25}
IMPLS = ["triton_per_step", "triton_persistent", "reference", "nn_lstm"]
PASSES = ["forward", "forward_backward"]


CPU_ROUNDS = {"small": 10, "medium": 5, "large": 3, "long": 1}  # the reference takes seconds at T=1024


def rounds_for(shape: str) -> dict:
    if CUDA:
        return dict(rounds=20, warmup_rounds=3)  # warm-up absorbs Triton's compilation
    return dict(rounds=CPU_ROUNDS[shape], warmup_rounds=0 if shape == "long" else 1)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def make_masks(placement: str, T: int, B: int, H: int, gen: torch.Generator) -> dict:
    masks = {}
    for name, scope in PLACEMENTS[placement].items():
        shape = (B, H) if scope == "sequence" else (T, B, H)
        p = RATES[name]
        hit = (torch.rand(shape, generator=gen) < p).to(DTYPE)
        masks[name] = (hit if name.startswith("zoneout") else (1 - hit) / (1 - p)).to(DEVICE)
    return masks


def build(impl: str, placement: str, T: int, B: int, H: int):
    """A closure running one layer forward, and the tensors to differentiate."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, H, generator=gen).to(DEVICE, DTYPE).requires_grad_()
    if impl == "nn_lstm":
        lstm = torch.nn.LSTM(H, H).to(DEVICE, DTYPE)
        return (lambda: lstm(x)[0]), [x, *lstm.parameters()]
    s = H**-0.5
    w_ih, w_hh = ((torch.rand(4 * H, H, generator=gen) * 2 - 1) * s for _ in range(2))
    b = torch.zeros(4 * H)
    w_ih, w_hh, b = (t.to(DEVICE, DTYPE).requires_grad_() for t in (w_ih, w_hh, b))
    h0 = torch.zeros(B, H, device=DEVICE, dtype=DTYPE)
    c0 = torch.zeros(B, H, device=DEVICE, dtype=DTYPE)
    masks = make_masks(placement, T, B, H, gen)
    if impl.startswith("triton"):
        from kernels.contract import RecurrentMasks
        from kernels.triton_lstm import lstm_layer_triton

        persistent = impl == "triton_persistent"

        def recur(gx):
            bundle = RecurrentMasks(**masks)
            return lstm_layer_triton(gx, h0, c0, w_hh, bundle, persistent=persistent, precision=PRECISION)
    else:

        def recur(gx):
            return lstm_layer(gx, h0, c0, w_hh, **masks, backend="reference")

    return (lambda: recur(linear(x, w_ih, b))[0]), [x, w_ih, b, w_hh]


def cases():
    for shape in SHAPES:
        for pass_ in PASSES:
            for impl in IMPLS:
                for placement in ["none"] if impl == "nn_lstm" else PLACEMENTS:
                    marks = []
                    if impl.startswith("triton") and not TRITON_TIMEABLE:
                        marks.append(pytest.mark.skip(reason="Triton is timed on CUDA only, never interpreted"))
                    name = "-".join((shape, pass_, impl, placement))
                    yield pytest.param(shape, pass_, impl, placement, id=name, marks=marks)


@pytest.mark.parametrize("shape,pass_,impl,placement", list(cases()))
def test_layer_incl_input_proj(benchmark, shape, pass_, impl, placement):
    T, B, H = SHAPES[shape]
    forward, inputs = build(impl, placement, T, B, H)
    grad_out = torch.randn(T, B, H, generator=torch.Generator().manual_seed(1)).to(DEVICE, DTYPE)

    if pass_ == "forward":

        def run():
            forward()
            sync()

    else:

        def run():
            torch.autograd.grad(forward(), inputs, grad_out)
            sync()

    benchmark.group = f"{shape} T={T} B={B} H={H}"
    benchmark.extra_info.update(
        shape=shape, T=T, B=B, H=H, impl=impl, placement=placement, pass_=pass_,
        scope="layer: input projection + recurrence", device=str(DEVICE), dtype=str(DTYPE),
        threads=torch.get_num_threads(), precision=PRECISION if impl.startswith("triton") else "torch default",
    )  # fmt: skip
    sync()
    benchmark.pedantic(run, iterations=1, **rounds_for(shape))
