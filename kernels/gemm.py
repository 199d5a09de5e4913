"""Matrix products on the CPU through oneDNN, with a plain-torch fallback.

Why this file exists: on the 2-core AMD machines this project targets,
float32 ``torch.mm`` goes through MKL at about half the speed oneDNN reaches
on the same product (measured on this project's 2-core AMD EPYC CI machine,
see docs/benchmarks.md). ``torch.nn.LSTM`` uses oneDNN internally, so a
masked recurrence built on ``torch.mm`` cannot keep up with it. Here every
product used by the CPU training path goes through oneDNN's linear
primitive, with the weight reordered ("packed") once when it is reused
across the time steps of a sequence.

Everything falls back to ``torch.nn.functional.linear`` where oneDNN cannot
serve: other devices, dtypes other than float32, builds without oneDNN, or
``DROPOUT_PROBE_NO_ONEDNN=1`` (used by tests to compare both paths).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

__all__ = ["onednn_available", "uses_onednn", "mm_t", "PackedWeight", "linear"]


def _probe_onednn() -> bool:
    if os.environ.get("DROPOUT_PROBE_NO_ONEDNN") == "1":
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        w = torch.ones(3, 2)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), packed, None, "none", [], "")
        return bool(torch.allclose(out, torch.full((1, 3), 2.0)))
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _probe_onednn()


def onednn_available() -> bool:
    """Whether this torch build exposes the oneDNN linear primitive."""
    return _ONEDNN


# Below about a million multiply-adds oneDNN's fixed cost per call outweighs
# its faster kernel (measured with one thread: (8x32)(32x128) takes 12 us
# against 2.4 us in torch.mm; (20x128)(128x512) is about even).
MIN_MACS = 1 << 20


def uses_onednn(t: torch.Tensor, macs: int | None = None) -> bool:
    """Whether a product on ``t`` (of ``macs`` multiply-adds, if given) goes through oneDNN."""
    big_enough = macs is None or macs >= MIN_MACS
    return _ONEDNN and t.device.type == "cpu" and t.dtype == torch.float32 and big_enough


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def mm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for 2-D ``a`` (M, K) and ``b`` (N, K): one linear layer."""
    if uses_onednn(a, a.shape[0] * a.shape[1] * b.shape[0]):
        return _linear(a.contiguous(), b.contiguous())
    return F.linear(a, b)


class PackedWeight:
    """A weight (N, K) reordered once for oneDNN, applied as ``x @ w.T``.

    The recurrence applies the same W_hh at every step to a (B, H) state;
    reordering it once per sequence instead of once per step is what makes
    the per-step product as fast as cuDNN's or oneDNN's own RNN primitive.
    """

    def __init__(self, w: torch.Tensor, batch_size: int):
        self.onednn = uses_onednn(w, batch_size * w.numel())
        # oneDNN's reorder reads a strided view (e.g. W.t()) directly: no separate transpose copy.
        self.w = w if self.onednn else w.contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, batch_size) if self.onednn else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return _linear(x.contiguous(), self.packed)
        return F.linear(x, self.w)


class _Linear(torch.autograd.Function):
    """``x @ w.T + b`` whose forward and backward products all use oneDNN."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        flat = x.reshape(-1, x.shape[-1])
        y = mm_t(flat, w)
        if b is not None:
            y += b
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        flat_x = x.reshape(-1, x.shape[-1])
        flat_dy = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if torch.is_grad_enabled():  # create_graph: differentiable products, so higher orders are right
            needs = ctx.needs_input_grad
            dx = (flat_dy @ w).view(x.shape) if needs[0] else None
            dw = flat_dy.t() @ flat_x if needs[1] else None
            db = flat_dy.sum(0) if ctx.has_bias and needs[2] else None
            return dx, dw, db
        if ctx.needs_input_grad[0]:
            dx = mm_t(flat_dy, w.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = mm_t(flat_dy.t(), flat_x.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = flat_dy.sum(0)
        return dx, dw, db


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Drop-in for ``F.linear`` that is about twice as fast on CPU float32."""
    if uses_onednn(x, x.numel() * w.shape[0]):
        return _Linear.apply(x, w, b)
    return F.linear(x, w, b)
