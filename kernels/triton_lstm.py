"""The masked LSTM on Triton: the autograd Function joining the two kernels, and their launchers.

``lstm_layer_triton`` computes exactly ``kernels.reference.lstm_layer_loop``
(the recurrence of docs/recurrence.md); ``kernels.lstm_layer`` dispatches
here for ``backend="triton"`` after ``check_inputs``. The math lives in
``triton_fw.py`` (forward) and ``triton_bw.py`` (backward); this file owns
the buffers, the launch configuration and the preconditions. The design and
its memory traffic are described in docs/kernels.md.

Two launch modes, one kernel each way:

- per step (the default): one launch per time step, one program per tile of
  BLOCK_B rows x BLOCK_H hidden units. The launch boundary is the step
  barrier. This is what the CPU tests run under the interpreter.
- persistent (``persistent=True`` or DROPOUT_PROBE_TRITON_PERSISTENT=1): one
  launch for the whole sequence, at most one program per SM, a grid barrier
  between steps. Under the interpreter programs run one after another, so a
  barrier across programs would never open: there the persistent launch
  uses a single program, which tests its arithmetic and tile loop but not
  the barrier.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from .contract import RecurrentMasks
from .triton_bw import lstm_bw_kernel
from .triton_fw import lstm_fw_kernel

__all__ = ["LaunchConfig", "SUPPORTED_DTYPES", "interpreted", "kernel_constexprs", "launch_config", "lstm_layer_triton"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
PERSISTENT_ENV = "DROPOUT_PROBE_TRITON_PERSISTENT"

# Test hook: when True, every buffer the kernels are supposed to write is
# allocated full of NaN, so an element a kernel forgets shows up in the result.
POISON_OUTPUTS = False

_TL_DTYPE = {torch.float64: tl.float64}


def interpreted() -> bool:
    """Whether the kernels run under the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return type(lstm_fw_kernel).__name__ == "InterpretedFunction"


@dataclass(frozen=True)
class LaunchConfig:
    """How the kernels are launched; every field is a compile-time constant of the kernels."""

    block_b: int  # batch rows per tile
    block_h: int  # hidden units per tile (all four gates of each)
    block_k: int  # reduction chunk of the recurrent product
    num_warps: int
    num_stages: int  # software pipelining depth of the K loop
    persistent: bool  # one launch per sequence with a grid barrier, or one launch per step
    precision: str  # tl.dot input_precision for float32: "ieee" or "tf32"


def launch_config(
    B: int,
    H: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    persistent: bool | None = None,
    precision: str | None = None,
) -> LaunchConfig:
    """The launch configuration for a (B, H) problem; untuned defaults, see docs/kernels.md."""
    if persistent is None:
        persistent = os.environ.get(PERSISTENT_ENV) == "1"
    if precision is None:
        # Follow torch's own switch for float32 products (torch.set_float32_matmul_precision).
        precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision must be 'ieee' or 'tf32'; got {precision!r}")
    if dtype == torch.float64:
        # Broadcast-and-sum products (no tl.dot): keep the (B, K, H) product small.
        return LaunchConfig(min(16, triton.next_power_of_2(B)), 16, 8, 4, 2, persistent, precision)
    block_b = min(64, max(16, triton.next_power_of_2(B)))  # tl.dot needs >= 16 rows
    # Small unit tiles spread the reads of W_hh over many SMs. Block sizes,
    # warps and stages were chosen so that sm_90 builds do not spill registers
    # (checked offline with ptxas); they are not tuned on a GPU yet. The
    # interpreter uses a small K chunk so that the tests run the reduction
    # loop several times.
    block_h = 16 if B <= 64 else 32
    block_k = 16 if interpreted() else 32
    num_warps = 8 if block_b * block_h >= 2048 else 4
    return LaunchConfig(block_b, block_h, block_k, num_warps, 2, persistent, precision)


