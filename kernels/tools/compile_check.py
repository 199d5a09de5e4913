"""Compile every kernel variant the launcher can choose for sm_90, without a GPU: registers, spills, shared memory.

    python -m kernels.compile_check [--quick] [--jobs N] [--json PATH] [--all-rows]
    PYTHONPATH=/path/to/other/triton python -m kernels.compile_check    # another Triton version

A variant is a kernel (forward with or without SAVE, backward) x dtype
(float32 with "ieee" and "tf32" products, bfloat16, float16, float64) x
launch mode (per step, persistent) x the mask flags of a placement x (B, H).
For each, the real launcher (``kernels/triton_lstm.py``) runs on meta
tensors with its kernel launch intercepted, so the arguments, constexprs
and launch options are exactly those a GPU launch passes; the JIT's
specialisation of them (pointers 16-byte aligned, integers divisible by 16
or equal to 1) decides which compiled kernel a launch needs, and each
distinct one is compiled once with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``. Triton's wheel ships ptxas, so no CUDA
install and no GPU are needed. Registers and spills come from ptxas's
verbose log, shared memory from the compiled kernel's metadata.

A kernel that spills with the launcher's first register options is
compiled again with the next candidates (``triton_lstm.register_candidates``),
as the launcher does on a GPU (``kernels/spill_free.py``); the variant is
reported with the first spill-free one. Exit status 1, with the offending
variants listed, if any variant spills with every candidate, needs more
shared memory than an sm_90 block may have, or fails to compile.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from kernels.spill_free import REGISTER_KEYS, compile_key, first_without_spills, specialise

__all__ = ["MASK_SETS", "Variant", "main", "run_check", "specialise", "variants"]

# The mask flags the placements of probe/placements.py put on the recurrence
# (kernels must not import probe), plus every mask at once as the worst case.
MASK_SETS = {
    "none": {},
    "variational": {"recurrent": "sequence"},
    "naive": {"recurrent": "step"},
    "semeniuta": {"cell_update": "step"},
    "rnndrop": {"cell": "sequence"},
    "zoneout": {"zoneout_h": "step", "zoneout_c": "step"},
    "all": dict.fromkeys(("recurrent", "cell_update", "cell", "zoneout_h", "zoneout_c"), "step"),
}
DTYPES = (("float32", "ieee"), ("float32", "tf32"), ("bfloat16", None), ("float16", None), ("float64", None))
BATCHES = (20, 16, 128)
HIDDEN = (200, 650, 768, 1500)
T_DEFAULT = 35  # Zaremba's. T is only a loop bound: T=1024 gives the --quick variants the same registers (3.6)
# The test's subset: every mask at once, and H = 650 (not a multiple of 16: no vectorised loads, the most
# address registers), for both tile shapes.
QUICK = dict(masks=("all",), B=(20, 128), H=(650,))
SM90_MAX_SHARED = 232448  # bytes of shared memory one block may use on sm_90 (227 KB)
ARCH, WARP = 90, 32


@dataclass(frozen=True)
class Variant:
    kernel: str  # "fw" or "bw"
    dtype: str
    precision: str | None  # float32 products only
    persistent: bool
    masks: str  # a key of MASK_SETS
    save: bool | None  # forward only: store what the backward reads
    B: int
    H: int
    T: int = T_DEFAULT

    @property
    def label(self) -> str:
        kind = f"fw{' save' if self.save else ''}" if self.kernel == "fw" else "bw"
        dt = self.dtype + (f"/{self.precision}" if self.precision else "")
        mode = "persistent" if self.persistent else "per-step"
        return f"{kind} {dt} {mode} masks={self.masks} B={self.B} H={self.H} T={self.T}"


def variants(masks=tuple(MASK_SETS), B=BATCHES, H=HIDDEN, T=T_DEFAULT, dtypes=DTYPES) -> list[Variant]:
    out = []
    for dtype, precision in dtypes:
        for persistent in (False, True):
            for m in masks:
                for b in B:
                    for h in H:
                        for kernel, save in (("fw", True), ("fw", False), ("bw", None)):
                            out.append(Variant(kernel, dtype, precision, persistent, m, save, b, h, T))
    return out


# --- what a launch passes --------------------------------------------------------------------


def _launches(v: Variant):
    """The (kernel, args, constexprs) of every launch the launcher makes for ``v``, on meta tensors."""
    import torch

    from kernels import triton_lstm
    from kernels.contract import RecurrentMasks

    dtype, meta = getattr(torch, v.dtype), torch.device("meta")
    cfg = triton_lstm.launch_config(v.B, v.H, dtype, meta, persistent=v.persistent, precision=v.precision or "ieee")
    T, B, H = v.T, v.B, v.H

    def empty(*shape):
        return torch.zeros(shape, dtype=dtype, device=meta)

    scopes = MASK_SETS[v.masks]
    masks = RecurrentMasks(**{n: empty(B, H) if s == "sequence" else empty(T, B, H) for n, s in scopes.items()})
    calls = []
    real = triton_lstm._launch
    triton_lstm._launch = lambda kernel, n, args, consts: calls.append((kernel, args, consts))
    try:
        h, c, gates, tanhc = triton_lstm.lstm_forward(empty(T, B, 4 * H), empty(B, H), empty(B, H), empty(4 * H, H),
                                                      masks, cfg, True if v.kernel == "bw" else v.save)  # fmt: skip
        if v.kernel == "bw":
            calls.clear()
            triton_lstm.lstm_backward(empty(4 * H, H), h, c, gates, tanhc, masks, empty(T, B, H), empty(B, H),
                                      empty(B, H), cfg, True)  # fmt: skip
    finally:
        triton_lstm._launch = real
    return cfg, calls


def _distinct_launches(v: Variant):
    """The launch config and each distinct (kernel, specialisation) the variant's launches need."""
    cfg, calls = _launches(v)
    seen = {}
    for kernel, args, consts in calls:
        spec = specialise(kernel, args, consts)
        seen.setdefault(compile_key(kernel, spec), (kernel, spec))
    return cfg, seen


