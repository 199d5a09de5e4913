"""``lstm_layer``: the one entry point, validating inputs and choosing a backend."""

from __future__ import annotations

import warnings

import torch

from kernels.contract import RecurrentMasks, check_inputs
from kernels.gemm import linear
from kernels.native import lstm_layer_native, native_supported
from kernels.reference import lstm_layer_loop, lstm_layer_projected_compiled, lstm_layer_compiled

# Each backend named for what it runs, with the line --help shows for it.
BACKEND_HELP = {
    "auto": "native for layers without recurrent masks, else triton on CUDA, else compiled",
    "spec": "the specification: a Python loop over one step, differentiated by autograd (slow; for checking)",
    "compiled": "the whole-sequence autograd function: its serial loop compiled to C++ on CPU "
                "(a Python loop where no compiler is found, or on other devices)",
    "native": "torch's fused LSTM (oneDNN, cuDNN): layers without recurrent masks only",
    "triton": "the Triton kernels (CUDA; on CPU only under TRITON_INTERPRET=1)",
}
BACKENDS = tuple(BACKEND_HELP)
# Old names still accepted: "reference" ran the compiled loop, not the specification.
BACKEND_ALIASES = {"reference": "compiled"}


def canonical_backend(backend: str) -> str:
    """The backend's current name (an alias gives a DeprecationWarning), or a ValueError listing the valid ones."""
    if backend in BACKEND_ALIASES:
        new = BACKEND_ALIASES[backend]
        warnings.warn(f"backend {backend!r} is deprecated; it is called {new!r} now", DeprecationWarning, stacklevel=3)
        return new
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    return backend


def backend_help() -> str:
    """One line per backend, for --help."""
    aliases = "; ".join(f"{old!r} is a deprecated name of {new!r}" for old, new in BACKEND_ALIASES.items())
    return "recurrence backend: " + "; ".join(f"{k}: {v}" for k, v in BACKEND_HELP.items()) + f" ({aliases})"


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
    masks: RecurrentMasks | None = None,
    backend: str = "auto",
):
    """Run the masked LSTM recurrence over a sequence.

    gx (T, B, 4H) is the input projection W_ih x_t + b for every step (input
    dropout already applied to x); h0, c0 (B, H); w_hh (4H, H) in PyTorch's
    gate order i, f, g, o, DropConnect already applied. Each mask is None,
    (B, H) for sequence scope or (T, B, H) for step scope; a caller holding
    them as one ``RecurrentMasks`` passes ``masks=`` instead. Returns
    ``hs (T, B, H), (h_T, c_T)``.

    backend: one of ``BACKENDS`` (``BACKEND_HELP`` says what each runs);
    "auto" is Triton for CUDA tensors, the compiled loop elsewhere. ("native",
    torch's fused LSTM, needs the input x: ``lstm_layer_from_input``.)
    """
    masks = _bundle(masks, recurrent, cell_update, cell, zoneout_h, zoneout_c)
    check_inputs(gx, h0, c0, w_hh, masks)
    if canonical_backend(backend) == "native":
        raise ValueError("backend 'native' needs the layer's input x: use lstm_layer_from_input")
    chosen = _resolve_backend(backend, gx, masks, native=False)
    if chosen == "spec":
        return lstm_layer_loop(gx, h0, c0, w_hh, masks)
    if chosen == "compiled":
        return lstm_layer_compiled(gx, h0, c0, w_hh, masks)
    from kernels.triton_lstm import lstm_layer_triton

    return lstm_layer_triton(gx, h0, c0, w_hh, masks)


