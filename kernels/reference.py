"""The masked LSTM recurrence in plain torch: the spec, and the CPU training path.

Two implementations of one function (the recurrence of docs/recurrence.md,
"Forward, one step"; mask bundle and checks in ``kernels/contract.py``):

- ``lstm_layer_loop``: the per-step semantics written out literally and
  differentiated by autograd. It is the spec every other backend is tested
  against, and is short enough to check against the equations by eye.
- ``lstm_layer_compiled``: the same function as one autograd Function with a
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

from kernels import cpu_ext
from kernels.contract import RecurrentMasks, first_order_only
from kernels.gemm import PackedWeight, mm_t

__all__ = ["lstm_step", "lstm_layer_loop", "lstm_layer_compiled", "lstm_layer_projected_compiled"]


def lstm_step(gx_t, h, c, w_hh, m: RecurrentMasks, w_hr=None):
    """One step of the masked LSTM, exactly as docs/recurrence.md ("Forward, one step") writes it.

    With ``w_hr`` (P, H), the LSTM with a projection (LSTMP, ``nn.LSTM(proj_size=P)``): the new h is
    ``w_hr (o * tanh(c))``, of size P, and the masks on h (recurrent, zoneout_h) are (…, P)."""
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
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    if m.zoneout_c is not None:
        c_new = m.zoneout_c * c + (1 - m.zoneout_c) * c_new
    if m.zoneout_h is not None:
        h_new = m.zoneout_h * h + (1 - m.zoneout_h) * h_new
    return h_new, c_new


def lstm_layer_loop(gx, h0, c0, w_hh, masks: RecurrentMasks = RecurrentMasks(), w_hr=None):
    """The spec: a Python loop over ``lstm_step``, differentiated by autograd (to any order)."""
    h, c = h0, c0
    hs = []
    for t in range(gx.shape[0]):
        h, c = lstm_step(gx[t], h, c, w_hh, masks.at(t), w_hr)
        hs.append(h)
    return torch.stack(hs), (h, c)


def _per_step(m: torch.Tensor | None, T: int) -> list | None:
    """A mask as a list of T per-step tensors (a sequence mask repeats)."""
    if m is None:
        return None
    return [m] * T if m.dim() == 2 else list(m.unbind(0))


def _gates(gates: torch.Tensor, H: int):
    """Views of the four gate blocks of (..., 4H) activations."""
    return gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H : 3 * H], gates[..., 3 * H :]


def _forward_loop(gates, h0, c0, w_hh, masks):
    """Run the recurrence over the input part of the pre-activations.

    ``gates`` (T, B, 4H) is activated in place (i, f, g, o). Returns hs,
    cs (T+1: the cell entering each step, then c_T) and tanh of each new cell.

    Per-step work is a handful of elementwise ops on (B, H) tensors, so the
    Python overhead of each op matters at small H: views are made once per
    sequence (``unbind``), results are written in place with ``out=``, and
    tanh(g) is computed as 2 * sigmoid(2g) - 1 so that one sigmoid call
    activates all four gates (doubling the g block of a (B, 4H) row costs less
    than tanh on it, and less than doubling W_hh's g rows once per sequence).
    """
    T, B, H4 = gates.shape
    H = H4 // 4
    w = PackedWeight(w_hh, B)
    cs = gates.new_empty(T + 1, B, H)
    tcs = gates.new_empty(T, B, H)
    hs = gates.new_empty(T, B, H)
    cs[0] = c0
    gates_t, tcs_t, hs_t, cs_t = gates.unbind(0), tcs.unbind(0), hs.unbind(0), cs.unbind(0)
    rec_t, cu_t, cell_t, zh_t, zc_t = (_per_step(m, T) for m in masks)
    h = h0
    for t in range(T):
        z = gates_t[t]
        z.add_(w(h if rec_t is None else h * rec_t[t]))
        i, f, g, o = _gates(z, H)
        g.mul_(2)
        z.sigmoid_()
        g.mul_(2).sub_(1)  # tanh(x) = 2 sigmoid(2x) - 1
        ig = i * g if cu_t is None else i * g * cu_t[t]
        c_prev = cs_t[t]
        c_new = cs_t[t + 1] if zc_t is None else torch.empty_like(c_prev)
        torch.addcmul(ig, f, c_prev, out=c_new)
        if cell_t is not None:
            c_new.mul_(cell_t[t])
        tc = torch.tanh(c_new, out=tcs_t[t])
        if zc_t is not None:
            torch.lerp(c_new, c_prev, zc_t[t], out=cs_t[t + 1])
        if zh_t is None:
            h = torch.mul(o, tc, out=hs_t[t])
        else:
            h = torch.lerp(o * tc, h, zh_t[t], out=hs_t[t])
    return hs, cs, tcs


def _backward_loop(d_hs, d_hT, d_cT, h0, w_hh, gates, cs, tcs, hs, masks):
    """dZ (the gradient of the pre-activations, for every step), dh0, dc0 and the masked h_{t-1}."""
    rec, cu, cell, zh, zc = masks
    T, B, H4 = gates.shape
    H = H4 // 4
    i, f, g, o = _gates(gates, H)

    # Per-step coefficients for all steps at once (derivation in
    # docs/recurrence.md). With dh the total gradient reaching h_t and
    # dc the gradient reaching c_t:
    #   dc_new = A * dc + dh * Bc
    #   dz_o   = dh * Do
    #   dz_ifg = dc_new * K                       (K holds three blocks)
    #   dc    <- dc_new * f + zc * dc
    #   dh    <- (dz @ W_hh) * rec + zh * dh
    Do = tcs * o * (1 - o)
    Bc = o * (1 - tcs * tcs)
    if zh is not None:
        Do.mul_(1 - zh)
        Bc.mul_(1 - zh)
    if cell is not None:
        Bc.mul_(cell)
    A = None if zc is None else 1 - zc
    if cell is not None:
        A = cell if A is None else A * cell
    K = torch.empty(T, B, 3, H, dtype=gates.dtype, device=gates.device)
    torch.mul(g if cu is None else g * cu, i * (1 - i), out=K[:, :, 0])
    torch.mul(cs[:-1], f * (1 - f), out=K[:, :, 1])
    torch.mul(i, 1 - g * g, out=K[:, :, 2])
    if cu is not None:
        K[:, :, 2].mul_(cu)

    dZ = torch.empty_like(gates)
    dz_o_t = dZ[..., 3 * H :].unbind(0)
    dz_ifg_t = dZ[..., : 3 * H].view(T, B, 3, H).unbind(0)
    Do_t, Bc_t, K_t, f_t, d_hs_t = Do.unbind(0), Bc.unbind(0), K.unbind(0), f.unbind(0), d_hs.unbind(0)
    A_t, zc_t, zh_t, rec_t = (_per_step(m, T) for m in (A, zc, zh, rec))
    w_t = PackedWeight(w_hh.t(), B)
    dh = d_hT + d_hs_t[T - 1]
    dc = d_cT
    for t in range(T - 1, -1, -1):
        dc_new = dh * Bc_t[t]
        if A_t is None:
            dc_new.add_(dc)
        else:
            dc_new.addcmul_(A_t[t], dc)
        torch.mul(dh, Do_t[t], out=dz_o_t[t])
        torch.mul(dc_new.unsqueeze(1), K_t[t], out=dz_ifg_t[t])
        if zc_t is None:
            dc = dc_new.mul_(f_t[t])
        else:
            dc = torch.addcmul(dc_new * f_t[t], zc_t[t], dc)
        dh_prev = w_t(dZ[t])
        if rec_t is not None:
            dh_prev.mul_(rec_t[t])
        if zh_t is not None:
            dh_prev.addcmul_(zh_t[t], dh)
        if t > 0:
            dh_prev.add_(d_hs_t[t - 1])
        dh = dh_prev
    h_prev = torch.cat([h0.unsqueeze(0), hs[:-1]])
    if rec is not None:
        h_prev = h_prev * rec
    return dZ, dh, dc, h_prev


# The hidden size from which the compiled path's products go through oneDNN (kernels.gemm) rather than
# torch.mm: on the 2-core AMD EPYC machine torch.mm is the faster at H = 64-200 (oneDNN's fixed cost
# per call and its weight reorder outweigh its kernel), oneDNN at H = 650 (docs/benchmarks.md).
ONEDNN_FROM_HIDDEN = 400


def _onednn_products(H: int) -> bool:
    return H >= ONEDNN_FROM_HIDDEN


def _packed(w, B: int, H: int):
    """``w`` reordered for oneDNN, or None where the compiled loop multiplies with torch.mm."""
    return PackedWeight(w, B).packed if _onednn_products(H) else None


def _forward(gates, h0, c0, w_hh, masks, bias=None):
    """``_forward_loop`` on ``gates + bias``, on the compiled CPU loop where it serves (``kernels.cpu_ext``)."""
    if compiled_loop(gates):
        return cpu_ext.forward(gates, h0, c0, w_hh, _packed(w_hh, gates.shape[1], h0.shape[-1]), masks, bias)
    if bias is not None:
        gates += bias
    return _forward_loop(gates, h0, c0, w_hh, masks)


def _backward(d_hs, d_hT, d_cT, h0, w_hh, gates, cs, tcs, hs, masks):
    """``_backward_loop``, on the compiled CPU loop where it serves."""
    if not compiled_loop(gates):
        return _backward_loop(d_hs, d_hT, d_cT, h0, w_hh, gates, cs, tcs, hs, masks)
    packed_t = _packed(w_hh.t(), gates.shape[1], h0.shape[-1])
    dZ, dh0, dc0 = cpu_ext.backward(d_hs, d_hT, d_cT, w_hh, packed_t, gates, cs, tcs, masks)
    h_prev = torch.cat([h0.unsqueeze(0), hs[:-1]])
    if masks[0] is not None:
        h_prev = h_prev * masks[0]
    return dZ, dh0, dc0, h_prev


# Test hook: False runs the Python loops even where the compiled one is available.
USE_COMPILED = True


def compiled_loop(t: torch.Tensor) -> bool:
    """Whether the recurrence on ``t`` runs the compiled CPU loop."""
    return USE_COMPILED and cpu_ext.usable(t)


def _mm_products(*, gates_like: torch.Tensor, H: int) -> bool:
    """Whether the sequence-wide products of the compiled path go through torch.mm (small H) or oneDNN."""
    return compiled_loop(gates_like) and not _onednn_products(H)


class _MaskedLSTM(torch.autograd.Function):
    """The recurrence from gx; forward saves activated gates, cell states and tanh(c)."""

    @staticmethod
    def forward(ctx, gx, h0, c0, w_hh, *masks):
        gates = gx.clone()  # pre-activations, activated in place
        hs, cs, tcs = _forward(gates, h0, c0, w_hh, masks)
        ctx.save_for_backward(h0, w_hh, gates, cs, tcs, hs, *masks)
        return hs, hs[-1].clone(), cs[-1].clone()

    @staticmethod
    @first_order_only("compiled")
    def backward(ctx, d_hs, d_hT, d_cT):
        h0, w_hh, gates, cs, tcs, hs, *masks = ctx.saved_tensors
        dZ, dh0, dc0, h_prev = _backward(d_hs, d_hT, d_cT, h0, w_hh, gates, cs, tcs, hs, masks)
        T, B, H4 = gates.shape
        d_w = None
        if ctx.needs_input_grad[3]:
            # One (4H, T*B) x (T*B, H) product for the whole sequence.
            d_w = mm_t(dZ.view(T * B, H4).t(), h_prev.view(T * B, -1).t())
        return dZ, dh0, dc0, d_w, None, None, None, None, None


class _ProjectedMaskedLSTM(torch.autograd.Function):
    """The input projection gx = x W_ih^T + b fused with the recurrence in one Function.

    Both weight gradients are products with dZ^T, so the backward transposes
    dZ once for both (unfused, the recurrence and the projection's backward
    each transpose it), and gx is written straight into the gate buffer.
    """

    @staticmethod
    def forward(ctx, x, w_ih, bias, h0, c0, w_hh, *masks):
        T, B, _ = x.shape
        H4 = w_ih.shape[0]
        x_flat = x.reshape(T * B, -1)
        gates = torch.mm(x_flat, w_ih.t()) if _mm_products(gates_like=x, H=H4 // 4) else mm_t(x_flat, w_ih)
        gates = gates.view(T, B, H4)
        hs, cs, tcs = _forward(gates, h0, c0, w_hh, masks, bias)  # the bias is added step by step
        ctx.save_for_backward(x, w_ih, h0, w_hh, gates, cs, tcs, hs, *masks)
        ctx.has_bias = bias is not None
        return hs, hs[-1].clone(), cs[-1].clone()

    @staticmethod
    @first_order_only("compiled")
    def backward(ctx, d_hs, d_hT, d_cT):
        x, w_ih, h0, w_hh, gates, cs, tcs, hs, *masks = ctx.saved_tensors
        dZ, dh0, dc0, h_prev = _backward(d_hs, d_hT, d_cT, h0, w_hh, gates, cs, tcs, hs, masks)
        T, B, H4 = gates.shape
        dZ_flat = dZ.view(T * B, H4)
        needs = ctx.needs_input_grad
        if _mm_products(gates_like=gates, H=H4 // 4):  # no transposed copies, no weight reorders
            d_x = torch.mm(dZ_flat, w_ih).view(x.shape) if needs[0] else None
            d_w_ih = torch.mm(dZ_flat.t(), x.reshape(T * B, -1)) if needs[1] else None
            d_b = dZ_flat.sum(0) if ctx.has_bias and needs[2] else None
            d_w_hh = torch.mm(dZ_flat.t(), h_prev.view(T * B, -1)) if needs[5] else None
            return (d_x, d_w_ih, d_b, dh0, dc0, d_w_hh) + (None,) * len(masks)
        dZ_t = dZ_flat.t().contiguous() if (needs[1] or needs[5]) else None
        d_x = PackedWeight(w_ih.t(), T * B)(dZ_flat).view(x.shape) if needs[0] else None
        d_w_ih = mm_t(dZ_t, x.reshape(T * B, -1).t()) if needs[1] else None
        d_b = dZ_flat.sum(0) if ctx.has_bias and needs[2] else None
        d_w_hh = mm_t(dZ_t, h_prev.view(T * B, -1).t()) if needs[5] else None
        return (d_x, d_w_ih, d_b, dh0, dc0, d_w_hh) + (None,) * len(masks)


def lstm_layer_compiled(gx, h0, c0, w_hh, masks: RecurrentMasks = RecurrentMasks()):
    """The recurrence with a hand-written whole-sequence backward."""
    hs, h_T, c_T = _MaskedLSTM.apply(gx, h0, c0, w_hh, *masks)
    return hs, (h_T, c_T)


def lstm_layer_projected_compiled(x, w_ih, bias, h0, c0, w_hh, masks: RecurrentMasks = RecurrentMasks()):
    """``lstm_layer_compiled`` on gx = x @ w_ih.T + bias, the projection fused into the Function."""
    hs, h_T, c_T = _ProjectedMaskedLSTM.apply(x, w_ih, bias, h0, c0, w_hh, *masks)
    return hs, (h_T, c_T)
