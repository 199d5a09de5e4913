"""Launch each kernel with the first register options whose compiled binary does not spill.

ptxas decides by heuristics whether to keep a value in local memory to sit
at an occupancy step, and no single set of options avoids that for every
kernel variant: the same options that remove a 4-byte spill in one variant
add one in another, and the spilling variants differ between Triton
versions (docs/kernels.md, "Register allocation"). So the launcher tries a
short ordered list of option sets (``triton_lstm.register_candidates``) and
keeps the first whose compiled kernel reports no spills, once per compiled
specialisation: the first launch of a new specialisation compiles it (and,
only if it spills, the next candidates); later launches reuse the choice.

``python -m kernels.compile_check`` applies the same rule
(``first_without_spills``) to every variant for sm_90 without a GPU.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["REGISTER_KEYS", "REJECTED", "choose", "first_without_spills", "specialisation_key"]

REGISTER_KEYS = ("ptx_options", "maxnreg")  # the launch options a candidate sets
# Compiled kernels that spilled and were passed over (scripts/gpu_check.py reports them apart).
REJECTED: weakref.WeakSet = weakref.WeakSet()
_CHOSEN: dict[tuple, int] = {}  # specialisation key -> index of the candidate its launches use


def first_without_spills(spills) -> int:
    """Index of the first candidate whose spill count is 0; 0 (the default) when every one spills or failed."""
    for i, n in enumerate(spills):
        if n == 0:
            return i
    return 0


def specialisation_key(kernel, args, constexprs: dict) -> tuple:
    """What decides which binary a launch needs, as the JIT specialises (at least as fine as its key).

    Tensors: dtype, and whether the address is 16-byte aligned. Integers: whether
    equal to 1, divisible by 16, and within int32 (unless do_not_specialize).
    Constexprs and launch options other than the register ones, by value.
    """
    parts = []
    for param, a in zip(kernel.params, args):
        if isinstance(a, torch.Tensor):
            parts.append((a.dtype, a.data_ptr() % 16 == 0, a.device.index))
        elif isinstance(a, int) and not isinstance(a, bool):
            parts.append(None if param.do_not_specialize else (a == 1, a % 16 == 0, -(2**31) <= a < 2**31))
        else:
            parts.append(a)
    consts = tuple(sorted((k, str(v)) for k, v in constexprs.items() if k not in REGISTER_KEYS))
    return (kernel.__name__, tuple(parts), consts)


def choose(kernel, grid: tuple, args: tuple, constexprs: dict, candidates: list[dict]) -> dict:
    """``constexprs`` with the register options of the first candidate whose compiled kernel does not spill.

    Compiles through ``kernel.warmup`` (no launch; the binary lands in the JIT's
    cache, so the launch that follows reuses it). Needs a CUDA device; with one
    candidate there is nothing to choose and nothing is compiled here.
    """
    base = {k: v for k, v in constexprs.items() if k not in REGISTER_KEYS}
    if len(candidates) < 2:
        return {**base, **(candidates[0] if candidates else {})}
    key = (specialisation_key(kernel, args, constexprs), repr(candidates))
    index = _CHOSEN.get(key)
    if index is None:
        compiled, spills = [], []
        for options in candidates:
            k = kernel.warmup(*args, grid=grid, **base, **options)
            k = k.result() if hasattr(k, "result") else k  # an asynchronous compile's future
            k._init_handles()  # loads the binary; n_spills is the driver's local memory size per thread
            compiled.append(k)
            spills.append(k.n_spills)
            if k.n_spills == 0:
                break
        index = first_without_spills(spills)
        for i, k in enumerate(compiled):
            if i != index:
                REJECTED.add(k)
        _CHOSEN[key] = index
    return {**base, **candidates[index]}