# --- compiling -----------------------------------------------------------------------------

_LOG = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def _compile(kernel, spec) -> dict:
    """Compile one specialisation; ptxas's verbose log is printed by Triton when TRITON_DUMP_PTXAS_LOG=1."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs, options = spec
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", ARCH, WARP), options=options)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - every failure is a result to report
        return {"error": f"{type(e).__name__}: {str(e).strip()[:600]}"}
    out = {"compile_s": round(time.perf_counter() - start, 3), "shared": int(compiled.metadata.shared)}
    text = log.getvalue()
    for field, pattern in _LOG.items():
        hits = pattern.findall(text)
        if len(hits) != 1:
            return {"error": f"ptxas log has {len(hits)} '{field}' lines (is TRITON_DUMP_PTXAS_LOG honoured?)"}
        out[field] = int(hits[0])
    return out


def _worker_init() -> None:
    # Results must come from ptxas, not from a cache hit (which has no log).
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"


def _row(v: Variant, cfg: dict, key: str, result: dict, options: dict | None = None) -> dict:
    row = {**asdict(v), "label": v.label, "config": cfg, "options": options or {}, "key": key, **result}
    problems = []
    if "error" in result:
        problems.append(result["error"])
    else:
        if result["spill_stores"] or result["spill_loads"]:
            problems.append(f"spills {result['spill_stores']} B stores, {result['spill_loads']} B loads")
        if result["shared"] > SM90_MAX_SHARED:
            problems.append(f"needs {result['shared']} B shared memory, more than sm_90's {SM90_MAX_SHARED}")
    row["problems"] = problems
    return row


def _spills(result: dict) -> int | None:
    return None if "error" in result else result["spill_stores"] + result["spill_loads"]


def run_check(selected: list[Variant], jobs: int, progress=None, compile_fn=None) -> list[dict]:
    """Compile each distinct specialisation of ``selected`` (in ``jobs`` processes); one row per variant.

    The launcher's rule (kernels/spill_free.py): a specialisation whose kernel
    spills with the first register candidate is compiled with the next ones,
    and the first without spills is the one its launches use; the row reports
    that one (and every candidate tried, in ``tried``). compile_fn (tests):
    called as ``_compile_key_of`` is, in a thread of this process.
    """
    groups: dict[str, list[Variant]] = {}  # compile key -> variants needing that kernel
    configs = {}
    for v in selected:
        cfg, distinct = _distinct_launches(v)
        configs[v] = asdict(cfg)
        for key in distinct:
            groups.setdefault(key, []).append(v)
    firsts = {key: vs[0] for key, vs in groups.items()}
    tried: dict[str, list[dict]] = {key: [] for key in firsts}  # results per candidate, in order
    saved = {k: os.environ.get(k) for k in ("TRITON_CACHE_DIR", "TRITON_ALWAYS_COMPILE", "TRITON_DUMP_PTXAS_LOG")}
    with tempfile.TemporaryDirectory(prefix="triton-cache-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # keeps the user's cache clean; the workers inherit it
        ctx = multiprocessing.get_context("spawn")
        try:
            if compile_fn is None:
                compile_fn, executor = _compile_key_of, cf.ProcessPoolExecutor(jobs, ctx, initializer=_worker_init)
            else:
                executor = cf.ThreadPoolExecutor(1)
            with executor as pool:
                todo = dict.fromkeys(firsts, 0)  # key -> index of the candidate to compile next
                n_done = n_total = 0
                while todo:
                    n_total += len(todo)
                    futures = {pool.submit(compile_fn, firsts[key], key, i): key for key, i in todo.items()}
                    for fut in cf.as_completed(futures):
                        key = futures[fut]
                        try:
                            tried[key].append(fut.result())
                        except Exception as e:  # noqa: BLE001 - a crashed worker is a result too
                            tried[key].append({"error": f"{type(e).__name__}: {e}", "n_candidates": 1})
                        n_done += 1
                        if progress:
                            progress(n_done, n_total)
                    todo = {key: len(tried[key]) for key in futures.values()
                            if _spills(tried[key][-1]) != 0 and len(tried[key]) < tried[key][-1]["n_candidates"]}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    rows = []
    for key, vs in groups.items():
        chosen = tried[key][first_without_spills([_spills(r) for r in tried[key]])]
        result = {k: x for k, x in chosen.items() if k not in ("options", "n_candidates")}
        summary = [{"options": r.get("options"), "regs": r.get("regs"), "spill_stores": r.get("spill_stores"),
                    "spill_loads": r.get("spill_loads"), "error": r.get("error")} for r in tried[key]]  # fmt: skip
        for v in vs:
            rows.append({**_row(v, configs[v], key, result, chosen.get("options")), "tried": summary})
    return rows


def _compile_key_of(v: Variant, key: str, candidate: int = 0) -> dict:
    """Compile ``v``'s specialisation ``key`` with register candidate ``candidate`` of the launcher's list."""
    from kernels import triton_lstm

    cfg, distinct = _distinct_launches(v)
    kernel, (signature, constexprs, attrs, options) = distinct[key]
    fma = v.dtype == "float32" and v.precision == "ieee"
    candidates = triton_lstm.register_candidates(v.persistent, fma)
    options = {**{k: x for k, x in options.items() if k not in REGISTER_KEYS}, **candidates[candidate]}
    return {**_compile(kernel, (signature, constexprs, attrs, options)), "options": options,
            "n_candidates": len(candidates)}  # fmt: skip


# --- report --------------------------------------------------------------------------------


def _options_label(options: dict | None) -> str:
    """The register options of a candidate, briefly."""
    options = options or {}
    text = options.get("ptx_options") or "ptxas defaults"
    return text + (f" maxnreg={options['maxnreg']}" if options.get("maxnreg") else "")


def _range(values) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _group(r: dict) -> tuple[str, str, str]:
    kind = ("fw save" if r["save"] else "fw") if r["kernel"] == "fw" else "bw"
    dtype = r["dtype"] + (f"/{r['precision']}" if r["precision"] else "")
    return kind, dtype, "persistent" if r["persistent"] else "per-step"


def summary_table(rows: list[dict]) -> str:
    """One line per kernel x dtype x mode: per B the tile and warps, registers over masks and H, max shared memory."""
    ok = [r for r in rows if "error" not in r]
    batches = sorted({r["B"] for r in ok})
    head = f"{'kernel':8} {'dtype':14} {'mode':10} " + " ".join(
        f"| B={b:<4} {'tile':>10} {'w':>2} {'regs':>7} {'smem KB':>7}" for b in batches
    ) + " | spills"
    lines = [head, "-" * len(head)]
    for group in dict.fromkeys(map(_group, ok)):
        mine = [r for r in ok if _group(r) == group]
        cells = []
        for b in batches:
            at = [r for r in mine if r["B"] == b]
            if not at:
                cells.append(f"| {'':6} {'':>10} {'':>2} {'':>7} {'':>7}")
                continue
            cfg = at[0]["config"]
            tile = f"{cfg['block_b']}x{cfg['block_h']}x{cfg['block_k']}"
            smem = max(r["shared"] for r in at) / 1024
            cells.append(f"| {'':6} {tile:>10} {cfg['num_warps']:>2} {_range([r['regs'] for r in at]):>7} {smem:>7.0f}")
        spills = sum(1 for r in mine if r["spill_stores"] or r["spill_loads"])
        lines.append(f"{group[0]:8} {group[1]:14} {group[2]:10} " + " ".join(cells) + f" | {spills}")
    return "\n".join(lines)


def environment() -> dict:
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    tool = get_ptxas(ARCH)
    version = tool.version if isinstance(tool.version, str) else str(tool.version)
    return {"triton": triton.__version__, "triton_path": os.path.dirname(triton.__file__), "ptxas": tool.path,
            "ptxas_version": version.strip().splitlines()[-1], "target": f"cuda sm_{ARCH}, warp {WARP}"}  # fmt: skip


def _preflight() -> str | None:
    """Why this Triton cannot run the check, or None."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 is set: the check compiles the kernels, unset it"
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
        from triton.compiler import ASTSource
    except ImportError as e:
        return f"this Triton has no usable NVIDIA backend ({e})"
    import inspect

    if "constexprs" not in inspect.signature(ASTSource).parameters:
        return f"Triton {triton.__version__} has the old ASTSource API; this check needs Triton >= 3.2"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only masks, B, H in {QUICK} (the test's subset)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (default: all cores)")
    parser.add_argument("--T", type=int, default=T_DEFAULT, help=f"sequence length (default {T_DEFAULT})")
    parser.add_argument("--json", type=str, default=None, help="also write every variant's figures here")
    parser.add_argument("--all-rows", action="store_true", help="print one line per variant too")
    args = parser.parse_args(argv)
    why = _preflight()
    if why:
        print(f"compile_check: {why}", file=sys.stderr)
        return 2
    selected = variants(T=args.T, **(QUICK if args.quick else {}))
    env = environment()
    print(f"Triton {env['triton']} ({env['triton_path']}), {env['ptxas']} ({env['ptxas_version']}), {env['target']}")
    start = time.perf_counter()

    def progress(n, total):
        if n == total or n % 25 == 0:
            print(f"  compiled {n}/{total} distinct kernels ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    rows = run_check(selected, args.jobs, progress)
    seconds = time.perf_counter() - start
    if args.all_rows:
        for r in rows:
            fig = r.get("error") or f"regs {r['regs']} spills {r['spill_stores']}/{r['spill_loads']} smem {r['shared']}"
            print(f"{r['label']}: {fig}")
    print(summary_table(rows))
    bad = [r for r in rows if r["problems"]]
    regs = [r["regs"] for r in rows if "regs" in r]
    print(f"{len(rows)} variants ({len(set(r['key'] for r in rows))} distinct kernels) in {seconds:.0f} s with "
          f"{args.jobs} processes; registers {_range(regs) if regs else '-'}; {len(bad)} with problems")  # fmt: skip
    moved = [r for r in rows if len(r["tried"]) > 1 and not r["problems"]]
    if moved:
        print(f"{len(moved)} variants spill with the first register options and not with a later candidate "
              f"(kernels/spill_free.py):")  # fmt: skip
        for r in moved:
            steps = [f"{_options_label(t['options'])}: {t['regs']} registers, {t['spill_stores']} B spill stores"
                     for t in r["tried"]]  # fmt: skip
            print(f"  {r['label']}: " + "; ".join(steps))
    if args.json:
        payload = {**env, "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds, 1), "jobs": args.jobs,
                   "quick": args.quick, "variants": rows}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1, default=str)
    if bad:
        print(f"FAIL: {len(bad)} variants:", file=sys.stderr)
        for r in bad:
            print(f"  {r['label']}: {'; '.join(r['problems'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
