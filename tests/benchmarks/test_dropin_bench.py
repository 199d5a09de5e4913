"""MaskedLSTM as a drop-in, timed against nn.LSTM on what classifiers and encoders run: packed batches of
mixed lengths, both directions.

Run:  pytest tests/benchmarks/test_dropin_bench.py --benchmark-only --benchmark-json reports/dropin.json

One group per case; each times a training step's forward and backward (gradients of the input and every
weight) of a 2-layer module on the same batch:

- ``nn_lstm``: torch.nn.LSTM (oneDNN on the CPU, cuDNN on CUDA);
- ``masked_none``: MaskedLSTM with placement none, the same call (the ratio to nn_lstm should be 1);
- ``masked_<placement>``: MaskedLSTM with a recurrent-mask placement on the packed batch;
- ``masked_<placement>_padded``: the same placement on the same rows as one padded tensor (what a
  user without packing would run: every row to the longest length), the bar the packed run must meet.

Lengths are drawn once (seeded) between 10% and 100% of the longest, as sentences in a batch are.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from probe.masked_lstm import MaskedLSTM

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
CASES = {  # name: (longest T, B, input size, hidden size, bidirectional)
    "tagger": (50, 32, 128, 128, True),
    "encoder": (60, 16, 256, 256, True),
    "one_direction": (50, 32, 128, 128, False),
}
PLACEMENTS = ["variational:p=0.3,rec=0.3", "zoneout:p=0.1,zc=0.1,zh=0.05"]
ROUNDS = dict(rounds=20, warmup_rounds=2)


def batch(T, B, I, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, T // 10), T + 1, (B,), generator=g)
    lengths[0] = T
    x = torch.randn(T, B, I, generator=g)
    return x.to(DEVICE), lengths


def module(impl: str, I, H, bidirectional):
    torch.manual_seed(0)
    if impl == "nn_lstm":
        m = nn.LSTM(I, H, 2, bidirectional=bidirectional)
    else:
        spec = "none" if impl == "masked_none" else impl.removeprefix("masked_").removesuffix("_padded")
        m = MaskedLSTM(I, H, 2, bidirectional=bidirectional, placement=spec)
    return m.to(DEVICE).train()


def impls():
    yield "nn_lstm"
    yield "masked_none"
    for p in PLACEMENTS:
        yield f"masked_{p}"
        yield f"masked_{p}_padded"


def training_step(case: str, impl: str):
    """One training step's forward and backward of ``impl`` on ``case``'s batch, as a function of nothing."""
    T, B, I, H, bidirectional = CASES[case]
    m = module(impl, I, H, bidirectional)
    x, lengths = batch(T, B, I)
    x.requires_grad_(True)
    padded = impl.endswith("_padded")
    g = torch.Generator(device=DEVICE).manual_seed(1)
    kw = {} if impl == "nn_lstm" else dict(generator=g)

    def step():
        inp = x if padded else pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h, c) = m(inp, **kw)
        data = out if padded else out.data
        (data.sum() + h.sum() + c.sum()).backward()
        if CUDA:
            torch.cuda.synchronize()

    return step, int(lengths.sum())


@pytest.mark.parametrize("impl", list(impls()))
@pytest.mark.parametrize("case", list(CASES))
def test_dropin_forward_backward(benchmark, case, impl):
    T, B, I, H, bidirectional = CASES[case]
    step, tokens = training_step(case, impl)
    benchmark.group = f"dropin_{case}"
    benchmark.extra_info.update(case=case, impl=impl, T=T, B=B, I=I, H=H, bidirectional=bidirectional,
                                tokens=tokens, padded_tokens=T * B, device=str(DEVICE))
    benchmark.pedantic(step, **ROUNDS)
