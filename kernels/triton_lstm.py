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
  between steps, launched as a cooperative grid where Triton supports it (a
  grid that cannot be resident at once then fails to launch instead of
  hanging). Under the interpreter programs run one after another, so a
  barrier across programs would never open: there the persistent launch
  uses a single program, which tests its arithmetic and tile loop but not
  the barrier.

With bfloat16 or float16 storage the state carried from step to step (h and
c in the forward, dh and dc in the backward) is kept in float32, so rounding
does not compound over T; hs, h_T, c_T and the gradients come back in the
storage dtype.

``align=True`` runs the recurrence at H rounded up to a multiple of 16 with
zero units, so that rows are 16-byte aligned (``kernels/row_align.py``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from kernels import spill_free
from kernels.contract import RecurrentMasks, first_order_only
from kernels.row_align import align_default, pad_units, padded_width
from kernels.triton_bw import lstm_bw_kernel
from kernels.triton_fw import lstm_fw_kernel

__all__ = [
    "LaunchConfig", "SUPPORTED_DTYPES", "interpreted", "kernel_constexprs", "launch_config", "lstm_layer_triton",
    "register_candidates", "state_dtype",
]  # fmt: skip

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
PERSISTENT_ENV = "DROPOUT_PROBE_TRITON_PERSISTENT"
PRECISION_ENV = "DROPOUT_PROBE_TRITON_PRECISION"
PRECISIONS = ("ieee", "tf32")
PTXAS_DEFAULTS_ENV = "DROPOUT_PROBE_TRITON_PTXAS_DEFAULTS"  # "1": leave ptxas's register allocation alone
# By default ptxas caps a kernel's registers at an occupancy step (72, 80, 96,
# 128, 168 registers with 128 threads) and spills 4-32 bytes to stay there,
# trading local-memory loads for more resident blocks per SM. These grids
# seldom have more than one program per SM (B = 20: at most 94 tiles; a
# persistent grid never does), so that occupancy buys nothing. Usage level 3
# (of 0-10, default 5) stops most of it in per-step kernels; persistent ones with
# tensor-core (or float64) products also get ``maxnreg=255`` (a .maxnreg
# directive, which unlike ptxas -maxrregcount lifts the occupancy target).
# Not the float32 "ieee" ones by default: there maxnreg makes many variants
# spill. What these still leave spilling, the next candidates of
# ``register_candidates`` remove (kernels/spill_free.py picks per kernel).
# docs/kernels.md has the compile check's counts; the effect on speed is for
# a GPU to measure (scripts/gpu_check.py times ptxas's defaults too).
PTXAS_OPTIONS = "--register-usage-level=3"

# Test hook: when True, every buffer the kernels are supposed to write is
# allocated full of NaN, so an element a kernel forgets shows up in the result.
POISON_OUTPUTS = False

_TL_DTYPE = {torch.float64: tl.float64}


def interpreted() -> bool:
    """Whether the kernels run under the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return type(lstm_fw_kernel).__name__ == "InterpretedFunction"


@lru_cache(maxsize=None)
def _cuda_option(name: str) -> bool:
    """Whether the installed Triton's CUDA backend takes launch option ``name``."""
    if interpreted():
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return name in getattr(CUDAOptions, "__dataclass_fields__", {})


def cooperative_launch_supported() -> bool:
    """Whether Triton's CUDA launcher takes ``launch_cooperative_grid`` (3.6 does)."""
    return _cuda_option("launch_cooperative_grid")


@lru_cache(maxsize=None)
def _ptxas_knows_usage_level() -> bool:
    """Whether the ptxas Triton runs for sm_90 knows --register-usage-level (CUDA >= 12.8)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return tuple(int(x) for x in str(get_ptxas(90).version).split(".")[:2]) >= (12, 8)
    except Exception:  # noqa: BLE001 - any other Triton layout: leave ptxas alone
        return False


def register_options(persistent: bool, fma_products: bool = False) -> dict:
    """Launch options that keep ptxas from spilling to reach an occupancy step (see PTXAS_OPTIONS); {} if none.

    fma_products: float32 "ieee" products (no tensor cores), which get no maxnreg.
    """
    if interpreted() or os.environ.get(PTXAS_DEFAULTS_ENV) == "1":
        return {}
    out = {}
    if _cuda_option("ptx_options") and _ptxas_knows_usage_level():
        theirs = os.environ.get("PTXAS_OPTIONS", "").strip()  # what Triton passes when given no ptx_options
        out["ptx_options"] = f"{theirs} {PTXAS_OPTIONS}".strip()
    if persistent and not fma_products and _cuda_option("maxnreg"):
        out["maxnreg"] = 255
    return out


def register_candidates(persistent: bool, fma_products: bool = False) -> list[dict]:
    """The register options a launch tries, in order, keeping the first whose kernel does not spill.

    ``register_options``'s, then usage level 3 with ``maxnreg=255``, then
    ptxas's own allocation ({}): of the variants the first leaves spilling
    (4-12 B with Triton 3.6 and 3.9), each is spill-free with the second, and
    ptxas's defaults are the last resort. Only the first when there is
    nothing to choose (interpreted, $DROPOUT_PROBE_TRITON_PTXAS_DEFAULTS=1, a
    Triton without these options).
    """
    first = register_options(persistent, fma_products)
    if not first:
        return [first]
    wide = {**first, **({"maxnreg": 255} if _cuda_option("maxnreg") else {})}
    out = [first]
    for options in (wide, {}):
        if options not in out:
            out.append(options)
    return out


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the carried state (h, c; dh, dc): float32 for 16-bit storage, else the storage dtype."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


@dataclass(frozen=True)
class LaunchConfig:
    """How the kernels are launched; every field is a compile-time constant of the kernels."""

    block_b: int  # batch rows per tile
    block_h: int  # hidden units per tile (all four gates of each)
    block_k: int  # reduction chunk of the recurrent product
    num_warps: int
    num_stages: int  # software pipelining depth of the K loop
    persistent: bool  # one launch per sequence with a grid barrier, or one launch per step
    precision: str  # tl.dot input_precision for float32 products: "ieee" or "tf32" (unused for other dtypes)


def default_precision(device: torch.device) -> str:
    """float32 product precision when none is given: $DROPOUT_PROBE_TRITON_PRECISION, else cuDNN's choice.

    On CUDA that is what torch.nn.LSTM gets for float32 (cuDNN's RNN switch,
    TF32 by default), so the two are compared like for like; elsewhere
    (the interpreter) "ieee".
    """
    env = os.environ.get(PRECISION_ENV)
    if env:
        if env not in PRECISIONS:
            raise ValueError(f"{PRECISION_ENV} must be 'ieee' or 'tf32'; got {env!r}")
        return env
    if device.type != "cuda":
        return "ieee"
    # Newer torch (2.13 here): per-backend settings, "none" inheriting from the
    # level above (cudnn.rnn -> cudnn -> backends), "none" at the top meaning
    # IEEE. Older torch has only the flag. (Reading the flag can raise once
    # both APIs were used, so it is read only where the settings are missing.)
    chain = (getattr(torch.backends.cudnn, "rnn", None), torch.backends.cudnn, torch.backends)
    settings = [getattr(level, "fp32_precision", None) for level in chain]
    if settings[0] is None:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return next((v for v in settings if v in PRECISIONS), "ieee")


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
        precision = default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'ieee' or 'tf32'; got {precision!r}")
    if dtype == torch.float64:
        # Broadcast-and-sum products (no tl.dot): keep the (B, K, H) product small.
        return LaunchConfig(min(16, triton.next_power_of_2(B)), 16, 4, 4, 2, persistent, precision)
    block_b = min(64, max(16, triton.next_power_of_2(B)))  # tl.dot needs >= 16 rows
    # Small unit tiles spread the reads of W_hh over many SMs. At most 4
    # elements of a tile per thread (8 warps for 64 rows) keeps sm_90 builds
    # below the 255-register cap: 64 x 32 tiles made the backward spill
    # hundreds of bytes there (python -m kernels.compile_check; what it still
    # reports is in docs/kernels.md). Not tuned on a GPU yet. The interpreter
    # uses a small K chunk so that the tests run the reduction loop several times.
    block_k = 16 if interpreted() else 32
    num_warps = 8 if block_b == 64 else 4
    return LaunchConfig(block_b, 16, block_k, num_warps, 2, persistent, precision)


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


def _new_buffer(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = like.dtype if dtype is None else dtype
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _launch(kernel, n_programs: int, args: tuple, constexprs: dict) -> None:
    """Every kernel launch goes through here: kernels/compile_check.py intercepts it to see what a launch passes."""
    kernel[(n_programs,)](*args, **constexprs)


def _mask_args(masks, dummy: torch.Tensor, BH: int):
    """Pointers, time strides (0 for sequence scope) and presence flags of the five masks."""
    ptrs = tuple(dummy if m is None else m for m in masks)
    strides = tuple(0 if m is None or m.dim() == 2 else BH for m in masks)
    flags = dict(zip(("HAS_REC", "HAS_CU", "HAS_CELL", "HAS_ZH", "HAS_ZC"), (m is not None for m in masks)))
    return ptrs, strides, flags


def _fma_products(cfg: LaunchConfig, dtype: torch.dtype) -> bool:
    """float32 "ieee" products: FMA loops, no tensor cores."""
    return dtype == torch.float32 and cfg.precision == "ieee"


def _spill_free(kernel, n_programs: int, args: tuple, constexprs: dict, cfg: LaunchConfig, dtype, device) -> dict:
    """On CUDA, ``constexprs`` with the first register candidate that does not spill (kernels/spill_free.py)."""
    if device.type != "cuda":
        return constexprs  # the interpreter, or the compile check's meta tensors
    candidates = register_candidates(cfg.persistent, _fma_products(cfg, dtype))
    return spill_free.choose(kernel, (n_programs,), args, constexprs, candidates)


def kernel_constexprs(cfg: LaunchConfig, dtype: torch.dtype) -> dict:
    """The compile-time arguments and launch options both kernels share (masks flags and SAVE aside)."""
    # A cooperative launch of a grid that cannot be resident at once fails
    # (CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE) instead of spinning forever at the barrier.
    cooperative = dict(launch_cooperative_grid=True) if cfg.persistent and cooperative_launch_supported() else {}
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
        **cooperative,
        **register_options(cfg.persistent, _fma_products(cfg, dtype)),
    )


def lstm_forward(gx, h0, c0, w_hh, masks: RecurrentMasks, cfg: LaunchConfig, save: bool):
    """Run the forward kernel. Returns h (T+1, B, H), c (T+1, B, H), gates, tanh(c).

    h[0], c[0] are h0, c0; h[1:] is hs; both in ``state_dtype``. gates
    (T, B, 4H) and tanh(c) (T, B, H), in gx's dtype, are what the backward
    reads; None unless ``save``.
    """
    T, B, H4 = gx.shape
    H = H4 // 4
    h = _new_buffer((T + 1, B, H), gx, state_dtype(gx.dtype))
    c = _new_buffer((T + 1, B, H), gx, state_dtype(gx.dtype))
    h[0] = h0
    c[0] = c0
    gates = _new_buffer((T, B, H4), gx) if save else None
    tanhc = _new_buffer((T, B, H), gx) if save else None
    mask_ptrs, mask_strides, flags = _mask_args(masks, gx, B * H)
    n_programs = _n_programs(B, H, cfg, gx.device)
    count = torch.zeros(1, dtype=torch.int32, device=gx.device) if cfg.persistent else gx

    def args(t0: int, n_steps: int) -> tuple:
        return (
            gx, w_hh, h, c,
            gx if gates is None else gates, gx if tanhc is None else tanhc,
            *mask_ptrs, *mask_strides, count, t0, n_steps, B, H, B * H,
        )  # fmt: skip

    constexprs = dict(**flags, SAVE=save, **kernel_constexprs(cfg, gx.dtype))
    constexprs = _spill_free(lstm_fw_kernel, n_programs, args(0, T if cfg.persistent else 1), constexprs, cfg,
                             gx.dtype, gx.device)  # fmt: skip

    def launch(t0: int, n_steps: int) -> None:
        _launch(lstm_fw_kernel, n_programs, args(t0, n_steps), constexprs)

    if cfg.persistent:
        launch(0, T)
    else:
        for t in range(T):
            launch(t, 1)
    return h, c, gates, tanhc


def lstm_backward(w_hh, h, c, gates, tanhc, masks: RecurrentMasks, d_hs, d_hT, d_cT, cfg, need_w: bool):
    """Run the backward kernel and the dW_hh product. Returns d gx, d h0, d c0, d w_hh (gates' dtype)."""
    T, B, H4 = gates.shape
    H = H4 // 4
    dz = _new_buffer((T, B, H4), gates)
    # dh carries between steps and ends as d h0; dc likewise. Fresh contiguous
    # copies (the upstream gradients may be expanded views), in the state dtype.
    dh = torch.empty((B, H), dtype=h.dtype, device=h.device).copy_(d_hT)
    dc = torch.empty((B, H), dtype=h.dtype, device=h.device).copy_(d_cT)
    d_hs = d_hs.contiguous()
    mask_ptrs, mask_strides, flags = _mask_args(masks, gates, B * H)
    n_programs = _n_programs(B, H, cfg, gates.device)
    count = torch.zeros(1, dtype=torch.int32, device=gates.device) if cfg.persistent else gates

    def args(t0: int, n_steps: int) -> tuple:
        return (w_hh, gates, tanhc, c, d_hs, dz, dh, dc, *mask_ptrs, *mask_strides, count, t0, n_steps, T, B, H, B * H)

    constexprs = dict(**flags, **kernel_constexprs(cfg, gates.dtype))
    constexprs = _spill_free(lstm_bw_kernel, n_programs, args(T - 1, T + 1 if cfg.persistent else 1), constexprs,
                             cfg, gates.dtype, gates.device)  # fmt: skip

    def launch(t0: int, n_steps: int) -> None:
        _launch(lstm_bw_kernel, n_programs, args(t0, n_steps), constexprs)

    # Steps T-1 .. 0, then t = -1, which only carries dh through step 0's product into d h0.
    if cfg.persistent:
        launch(T - 1, T + 1)
    else:
        for t in range(T - 1, -2, -1):
            launch(t, 1)

    d_w = None
    if need_w:
        h_prev = h[:T] if masks.recurrent is None else h[:T] * masks.recurrent
        # One (4H, T*B) x (T*B, H) product for the whole sequence, in dz's dtype
        # (cuBLAS accumulates 16-bit products in float32).
        d_w = torch.matmul(dz.view(T * B, H4).t(), h_prev.reshape(T * B, H).to(dz.dtype))
    return dz, dh.to(dz.dtype), dc.to(dz.dtype), d_w


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _TritonLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, h0, c0, w_hh, cfg, *masks):
        # autograd passes the masks as positional tensors, in RecurrentMasks' field order
        masks = RecurrentMasks._make(masks).map(lambda m: m.contiguous())
        w_hh = w_hh.contiguous()
        save = any(ctx.needs_input_grad[:4])
        with _on_device(gx.device):
            h, c, gates, tanhc = lstm_forward(gx.contiguous(), h0, c0, w_hh, masks, cfg, save)
        if save:
            ctx.cfg = cfg
            ctx.save_for_backward(w_hh, h, c, gates, tanhc, *masks)
        # Outputs in gx's dtype; h_T and c_T are copies so that they do not alias the saved state.
        return h[1:].to(gx.dtype), h[-1].to(gx.dtype, copy=True), c[-1].to(gx.dtype, copy=True)

    @staticmethod
    @first_order_only("triton")
    def backward(ctx, d_hs, d_hT, d_cT):
        w_hh, h, c, gates, tanhc, *masks = ctx.saved_tensors
        with _on_device(w_hh.device):
            d_gx, d_h0, d_c0, d_w = lstm_backward(
                w_hh, h, c, gates, tanhc, RecurrentMasks._make(masks), d_hs, d_hT, d_cT, ctx.cfg, ctx.needs_input_grad[3]
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
    align: bool | None = None,
    config: LaunchConfig | None = None,
):
    """The recurrence on Triton; inputs already checked by ``kernels.contract.check_inputs``.

    persistent: one launch per sequence with a grid barrier (GPU; see the
    module docstring); None reads DROPOUT_PROBE_TRITON_PERSISTENT.
    precision: "ieee" or "tf32" for float32 products; None follows
    cuDNN's RNN setting on CUDA (``default_precision``).
    align: run at H rounded up to a multiple of 16 with zero units, so that
    rows are 16-byte aligned (``kernels/row_align.py``); the outputs and
    gradients are those of the H units. None reads DROPOUT_PROBE_TRITON_ALIGN
    (off by default).
    config: a full LaunchConfig (tests use it to force several tiles);
    overrides persistent and precision.
    """
    _check_supported(gx)
    T, B, H4 = gx.shape
    H = H4 // 4
    Hp = padded_width(H) if (align_default() if align is None else align) else H
    if Hp != H:
        gx, h0, c0, w_hh, masks = pad_units(gx, h0, c0, w_hh, masks, Hp)
    if config is None:
        config = launch_config(B, Hp, gx.dtype, gx.device, persistent=persistent, precision=precision)
    hs, h_T, c_T = _TritonLSTM.apply(gx, h0, c0, w_hh, config, *masks)
    if Hp != H:
        hs, h_T, c_T = hs[..., :H], h_T[:, :H], c_T[:, :H]
    return hs, (h_T, c_T)
