"""The masked LSTM recurrence in plain torch: the spec, and the CPU training path.

Two implementations of one function (DESIGN.md, "The recurrence contract"):

- ``lstm_layer_loop``: the per-step semantics written out literally and
  differentiated by autograd. It is the spec every other backend is tested
  against, and is short enough to check against the equations by eye.
- ``lstm_layer_reference``: the same function as one autograd Function with a
  hand-written backward over the whole sequence. The forward saves the
  activated gates, cell states and tanh(c); the backward runs the serial
  part (one (B, 4H) x (4H, H) product and a few elementwise ops per step)
  with every per-step coefficient precomputed for all steps at once, and
  gets dW_hh from one large product instead of T small ones. On CPU the
  products go through oneDNN (``kernels.gemm``).

Both run on any device and any float dtype.
"""

from __future__ import annotations

import torch

from .contract import RecurrentMasks
from .gemm import PackedWeight, mm_t

__all__ = ["lstm_step", "lstm_layer_loop", "lstm_layer_reference"]


def lstm_step(gx_t, h, c, w_hh, m: RecurrentMasks):
    """One step of the masked LSTM, exactly as DESIGN.md writes it."""
    hr = h if m.recurrent is None else h * m.recurrent
    z = gx_t + hr @ w_hh.t()
    i, f, g, o = z.chunk(4, dim=-1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    if m.cell_update is not None:
        g = g * m.cell_update
    c_new = f * c + i * g
    if m.cell is not None:
        c_new = c_new * m.cell
    h_new = o * c_new.tanh()
    if m.zoneout_c is not None:
        c_new = m.zoneout_c * c + (1 - m.zoneout_c) * c_new
    if m.zoneout_h is not None:
        h_new = m.zoneout_h * h + (1 - m.zoneout_h) * h_new
    return h_new, c_new


def lstm_layer_loop(gx, h0, c0, w_hh, masks: RecurrentMasks = RecurrentMasks()):
    """The spec: a Python loop over ``lstm_step``, differentiated by autograd."""
    h, c = h0, c0
    hs = []
    for t in range(gx.shape[0]):
        h, c = lstm_step(gx[t], h, c, w_hh, masks.at(t))
        hs.append(h)
    return torch.stack(hs), (h, c)


def _steps(m: torch.Tensor | None, T: int):
    """A mask as something indexable by t (sequence masks repeat)."""
    if m is None:
        return None
    return m.unsqueeze(0).expand(T, *m.shape) if m.dim() == 2 else m


class _MaskedLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, h0, c0, w_hh, rec, cu, cell, zh, zc):
        T, B, H4 = gx.shape
        H = H4 // 4
        gates = torch.empty_like(gx)  # activated i, f, g, o
        cs = gx.new_empty(T + 1, B, H)  # cell state entering each step, then c_T
        tcs = gx.new_empty(T, B, H)  # tanh of the (masked) new cell
        hs = gx.new_empty(T, B, H)
        w = PackedWeight(w_hh, B)
        rec_t, cu_t, cell_t, zh_t, zc_t = (_steps(m, T) for m in (rec, cu, cell, zh, zc))
        cs[0] = c0
        h = h0
        for t in range(T):
            hr = h if rec_t is None else h * rec_t[t]
            z = torch.add(gx[t], w(hr), out=gates[t])
            z[:, : 2 * H].sigmoid_()
            z[:, 3 * H :].sigmoid_()
            z[:, 2 * H : 3 * H].tanh_()
            i, f, g, o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
            if cu_t is not None:
                g = g * cu_t[t]
            c_prev = cs[t]
            c_new = torch.addcmul(f * c_prev, i, g)
            if cell_t is not None:
                c_new.mul_(cell_t[t])
            tc = torch.tanh(c_new, out=tcs[t])
            h_new = o * tc
            if zc_t is not None:
                torch.lerp(c_new, c_prev, zc_t[t], out=cs[t + 1])
            else:
                cs[t + 1] = c_new
            if zh_t is not None:
                torch.lerp(h_new, h, zh_t[t], out=hs[t])
            else:
                hs[t] = h_new
            h = hs[t]
        ctx.save_for_backward(gx, h0, w_hh, gates, cs, tcs, hs, rec, cu, cell, zh, zc)
        return hs, hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, d_hs, d_hT, d_cT):
        gx, h0, w_hh, gates, cs, tcs, hs, rec, cu, cell, zh, zc = ctx.saved_tensors
        T, B, H4 = gx.shape
        H = H4 // 4
        i, f, g, o = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H : 3 * H], gates[..., 3 * H :]

        # Per-step coefficients for all steps at once (see the derivation in
        # docs/recurrence.md): with dh the total gradient reaching h_t,
        #   dz_o   = dh * Do
        #   dc_new = A * dc + dh * Bc        (dc: gradient reaching c_t)
        #   dz_ifg = dc_new * K
        #   dc    <- dc_new * f + zc * dc
        #   dh    <- (dz @ W_hh) * rec + zh * dh
        keep_h = None if zh is None else 1 - zh
        Do = tcs * o * (1 - o)
        Bc = o * (1 - tcs * tcs)
        if keep_h is not None:
            Do = Do * keep_h
            Bc = Bc * keep_h
        if cell is not None:
            Bc = Bc * cell
        A = None
        if zc is not None:
            A = 1 - zc
        if cell is not None:
            A = cell if A is None else A * cell
        gd = g if cu is None else g * cu
        K = torch.empty(T, B, 3, H, dtype=gx.dtype, device=gx.device)
        torch.mul(gd, i * (1 - i), out=K[:, :, 0])
        torch.mul(cs[:-1], f * (1 - f), out=K[:, :, 1])
        dg = i * (1 - g * g)
        torch.mul(dg, cu, out=K[:, :, 2]) if cu is not None else K[:, :, 2].copy_(dg)
        A_t, zc_t, zh_t, rec_t = (_steps(m, T) for m in (A, zc, zh, rec))

        dZ = torch.empty_like(gx)
        w_t = PackedWeight(w_hh.t(), B)
        dh = d_hT.clone()
        dc = d_cT.clone()
        for t in range(T - 1, -1, -1):
            dh.add_(d_hs[t])
            dc_new = dh * Bc[t]
            if A_t is not None:
                dc_new.addcmul_(A_t[t], dc)
            else:
                dc_new.add_(dc)
            dz = dZ[t]
            torch.mul(dh, Do[t], out=dz[:, 3 * H :])
            torch.mul(dc_new.unsqueeze(1), K[t], out=dz[:, : 3 * H].view(B, 3, H))
            if zc_t is not None:
                dc = torch.addcmul(dc_new * f[t], zc_t[t], dc)
            else:
                dc = dc_new.mul_(f[t])
            dh_prev = w_t(dz)
            if rec_t is not None:
                dh_prev.mul_(rec_t[t])
            if zh_t is not None:
                dh_prev.addcmul_(zh_t[t], dh)
            dh = dh_prev

        d_w = None
        if ctx.needs_input_grad[3]:
            h_prev = torch.cat([h0.unsqueeze(0), hs[:-1]])
            if rec is not None:
                h_prev = h_prev * rec
            # One (4H, T*B) x (T*B, H) product for the whole sequence.
            d_w = mm_t(dZ.view(T * B, H4).t(), h_prev.view(T * B, H).t())
        return dZ, dh, dc, d_w, None, None, None, None, None


def lstm_layer_reference(gx, h0, c0, w_hh, masks: RecurrentMasks = RecurrentMasks()):
    """The recurrence with a hand-written whole-sequence backward."""
    hs, h_T, c_T = _MaskedLSTM.apply(gx, h0, c0, w_hh, *masks)
    return hs, (h_T, c_T)
