"""Gradient sensitivity: how strongly the prediction at t depends, locally, on the input at t-k.

    gradient_norm(k) = mean over windows of || d log p(x_{t+1} | x_{<=t}) / d e_{t-k} ||_2

where e_{t-k} is the embedding vector the model reads at t-k and the
log-probability is that of the token that actually follows (the prediction
made at t, as in ``influence``; lag 1 is the token before x_t). Windows are
x[t-K..t], starting from the carried state (or zero, ``carry_state=False``),
all lags from one backward pass per chunk of windows.

Independent of train/eval side effects: the recurrence here is plain torch
(no cuDNN), so backward works in evaluation mode; evaluation masks are
passed explicitly, and the model's mode is restored afterwards. Gradients
are taken with ``torch.autograd.grad`` with respect to the embeddings only,
so the parameters' ``.grad`` are left untouched.
"""

from __future__ import annotations

from contextlib import contextmanager

import pandas as pd
import torch
import torch.nn.functional as F

from probe.model.language_model import LanguageModel

from probe.measure import tidy
from probe.measure.checks import check_lag, check_model, check_stream, cpu_generator, eval_mode
from probe.measure.config import MeasureConfig
from probe.measure.curves import with_summaries
from probe.measure.stream import Layout, eval_masks, gather_windows, start_states

CURVES = ("gradient_norm",)


@contextmanager
def embeddings_as(model: LanguageModel, leaf: torch.Tensor):
    """Make the model's embedding lookup return ``leaf`` (same shape) for the forward passes in the block.

    A forward hook that returns a value replaces the module's output
    (documented torch behaviour), which lets us differentiate with respect to
    the embedded inputs without changing LanguageModel.
    """
    called = []

    def hook(module, args, output):
        if output.shape != leaf.shape:
            raise RuntimeError(f"embedding output {tuple(output.shape)} does not match the leaf {tuple(leaf.shape)}")
        called.append(True)
        return leaf

    handle = model.embedding.register_forward_hook(hook)
    try:
        yield called
    finally:
        handle.remove()
    if not called:
        raise RuntimeError("LanguageModel.forward no longer calls model.embedding; gradient_norm needs updating")


def gradient_sensitivity(
    model: LanguageModel, stream: torch.Tensor, config: MeasureConfig = MeasureConfig(), ids: dict | None = None
) -> pd.DataFrame:
    """``gradient_norm`` for lags 1..config.max_lag (mode "eval"), with half-life and decay rate."""
    model = check_model(model)
    stream = check_stream(stream, model)
    K = config.max_lag
    layout = Layout(stream.numel(), config.stream_batch)
    check_lag(K, layout.rows, layout.batch, stream.numel(), 3, "gradient sensitivity")
    ends = layout.sample(config.gradient_windows, K + 1, cpu_generator(config.seed, 1), min_future=1)
    windows = gather_windows(stream, ends, K + 1)  # (K+1, M)
    targets = stream[ends.to(stream.device) + 1]
    with eval_mode(model):
        init = start_states(model, stream, layout, ends - K, config.carry_state, config.chunk_tokens)
        norms = _gradient_norms(model, windows, targets, init, config.chunk_tokens)  # (K+1, M), row K-k is lag k
    mean = norms.mean(1)
    rows = [tidy.row("gradient_norm", "lag", k, mean[K - k], mode="eval") for k in range(1, K + 1)]
    return with_summaries(tidy.frame(rows, ids), CURVES)


def _gradient_norms(model, windows, targets, init, chunk_tokens: int) -> torch.Tensor:
    T, M = windows.shape
    per_chunk = max(1, chunk_tokens // T)
    out = []
    for lo in range(0, M, per_chunk):
        hi = min(lo + per_chunk, M)
        x = windows[:, lo:hi]
        state = [(h[lo:hi].detach(), c[lo:hi].detach()) for h, c in init]
        with torch.enable_grad():
            leaf = model.embedding(x).detach().requires_grad_(True)
            with embeddings_as(model, leaf):
                logits, _ = model(x, state, masks=eval_masks(model, T, hi - lo), last_only=True)
            logp = F.log_softmax(logits[-1].float(), dim=-1).gather(-1, targets[lo:hi].unsqueeze(-1))
            # Windows are independent rows, so the gradient of the sum is each row's own gradient.
            (grad,) = torch.autograd.grad(logp.sum(), leaf)
        out.append(grad.float().norm(dim=-1).double())
    return torch.cat(out, dim=1).cpu()
