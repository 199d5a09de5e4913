"""``lstm_layer``: the one entry point, validating inputs and choosing a backend."""

from __future__ import annotations

import torch

from .contract import RecurrentMasks, check_inputs
from .reference import lstm_layer_reference

BACKENDS = ("auto", "reference", "triton")


def lstm_layer(
    gx: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    *,
    recurrent: torch.Tensor | None = None,
    cell_update: torch.Tensor | None = None,
    cell: torch.Tensor | None = None,
    zoneout_h: torch.Tensor | None = None,
    zoneout_c: torch.Tensor | None = None,
    backend: str = "auto",
):
    """Run the masked LSTM recurrence over a sequence.

    gx (T, B, 4H) is the input projection W_ih x_t + b for every step (input
    dropout already applied to x); h0, c0 (B, H); w_hh (4H, H) in PyTorch's
    gate order i, f, g, o, DropConnect already applied. Each mask is None,
    (B, H) for sequence scope or (T, B, H) for step scope. Returns
    ``hs (T, B, H), (h_T, c_T)``.

    backend: "auto" (Triton for CUDA tensors, the reference elsewhere),
    "reference", or "triton" (on CPU tensors it needs TRITON_INTERPRET=1).
    """
    masks = RecurrentMasks(recurrent, cell_update, cell, zoneout_h, zoneout_c)
    check_inputs(gx, h0, c0, w_hh, masks)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "triton" if gx.is_cuda and _triton_usable() else "reference"
    if backend == "reference":
        return lstm_layer_reference(gx, h0, c0, w_hh, masks)
    from .triton_lstm import lstm_layer_triton

    return lstm_layer_triton(gx, h0, c0, w_hh, masks)


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