def lstm_layer_from_input(
    x: torch.Tensor,
    w_ih: torch.Tensor,
    bias: torch.Tensor | None,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    *,
    recurrent: torch.Tensor | None = None,
    cell_update: torch.Tensor | None = None,
    cell: torch.Tensor | None = None,
    zoneout_h: torch.Tensor | None = None,
    zoneout_c: torch.Tensor | None = None,
    masks: RecurrentMasks | None = None,
    backend: str = "auto",
):
    """``lstm_layer`` on gx = x @ w_ih.T + bias, computed from the layer's input x (T, B, I).

    The same function as ``lstm_layer(kernels.linear(x, w_ih, bias), ...)``.
    backend "auto" runs a layer without recurrent masks on torch's fused
    LSTM (``kernels.native``: oneDNN on CPU, cuDNN on CUDA) and the others
    as ``lstm_layer`` does; "native" forces the fused LSTM (an error when a
    recurrent mask is given). The compiled backend fuses the projection
    into its autograd Function (one transpose of dZ serves both weight
    gradients), which is what masked layers train with on the CPU.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, I); got shape {tuple(x.shape)}")
    if w_ih.dim() != 2 or w_ih.shape[1] != x.shape[2] or w_ih.shape[0] % 4 != 0:
        raise ValueError(f"w_ih must be (4H, I) with I = {x.shape[2]}; got shape {tuple(w_ih.shape)}")
    if bias is not None and tuple(bias.shape) != (w_ih.shape[0],):
        raise ValueError(f"bias must be (4H,) = ({w_ih.shape[0]},); got shape {tuple(bias.shape)}")
    for name, t in (("w_ih", w_ih), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name} is {t.dtype} on {t.device} but x is {x.dtype} on {x.device}")
    masks = _bundle(masks, recurrent, cell_update, cell, zoneout_h, zoneout_c)
    T, B, _ = x.shape
    gx_like = x.new_empty(1, 1, 1).expand(T, B, w_ih.shape[0])  # shape, dtype and device, no memory
    check_inputs(gx_like, h0, c0, w_hh, masks)
    chosen = _resolve_backend(backend, x, masks)
    if chosen == "native":
        return lstm_layer_native(x, w_ih, bias, h0, c0, w_hh)
    if chosen == "spec":
        return lstm_layer_loop(linear(x, w_ih, bias), h0, c0, w_hh, masks)
    if chosen == "compiled":
        return lstm_layer_projected_compiled(x, w_ih, bias, h0, c0, w_hh, masks)
    return lstm_layer(linear(x, w_ih, bias), h0, c0, w_hh, masks=masks, backend="triton")


def _bundle(masks: RecurrentMasks | None, *separate) -> RecurrentMasks:
    """The masks as one bundle: ``masks`` as given (callers that hold a bundle pass it through), or the
    separate keywords; not both."""
    if masks is None:
        return RecurrentMasks(*separate)
    if any(m is not None for m in separate):
        raise ValueError("give the recurrent masks either as masks=RecurrentMasks(...) or as keywords, not both")
    if not isinstance(masks, RecurrentMasks):
        raise ValueError(f"masks must be a kernels.RecurrentMasks; got {type(masks).__name__}")
    return masks


def _resolve_backend(backend: str, t: torch.Tensor, masks: RecurrentMasks, *, native: bool = True) -> str:
    """"native", "spec", "compiled" or "triton".

    "auto": torch's fused LSTM when no mask is on the recurrence (and ``native``, i.e. the input x is
    at hand), else Triton for CUDA tensors when it is installed, else the reference.
    """
    backend = canonical_backend(backend)
    unmasked = all(m is None for m in masks)
    if backend == "native":
        if not unmasked:
            present = [n for n, m in masks._asdict().items() if m is not None]
            raise ValueError(f"backend 'native' runs layers without recurrent masks; this one has {', '.join(present)}")
        if not native_supported(t):
            raise ValueError(f"backend 'native' does not run {t.dtype} on {t.device.type}; "
                             f"use backend 'auto' or 'compiled'")
        return "native"
    if backend == "auto":
        if native and unmasked and native_supported(t):
            return "native"
        return "triton" if t.is_cuda and _triton_usable() else "compiled"
    return backend


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
