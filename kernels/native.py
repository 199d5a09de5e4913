"""The native path: a layer without recurrent-path masks on torch's own fused LSTM.

When no mask touches the recurrence (placements ``none`` and ``zaremba``,
whose masks are on the layer's input; ``weight_drop``, whose DropConnect only
changes W_hh; every dropout placement in evaluation mode), the layer is a
plain LSTM, and torch's fused kernels compute it: oneDNN's on the CPU, cuDNN's
on CUDA. Autograd differentiates through them to x, h0, c0, W_ih, W_hh and
the bias, whatever those were computed from (W_hh * mask included).
"""

from __future__ import annotations

import warnings

import torch

# Dtypes torch's fused LSTM runs per device (cuDNN has no float64 LSTM worth using; the CPU has no half one).
NATIVE_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}


def native_supported(x: torch.Tensor) -> bool:
    return x.dtype in NATIVE_DTYPES.get(x.device.type, ())


def lstm_layer_native(x, w_ih, bias, h0, c0, w_hh, *, w_hr=None, batch_sizes=None):
    """One LSTM layer on torch's fused LSTM: ``hs, (h_T, c_T)``.

    x is (T, B, I), or the (N, I) data of a ``PackedSequence`` with its ``batch_sizes`` (then hs is
    (N, H) packed and h_T, c_T are each row's state at its own last step). ``bias`` is the one bias per
    gate (4H,) or None (the recurrence adds b_ih + b_hh; here b_ih = bias and b_hh = 0 give the same
    sum). ``w_hr`` (P, H) is the projection of an LSTMP layer (``nn.LSTM(proj_size=P)``).
    """
    params = [w_ih, w_hh] if bias is None else [w_ih, w_hh, bias, torch.zeros_like(bias)]
    if w_hr is not None:
        params.append(w_hr)
    hx = (h0.unsqueeze(0), c0.unsqueeze(0))
    with warnings.catch_warnings():
        # cuDNN prefers weights compacted into one buffer; ours are computed per call (DropConnect), so
        # it copies them, which costs one (4H, I + H) copy per layer and call and is not worth a warning.
        warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk of memory.*")
        train = torch.is_grad_enabled()
        if batch_sizes is None:
            hs, h_T, c_T = torch._VF.lstm(x, hx, params, bias is not None, 1, 0.0, train, False, False)
        else:
            hs, h_T, c_T = torch._VF.lstm(x, batch_sizes, hx, params, bias is not None, 1, 0.0, train, False)
    return hs, (h_T[0], c_T[0])
