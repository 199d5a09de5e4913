"""The recurrence contract shared by every backend: mask bundle and input checks.

The per-step equations are in docs/recurrence.md ("Forward, one step") and,
as code, in ``kernels.reference.lstm_step``. Checks happen here, once, at the
Python boundary, so backends can assume well-formed inputs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch._C import _functions

MASK_NAMES = ("recurrent", "cell_update", "cell", "zoneout_h", "zoneout_c")


class RecurrentMasks(NamedTuple):
    """Masks on the recurrence; each None, (B, H) (sequence) or (T, B, H) (step).

    Dropout masks hold 0 or 1/(1-p); zoneout masks hold 1 where the previous
    value is kept (or the keep probability itself, for zoneout's evaluation).
    """

    recurrent: torch.Tensor | None = None
    cell_update: torch.Tensor | None = None
    cell: torch.Tensor | None = None
    zoneout_h: torch.Tensor | None = None
    zoneout_c: torch.Tensor | None = None

    def map(self, fn) -> "RecurrentMasks":
        """``fn`` applied to every mask that is given, each kept under its own name."""
        return RecurrentMasks(**{name: None if m is None else fn(m) for name, m in self._asdict().items()})

    def at(self, t: int) -> "RecurrentMasks":
        """The masks that apply at step ``t`` (sequence masks are the same at every t)."""
        return self.map(lambda m: m if m.dim() == 2 else m[t])

    def present(self) -> tuple[str, ...]:
        return tuple(name for name, m in zip(MASK_NAMES, self) if m is not None)


def check_inputs(gx, h0, c0, w_hh, masks: RecurrentMasks) -> None:
    """Raise ValueError naming what is wrong and what the contract expects."""
    if gx.dim() != 3 or gx.shape[-1] % 4 != 0:
        raise ValueError(f"gx must be (T, B, 4H); got shape {tuple(gx.shape)}")
    T, B, H4 = gx.shape
    H = H4 // 4
    if T < 1 or B < 1 or H < 1:
        raise ValueError(f"gx must have T, B, H >= 1; got shape {tuple(gx.shape)}")
    if not gx.is_floating_point():
        raise ValueError(f"gx must be a floating-point tensor; got {gx.dtype}")
    expected = {"h0": (B, H), "c0": (B, H), "w_hh": (4 * H, H)}
    for name, t in (("h0", h0), ("c0", c0), ("w_hh", w_hh)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"{name} must have shape {expected[name]} for gx of shape {tuple(gx.shape)}; "
                f"got {tuple(t.shape)}"
            )
    for name, m in zip(("h0", "c0", "w_hh") + MASK_NAMES, (h0, c0, w_hh) + tuple(masks)):
        if m is None:
            continue
        if m.device != gx.device or m.dtype != gx.dtype:
            raise ValueError(
                f"{name} is {m.dtype} on {m.device} but gx is {gx.dtype} on {gx.device}; "
                "all inputs must share gx's dtype and device"
            )
    for name, m in zip(MASK_NAMES, masks):
        if m is not None and tuple(m.shape) not in ((B, H), (T, B, H)):
            raise ValueError(
                f"mask {name!r} must be (B, H) = {(B, H)} for sequence scope or "
                f"(T, B, H) = {(T, B, H)} for step scope; got {tuple(m.shape)}"
            )


def first_order_only(backend: str):
    """For the backward of an autograd Function that is not itself differentiable (hand-written, in-place,
    compiled or Triton): under ``create_graph`` its gradients come out carrying an error that is raised
    if, and only if, anything differentiates through them, so a double backward is never silently wrong
    (``torch.autograd.function.once_differentiable``'s mechanism, with a message that names the way out)."""
    message = (f"a double backward (create_graph=True, then differentiating the gradient) passed through the "
               f"{backend} LSTM recurrence, whose backward is not differentiable; use backend='spec' for "
               f"higher-order gradients").encode()

    def wrap(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                out = backward(ctx, *grads)
            if not torch.is_grad_enabled():  # an ordinary backward
                return out
            single = not isinstance(out, tuple)
            out = (out,) if single else out
            # Always wrapped, even where no incoming gradient requires grad: the gradient still depends on the
            # saved weights, and dropping that dependence silently is what this guard exists to prevent.
            err = _functions.DelayedError(message, len(out))
            guarded = err(*[None if g is None else g.detach().requires_grad_(True) for g in out])
            guarded = (guarded,) if isinstance(guarded, torch.Tensor) else tuple(guarded)  # one output: a tensor
            return guarded[0] if single else guarded

        return wrapper

    return wrap