def _check_supported(gx: torch.Tensor) -> None:
    if gx.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"the Triton LSTM supports {', '.join(map(str, SUPPORTED_DTYPES))}; got {gx.dtype}"
        )
    if gx.device.type == "cuda":
        if interpreted():
            raise ValueError(
                "the Triton kernels were imported with TRITON_INTERPRET=1; "
                "use CPU tensors or unset TRITON_INTERPRET to run them on the GPU"
            )
        return
    if gx.device.type != "cpu":
        raise ValueError(f"the Triton LSTM runs on CUDA tensors; got a tensor on {gx.device}")
    if not interpreted():
        raise ValueError(
            "the Triton LSTM runs on CPU tensors only under the Triton interpreter: set "
            "TRITON_INTERPRET=1 before triton is first imported, or use backend='reference'"
        )
    if gx.dtype == torch.bfloat16:
        raise ValueError("the Triton interpreter gets bfloat16 arithmetic wrong; use float32 on CPU, or a GPU")


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _n_tiles(B: int, H: int, cfg: LaunchConfig) -> int:
    return triton.cdiv(B, cfg.block_b) * triton.cdiv(H, cfg.block_h)


def _n_programs(B: int, H: int, cfg: LaunchConfig, device: torch.device) -> int:
    """Per step: one program per tile. Persistent: every program resident at once."""
    n_tiles = _n_tiles(B, H, cfg)
    if not cfg.persistent:
        return n_tiles
    if device.type != "cuda":
        return 1  # the interpreter runs programs in turn: a wider grid would never pass a barrier
    return min(n_tiles, _sm_count(device.index if device.index is not None else torch.cuda.current_device()))


def _new_buffer(shape, like: torch.Tensor) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _mask_args(masks, dummy: torch.Tensor, BH: int):
    """Pointers, time strides (0 for sequence scope) and presence flags of the five masks."""
    ptrs = tuple(dummy if m is None else m for m in masks)
    strides = tuple(0 if m is None or m.dim() == 2 else BH for m in masks)
    flags = dict(zip(("HAS_REC", "HAS_CU", "HAS_CELL", "HAS_ZH", "HAS_ZC"), (m is not None for m in masks)))
    return ptrs, strides, flags


