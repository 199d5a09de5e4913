"""Backward kernel of the masked LSTM in Triton: the reverse-time recurrence.

It reads only what the forward saved (activated gates, the cell states,
tanh of the masked new cells, the masks and W_hh) and writes dZ, the
gradient of the pre-activations z_t for every step. dZ is the gradient of
gx, and the host gets dW_hh from it in one large product
(``kernels/triton_lstm.py``), so the serial part here is only

    dh_t    = (dz_{t+1} @ W_hh) * recurrent_{t+1} + zoneout_h_{t+1} * dh_{t+1} + d_hs[t]
    dz_t    = elementwise(dh_t, dc_t, saved state of step t)
    dc_{t-1} = ...

with the algebra of ``kernels.reference._MaskedLSTM.backward``:
    dz_o   = dh * Do,                    Do = tanh(c) o (1-o) (1-zh)
    dc_new = A * dc + dh * Bc,           Bc = o (1-tanh(c)^2) (1-zh) cell,  A = (1-zc) cell
    dz_i   = dc_new * g cu i (1-i),  dz_f = dc_new * c_prev f (1-f),  dz_g = dc_new * i (1-g^2) cu
    dc    <- dc_new * f + zc * dc

Launch ``t`` (or step ``t`` of a persistent launch) first finishes dh_t with
the product over dz_{t+1}, which needs every unit of dz_{t+1} (written by the
previous launch or before the previous grid barrier), then does the
elementwise backward of step t for its tile. ``t = -1`` only finishes dh_0,
the gradient of h0. Tiles and launch modes are as in ``kernels/triton_fw.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_fw import _grid_barrier, _mm

__all__ = ["lstm_bw_kernel"]


@triton.jit(do_not_specialize=["t0"])
def lstm_bw_kernel(
    w_ptr,  # (4H, H) recurrent weight
    gates_ptr,  # (T, B, 4H) activated gates saved by the forward
    tanhc_ptr,  # (T, B, H) tanh of the masked new cell, saved by the forward
    c_ptr,  # (T+1, B, H) cell state entering each step, saved by the forward (float32 for 16-bit storage)
    dhs_ptr,  # (T, B, H) gradient of the outputs hs
    dz_ptr,  # (T, B, 4H) out: gradient of the pre-activations (= d gx)
    dh_ptr,  # (B, H) in: d h_T; carries dh_t between steps; out: d h0 (float32 for 16-bit storage)
    dc_ptr,  # (B, H) in: d c_T; carries dc between steps; out: d c0 (likewise)
    rec_ptr,  # masks: (B, H) sequence or (T, B, H) step scope; any pointer when absent
    cu_ptr,
    cell_ptr,
    zh_ptr,
    zc_ptr,
    rec_ts,  # time strides of the masks: B*H for step scope, 0 for sequence scope
    cu_ts,
    cell_ts,
    zh_ts,
    zc_ts,
    count_ptr,  # int32 arrival counter of the grid barrier, zero at launch (only if SYNC)
    t0,  # first (latest) step of this launch; -1 finishes d h0 only
    n_steps,  # steps t0, t0 - 1, ..., t0 - n_steps + 1
    T,
    B,
    H,
    BH,  # B * H, the stride of one step in the (T, B, H) buffers
    HAS_REC: tl.constexpr,
    HAS_CU: tl.constexpr,
    HAS_CELL: tl.constexpr,
    HAS_ZH: tl.constexpr,
    HAS_ZC: tl.constexpr,
    SYNC: tl.constexpr,  # persistent launch: grid barrier after every step
    LOAD_CACHE: tl.constexpr,  # ".cg" when SYNC: dz written by other programs is read from L2
    USE_DOT: tl.constexpr,  # tl.dot (float32/16) or broadcast-and-sum (float64)
    PRECISION: tl.constexpr,  # tl.dot input_precision for float32: "ieee" or "tf32"
    CT: tl.constexpr,  # compute dtype: float32, or float64 for float64 inputs
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_unit_tiles = tl.cdiv(H, BLOCK_H)
    n_tiles = tl.cdiv(B, BLOCK_B) * n_unit_tiles
    r = tl.arange(0, BLOCK_B)
    u = tl.arange(0, BLOCK_H)
    kk = tl.arange(0, BLOCK_K)

    for s in range(n_steps):
        t = (t0 - s).to(tl.int64)
        for tile in range(pid, n_tiles, n_programs):
            rows = (tile // n_unit_tiles) * BLOCK_B + r
            units = (tile % n_unit_tiles) * BLOCK_H + u
            row_ok = rows < B
            unit_ok = units < H
            mask = row_ok[:, None] & unit_ok[None, :]
            off = rows[:, None] * H + units[None, :]  # into (B, H)
            off4 = rows[:, None] * (4 * H) + units[None, :]  # into (B, 4H), gate i

            dh = tl.load(dh_ptr + off, mask=mask, other=0.0).to(CT)  # d h_{t+1} in total, or d h_T
            if t < T - 1:
                # Through step t+1's recurrent product: (dz_{t+1} @ W)[rows, units],
                # K running over all 4H pre-activations in one loop: a dz row and
                # W's rows are contiguous over the four gates, and one load pair
                # per chunk (not one per gate) keeps sm_90 builds from spilling.
                acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=CT)
                dz_next = dz_ptr + (t + 1) * 4 * BH
                dz_off0 = rows[:, None] * (4 * H) + kk[None, :]  # (BLOCK_B, BLOCK_K) into dz, k0 = 0
                w_off0 = kk[:, None] * H + units[None, :]  # (BLOCK_K, BLOCK_H) into W, row k0 = 0
                for k0 in range(0, 4 * H, BLOCK_K):
                    k_ok = kk < 4 * H - k0
                    dzk = tl.load(
                        dz_next + k0 + dz_off0, mask=row_ok[:, None] & k_ok[None, :], other=0.0,
                        cache_modifier=LOAD_CACHE,
                    )  # fmt: skip
                    wk = tl.load(w_ptr + k0 * H + w_off0, mask=k_ok[:, None] & unit_ok[None, :], other=0.0)
                    acc = _mm(dzk, wk, acc, USE_DOT, PRECISION)
                if HAS_REC:
                    acc = acc * tl.load(rec_ptr + (t + 1) * rec_ts + off, mask=mask, other=0.0).to(CT)
                if HAS_ZH:
                    acc += tl.load(zh_ptr + (t + 1) * zh_ts + off, mask=mask, other=0.0).to(CT) * dh
                dh = acc

            if t >= 0:
                dh += tl.load(dhs_ptr + t * BH + off, mask=mask, other=0.0).to(CT)
                gates_t = gates_ptr + t * 4 * BH
                i = tl.load(gates_t + off4, mask=mask, other=0.0).to(CT)
                f = tl.load(gates_t + H + off4, mask=mask, other=0.0).to(CT)
                g = tl.load(gates_t + 2 * H + off4, mask=mask, other=0.0).to(CT)
                o = tl.load(gates_t + 3 * H + off4, mask=mask, other=0.0).to(CT)
                tc = tl.load(tanhc_ptr + t * BH + off, mask=mask, other=0.0).to(CT)
                c_prev = tl.load(c_ptr + t * BH + off, mask=mask, other=0.0).to(CT)
                dc = tl.load(dc_ptr + off, mask=mask, other=0.0).to(CT)

                Do = tc * o * (1.0 - o)
                Bc = o * (1.0 - tc * tc)
                if HAS_ZH:
                    keep_h = 1.0 - tl.load(zh_ptr + t * zh_ts + off, mask=mask, other=0.0).to(CT)
                    Do = Do * keep_h
                    Bc = Bc * keep_h
                A = tl.full((BLOCK_B, BLOCK_H), 1.0, CT)
                if HAS_CELL:
                    cell = tl.load(cell_ptr + t * cell_ts + off, mask=mask, other=0.0).to(CT)
                    Bc = Bc * cell
                    A = A * cell
                if HAS_ZC:
                    zc = tl.load(zc_ptr + t * zc_ts + off, mask=mask, other=0.0).to(CT)
                    A = A * (1.0 - zc)
                dc_new = dh * Bc + A * dc

                gd = g
                dg = i * (1.0 - g * g)
                if HAS_CU:
                    cu = tl.load(cu_ptr + t * cu_ts + off, mask=mask, other=0.0).to(CT)
                    gd = g * cu
                    dg = dg * cu
                dz_t = dz_ptr + t * 4 * BH
                dz_ty = dz_ptr.dtype.element_ty
                tl.store(dz_t + off4, (dc_new * gd * i * (1.0 - i)).to(dz_ty), mask=mask)
                tl.store(dz_t + H + off4, (dc_new * c_prev * f * (1.0 - f)).to(dz_ty), mask=mask)
                tl.store(dz_t + 2 * H + off4, (dc_new * dg).to(dz_ty), mask=mask)
                tl.store(dz_t + 3 * H + off4, (dh * Do).to(dz_ty), mask=mask)

                dc_prev = dc_new * f
                if HAS_ZC:
                    dc_prev += zc * dc
                tl.store(dc_ptr + off, dc_prev.to(dc_ptr.dtype.element_ty), mask=mask)
            tl.store(dh_ptr + off, dh.to(dh_ptr.dtype.element_ty), mask=mask)
        if SYNC:
            _grid_barrier(count_ptr, (s + 1) * n_programs)
