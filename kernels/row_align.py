"""Row alignment for the Triton kernels: run the recurrence at a hidden width that is a multiple of 16.

Triton vectorises a load or store only where it can prove 16-byte
alignment, and it learns that from integer arguments divisible by 16. With
H = 650 or 1500 every row of h, c, W_hh, gx and the masks starts at an
address it cannot prove aligned, so the compiled kernels copy and store
one element at a time (docs/kernels.md, "Row alignment").

``pad_units`` widens the problem to ``padded_width(H)`` units with zeros:
each gate's block of gx, the rows and columns of each gate's block of W_hh,
h0, c0 and the masks. The padded units then stay exactly zero at every
step (their pre-activations are 0, so c' = sigmoid(0) * 0 + sigmoid(0) *
tanh(0) = 0 and h' = sigmoid(0) * tanh(0) = 0, whatever the masks), and they
reach no real unit (their columns of W_hh are zero), so the real units'
outputs and gradients are those of the unpadded problem. The padding and the
slicing back are ordinary differentiable torch ops, so autograd takes care
of the gradients; their cost is one copy of gx, W_hh and the masks per call.

Off by default: whether the vector loads gain more than those copies cost is
for a GPU to measure (scripts/gpu_check.py, stage ``alignment``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels.contract import RecurrentMasks

__all__ = ["ALIGN_ENV", "ROW_MULTIPLE", "align_default", "pad_units", "padded_width"]

ALIGN_ENV = "DROPOUT_PROBE_TRITON_ALIGN"  # "1": pad H to a multiple of ROW_MULTIPLE
ROW_MULTIPLE = 16  # the divisibility Triton's JIT specialises integer arguments on


def align_default() -> bool:
    """Whether to pad when the caller does not say: $DROPOUT_PROBE_TRITON_ALIGN, off unless "1"."""
    value = os.environ.get(ALIGN_ENV, "0")
    if value not in ("0", "1"):
        raise ValueError(f"{ALIGN_ENV} must be '0' or '1'; got {value!r}")
    return value == "1"


def padded_width(H: int) -> int:
    """The smallest multiple of ROW_MULTIPLE that is at least H."""
    return -(-H // ROW_MULTIPLE) * ROW_MULTIPLE


def pad_units(gx: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor, masks: RecurrentMasks,
              Hp: int):  # fmt: skip
    """gx (T, B, 4H), h0, c0 (B, H), w_hh (4H, H) and the masks widened to Hp units with zeros."""
    T, B, H4 = gx.shape
    H = H4 // 4
    extra = Hp - H
    gx = F.pad(gx.reshape(T, B, 4, H), (0, extra)).reshape(T, B, 4 * Hp)
    w_hh = F.pad(w_hh.reshape(4, H, H), (0, extra, 0, extra)).reshape(4 * Hp, Hp)
    h0, c0 = F.pad(h0, (0, extra)), F.pad(c0, (0, extra))
    masks = RecurrentMasks(*(None if m is None else F.pad(m, (0, extra)) for m in masks))
    return gx, h0, c0, w_hh, masks