def kernel_constexprs(cfg: LaunchConfig, dtype: torch.dtype) -> dict:
    """The compile-time arguments both kernels share (masks flags and SAVE aside)."""
    return dict(
        SYNC=cfg.persistent,
        LOAD_CACHE=".cg" if cfg.persistent else "",
        USE_DOT=dtype != torch.float64,
        PRECISION=cfg.precision if dtype == torch.float32 else None,  # other dtypes: no choice to make
        CT=_TL_DTYPE.get(dtype, tl.float32),
        BLOCK_B=cfg.block_b,
        BLOCK_H=cfg.block_h,
        BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def lstm_forward(gx, h0, c0, w_hh, masks: RecurrentMasks, cfg: LaunchConfig, save: bool):
    """Run the forward kernel. Returns h (T+1, B, H), c (T+1, B, H), gates, tanh(c).

    h[0], c[0] are h0, c0; h[1:] is hs. gates (T, B, 4H) and tanh(c) (T, B, H)
    are what the backward reads; None unless ``save``.
    """
    T, B, H4 = gx.shape
    H = H4 // 4
    h = _new_buffer((T + 1, B, H), gx)
    c = _new_buffer((T + 1, B, H), gx)
    h[0] = h0
    c[0] = c0
    gates = _new_buffer((T, B, H4), gx) if save else None
    tanhc = _new_buffer((T, B, H), gx) if save else None
    mask_ptrs, mask_strides, flags = _mask_args(masks, gx, B * H)
    n_programs = _n_programs(B, H, cfg, gx.device)
    count = torch.zeros(1, dtype=torch.int32, device=gx.device) if cfg.persistent else gx

    constexprs = dict(**flags, SAVE=save, **kernel_constexprs(cfg, gx.dtype))

    def launch(t0: int, n_steps: int) -> None:
        lstm_fw_kernel[(n_programs,)](
            gx, w_hh, h, c,
            gx if gates is None else gates, gx if tanhc is None else tanhc,
            *mask_ptrs, *mask_strides, count, t0, n_steps, B, H, B * H, **constexprs,
        )  # fmt: skip

    if cfg.persistent:
        launch(0, T)
    else:
        for t in range(T):
            launch(t, 1)
    return h, c, gates, tanhc


def lstm_backward(w_hh, h, c, gates, tanhc, masks: RecurrentMasks, d_hs, d_hT, d_cT, cfg, need_w: bool):
    """Run the backward kernel and the dW_hh product. Returns d gx, d h0, d c0, d w_hh."""
    T, B, H4 = gates.shape
    H = H4 // 4
    dz = _new_buffer((T, B, H4), gates)
    dh = d_hT.contiguous().clone()  # carries dh between steps; d h0 at the end
    dc = d_cT.contiguous().clone()
    d_hs = d_hs.contiguous()
    mask_ptrs, mask_strides, flags = _mask_args(masks, gates, B * H)
    n_programs = _n_programs(B, H, cfg, gates.device)
    count = torch.zeros(1, dtype=torch.int32, device=gates.device) if cfg.persistent else gates

    constexprs = dict(**flags, **kernel_constexprs(cfg, gates.dtype))

    def launch(t0: int, n_steps: int) -> None:
        lstm_bw_kernel[(n_programs,)](
            w_hh, gates, tanhc, c, d_hs, dz, dh, dc,
            *mask_ptrs, *mask_strides, count, t0, n_steps, T, B, H, B * H, **constexprs,
        )  # fmt: skip

    # Steps T-1 .. 0, then t = -1, which only carries dh through step 0's product into d h0.
    if cfg.persistent:
        launch(T - 1, T + 1)
    else:
        for t in range(T - 1, -2, -1):
            launch(t, 1)

    d_w = None
    if need_w:
        h_prev = h[:T] if masks.recurrent is None else h[:T] * masks.recurrent
        # One (4H, T*B) x (T*B, H) product for the whole sequence.
        d_w = torch.matmul(dz.view(T * B, H4).t(), h_prev.reshape(T * B, H))
    return dz, dh, dc, d_w


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _TritonLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, h0, c0, w_hh, cfg, *masks):
        masks = RecurrentMasks(*(None if m is None else m.contiguous() for m in masks))
        w_hh = w_hh.contiguous()
        save = any(ctx.needs_input_grad[:4])
        with _on_device(gx.device):
            h, c, gates, tanhc = lstm_forward(gx.contiguous(), h0, c0, w_hh, masks, cfg, save)
        if save:
            ctx.cfg = cfg
            ctx.save_for_backward(w_hh, h, c, gates, tanhc, *masks)
        return h[1:], h[-1].clone(), c[-1].clone()

    @staticmethod
    def backward(ctx, d_hs, d_hT, d_cT):
        w_hh, h, c, gates, tanhc, *masks = ctx.saved_tensors
        with _on_device(w_hh.device):
            d_gx, d_h0, d_c0, d_w = lstm_backward(
                w_hh, h, c, gates, tanhc, RecurrentMasks(*masks), d_hs, d_hT, d_cT, ctx.cfg, ctx.needs_input_grad[3]
            )
        return (d_gx, d_h0, d_c0, d_w, None) + (None,) * len(masks)


def lstm_layer_triton(
    gx: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    masks: RecurrentMasks = RecurrentMasks(),
    *,
    persistent: bool | None = None,
    precision: str | None = None,
    config: LaunchConfig | None = None,
):
    """The recurrence on Triton; inputs already checked by ``kernels.contract.check_inputs``.

    persistent: one launch per sequence with a grid barrier (GPU; see the
    module docstring); None reads DROPOUT_PROBE_TRITON_PERSISTENT.
    precision: "ieee" or "tf32" for float32 products; None follows
    ``torch.get_float32_matmul_precision()`` ("highest" means "ieee").
    config: a full LaunchConfig (tests use it to force several tiles);
    overrides the two above.
    """
    _check_supported(gx)
    T, B, H4 = gx.shape
    if config is None:
        config = launch_config(B, H4 // 4, gx.dtype, gx.device, persistent=persistent, precision=precision)
    hs, h_T, c_T = _TritonLSTM.apply(gx, h0, c0, w_hh, config, *masks)
    return hs, (h_T, c_T)
