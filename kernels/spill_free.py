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
(``first_without_spills``) to every variant for sm_90 without a GPU, and
tells compiled kernels apart with the same ``specialise``.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["REGISTER_KEYS", "REJECTED", "choose", "compile_key", "first_without_spills", "specialise"]

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


_PTR = {"float32": "fp32", "float64": "fp64", "bfloat16": "bf16", "float16": "fp16", "int32": "i32"}


def specialise(kernel, args, consts) -> tuple[dict, dict, dict, dict]:
    """signature, constexprs, attrs and options of ASTSource/compile, as the JIT derives them for this launch.

    The JIT specialises each non-constexpr argument: a tensor becomes a typed
    pointer, marked divisible by 16 when its address is (every buffer the
    launcher passes is a whole CUDA allocation, 256-byte aligned; meta tensors
    report address 0); an integer equal to 1 becomes a constant, one divisible
    by 16 gets the divisibility attribute, unless the parameter is in
    ``do_not_specialize``; one outside int32 is an i64. tests/test_compile_check.py
    checks this against Triton's own binder.
    """
    names = kernel.arg_names
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in consts.items() if k in names})
    options = {k: v for k, v in consts.items() if k not in names}
    signature, constexprs, attrs = {}, {}, {}
    divisible = [["tt.divisibility", 16]]
    for i, (name, param) in enumerate(zip(names, kernel.params)):
        value = bound[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _PTR[str(value.dtype).removeprefix("torch.")]
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = divisible
        elif isinstance(value, int) and not isinstance(value, bool):
            integer = "i32" if -(2**31) <= value < 2**31 else "i64"
            if param.do_not_specialize:
                signature[name] = integer
            elif value == 1:
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = integer
                if value % 16 == 0:
                    attrs[(i,)] = divisible
        else:
            raise TypeError(f"argument {name} of {kernel.__name__} is a {type(value).__name__}; not handled here")
    return signature, constexprs, attrs, options


def compile_key(kernel, spec, ignore=()) -> str:
    """One string per distinct compiled kernel: name and ``specialise``'s result, launch options in ``ignore`` aside."""
    signature, constexprs, attrs, options = spec
    options = {k: v for k, v in options.items() if k not in ignore}
    return repr((kernel.__name__, sorted(signature.items()), sorted((k, str(v)) for k, v in constexprs.items()),
                 sorted(attrs), sorted((k, str(v)) for k, v in options.items())))  # fmt: skip


def choose(kernel, grid: tuple, args: tuple, constexprs: dict, candidates: list[dict]) -> dict:
    """``constexprs`` with the register options of the first candidate whose compiled kernel does not spill.

    Compiles through ``kernel.warmup`` (no launch; the binary lands in the JIT's
    cache, so the launch that follows reuses it). Needs a CUDA device; with one
    candidate there is nothing to choose and nothing is compiled here.
    """
    base = {k: v for k, v in constexprs.items() if k not in REGISTER_KEYS}
    if len(candidates) < 2:
        return {**base, **(candidates[0] if candidates else {})}
    key = (compile_key(kernel, specialise(kernel, args, constexprs), ignore=REGISTER_KEYS), repr(candidates))
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
