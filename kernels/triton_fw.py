"""Forward kernel of the masked LSTM in Triton, and the device helpers both kernels share.

One kernel, two ways to launch it (``kernels/triton_lstm.py`` picks):

- per step: ``n_steps=1``, one program per tile, one launch per time step;
  the launch boundary orders step t before step t+1.
- persistent: ``n_steps=T``, at most one program per SM, each looping over
  its tiles at every step, with a grid-wide barrier (``_grid_barrier``)
  between steps. Needs every program resident at once, so never more
  programs than SMs; under the interpreter (programs run one after the
  other) only a one-program grid is safe.

A tile is BLOCK_B batch rows x BLOCK_H hidden units, with all four gates of
those units, so the gate arithmetic, the masks and the cell update of a tile
stay in registers: per step the tile reads h_{t-1} (all units, it is the
GEMM's K dimension), the four (BLOCK_H x H) slices of W_hh for its units,
its slice of gx[t], c_{t-1} and the masks, and writes h_t, c_t and, when a
backward will follow, the activated gates and tanh(c_t) that it reads.

Semantics (docs/recurrence.md, "Forward, one step"; spec: ``kernels.reference.lstm_step``):
    z   = gx[t] + (h * recurrent) @ w_hh.T          -> i, f, g, o
    c'  = sigmoid(f) * c + sigmoid(i) * (tanh(g) * cell_update)
    c'  = c' * cell
    h'  = sigmoid(o) * tanh(c')
    c   = zoneout_c * c + (1 - zoneout_c) * c'      (same for h with zoneout_h)
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["lstm_fw_kernel"]


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tl has no tanh that the interpreter also runs (libdevice is GPU only);
    # exp of a non-positive argument never overflows.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _mm(a, b, acc, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b. USE_DOT=False is the float64 path: a broadcast product and a sum."""
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit
def _grid_barrier(count_ptr, target):
    """Wait until ``target`` arrivals have been counted at ``count_ptr``.

    Every program adds one per step and waits for all programs of the grid:
    a correct barrier only when all of them are resident at once (grid <= SMs).
    The release/acquire pair orders the tile's stores of step t before any
    program's loads of step t+1 (those loads also ask for ".cg", L2 only).
    """
    tl.debug_barrier()  # every thread of this program has stored its part
    tl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
    while tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


@triton.jit(do_not_specialize=["t0"])
def lstm_fw_kernel(
    gx_ptr,  # (T, B, 4H) input projection for every step, gates i, f, g, o
    w_ptr,  # (4H, H) recurrent weight
    h_ptr,  # (T+1, B, H) h entering step t at [t]: [0] holds h0, [t+1] is written here (float32 for 16-bit gx)
    c_ptr,  # (T+1, B, H) the same for the cell state
    gates_ptr,  # (T, B, 4H) out: activated gates, for the backward (only if SAVE)
    tanhc_ptr,  # (T, B, H) out: tanh of the masked new cell, for the backward (only if SAVE)
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
    t0,  # first step this launch computes
    n_steps,  # steps t0 .. t0 + n_steps - 1
    B,
    H,
    BH,  # B * H, the stride of one step in the (T, B, H) buffers
    HAS_REC: tl.constexpr,
    HAS_CU: tl.constexpr,
    HAS_CELL: tl.constexpr,
    HAS_ZH: tl.constexpr,
    HAS_ZC: tl.constexpr,
    SAVE: tl.constexpr,  # store gates and tanh(c) for the backward
    SYNC: tl.constexpr,  # persistent launch: grid barrier after every step
    LOAD_CACHE: tl.constexpr,  # ".cg" when SYNC: state written by other programs is read from L2
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
        t = (t0 + s).to(tl.int64)
        h_prev_ptr = h_ptr + t * BH
        for tile in range(pid, n_tiles, n_programs):
            rows = (tile // n_unit_tiles) * BLOCK_B + r
            units = (tile % n_unit_tiles) * BLOCK_H + u
            row_ok = rows < B
            unit_ok = units < H

            # z_q[rows, units] = sum_k hr[rows, k] * W[q*H + units, k] for the four gates q.
            acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=CT)
            acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=CT)
            acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=CT)
            acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=CT)
            hk_off0 = rows[:, None] * H + kk[None, :]  # (BLOCK_B, BLOCK_K) into h, at k0 = 0
            # (BLOCK_K, BLOCK_H) slice of W_q^T: element [k, j] = W[q*H + units[j], k0 + k].
            w_off0 = units[None, :] * H + kk[:, None]
            for k0 in range(0, H, BLOCK_K):
                k_ok = kk < H - k0
                hk_off = hk_off0 + k0
                hk_mask = row_ok[:, None] & k_ok[None, :]
                hk = tl.load(h_prev_ptr + hk_off, mask=hk_mask, other=0.0, cache_modifier=LOAD_CACHE)
                if HAS_REC:
                    hk = hk * tl.load(rec_ptr + t * rec_ts + hk_off, mask=hk_mask, other=0.0)
                # The carried h is float32 for 16-bit storage; the product's operands share W's dtype.
                hk = hk.to(w_ptr.dtype.element_ty)
                w_off = w_off0 + k0
                w_mask = k_ok[:, None] & unit_ok[None, :]
                acc_i = _mm(hk, tl.load(w_ptr + w_off, mask=w_mask, other=0.0), acc_i, USE_DOT, PRECISION)
                acc_f = _mm(hk, tl.load(w_ptr + H * H + w_off, mask=w_mask, other=0.0), acc_f, USE_DOT, PRECISION)
                acc_g = _mm(hk, tl.load(w_ptr + 2 * H * H + w_off, mask=w_mask, other=0.0), acc_g, USE_DOT, PRECISION)
                acc_o = _mm(hk, tl.load(w_ptr + 3 * H * H + w_off, mask=w_mask, other=0.0), acc_o, USE_DOT, PRECISION)

            mask = row_ok[:, None] & unit_ok[None, :]
            off = rows[:, None] * H + units[None, :]  # into (B, H)
            off4 = rows[:, None] * (4 * H) + units[None, :]  # into (B, 4H), gate i
            gx_t = gx_ptr + t * 4 * BH
            i = _sigmoid(acc_i + tl.load(gx_t + off4, mask=mask, other=0.0).to(CT))
            f = _sigmoid(acc_f + tl.load(gx_t + H + off4, mask=mask, other=0.0).to(CT))
            g = _tanh(acc_g + tl.load(gx_t + 2 * H + off4, mask=mask, other=0.0).to(CT))
            o = _sigmoid(acc_o + tl.load(gx_t + 3 * H + off4, mask=mask, other=0.0).to(CT))
            if SAVE:
                gates_t = gates_ptr + t * 4 * BH
                tl.store(gates_t + off4, i.to(gates_ptr.dtype.element_ty), mask=mask)
                tl.store(gates_t + H + off4, f.to(gates_ptr.dtype.element_ty), mask=mask)
                tl.store(gates_t + 2 * H + off4, g.to(gates_ptr.dtype.element_ty), mask=mask)
                tl.store(gates_t + 3 * H + off4, o.to(gates_ptr.dtype.element_ty), mask=mask)

            c_prev = tl.load(c_ptr + t * BH + off, mask=mask, other=0.0).to(CT)
            if HAS_CU:
                g = g * tl.load(cu_ptr + t * cu_ts + off, mask=mask, other=0.0).to(CT)
            c_new = f * c_prev + i * g
            if HAS_CELL:
                c_new = c_new * tl.load(cell_ptr + t * cell_ts + off, mask=mask, other=0.0).to(CT)
            tc = _tanh(c_new)
            if SAVE:
                tl.store(tanhc_ptr + t * BH + off, tc.to(tanhc_ptr.dtype.element_ty), mask=mask)
            h_new = o * tc
            if HAS_ZC:
                zc = tl.load(zc_ptr + t * zc_ts + off, mask=mask, other=0.0).to(CT)
                c_new = zc * c_prev + (1.0 - zc) * c_new
            if HAS_ZH:
                zh = tl.load(zh_ptr + t * zh_ts + off, mask=mask, other=0.0).to(CT)
                h_old = tl.load(h_prev_ptr + off, mask=mask, other=0.0).to(CT)
                h_new = zh * h_old + (1.0 - zh) * h_new
            tl.store(c_ptr + (t + 1) * BH + off, c_new.to(c_ptr.dtype.element_ty), mask=mask)
            tl.store(h_ptr + (t + 1) * BH + off, h_new.to(h_ptr.dtype.element_ty), mask=mask)
        if SYNC:
            _grid_barrier(count_ptr, (s + 1) * n_programs)
