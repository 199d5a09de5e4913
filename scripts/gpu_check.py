"""One-command GPU check of the Triton LSTM kernels: correctness, speed against cuDNN, registers.

    python scripts/gpu_check.py --out DIR [--budget 450] [--stages a,b,...]

Needs only torch, triton and this repository (no pytest). Each stage runs in
its own child process (``python scripts/gpu_check.py --stage NAME``) with its
own timeout, so a hang (a grid barrier that never opens, say) is reported as
a hang and the next stage still runs; the whole run stays within --budget
seconds (stages that no longer fit are skipped). Writes DIR/gpu_check.json
(every figure) and DIR/summary.txt (a short text summary). Exit status 0 if
every stage passed, 1 otherwise, 2 if there is no CUDA GPU to check.

Stages: environment; correctness at Zaremba's shapes and T=1024 (every mask
kind and scope, both launch modes, NaN-poisoned outputs, float32 "ieee"
against the float64 spec ``kernels.reference.lstm_layer_loop``); more tiles
than SMs and a deliberately oversized cooperative grid; bfloat16, float16
and tf32 against float64; first-call compile time; timings against
torch.nn.LSTM (cuDNN); MaskedLSTM on packed bidirectional batches against
the spec and against nn.LSTM. Every stage also reports the registers and spills of
the kernels it compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_ENV = "GPU_CHECK_RESULT"  # where a stage's child process writes its JSON result
# The stages' tensors live here; tests/test_gpu_check.py runs stage code on "cpu" under the Triton interpreter.
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
DEFAULT_BUDGET_S = 450  # the whole run, so that it ends well inside 8 minutes


@dataclass
class Stage:
    name: str
    timeout_s: float
    cmd: list[str] | None = None  # default: run STAGES[name] in a child of this script
    env: dict = field(default_factory=dict)

    def command(self) -> list[str]:
        return self.cmd or [sys.executable, str(Path(__file__).resolve()), "--stage", self.name]


# --- the machinery: children, timeouts, the report -----------------------------------------------


def run_stage(stage: Stage, out: Path, timeout_s: float) -> dict:
    """Run one stage's child; status ok / fail / error / hang, with its result and the tail of its log."""
    result_path = out / f"{stage.name}.result.json"
    log_path = out / f"{stage.name}.log"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, RESULT_ENV: str(result_path), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **stage.env}  # fmt: skip
    start = time.perf_counter()
    with open(log_path, "w") as log:
        # A session of its own, so that a hung child and anything it started can be killed together.
        proc = subprocess.Popen(stage.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    entry = {"name": stage.name, "timeout_s": round(timeout_s, 1), "seconds": round(time.perf_counter() - start, 1)}
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if rc is None:
        entry["status"] = "hang"
    elif rc != 0 or result is None:
        entry["status"] = "error"
    else:
        entry["status"] = "ok" if result.get("ok") else "fail"
    entry["result"] = result
    if entry["status"] != "ok":
        entry["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    return entry


def run_stages(stages: list[Stage], out: Path, budget_s: float = DEFAULT_BUDGET_S) -> dict:
    """Run the stages in turn within ``budget_s``; write out/gpu_check.json and out/summary.txt."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": budget_s, "stages": []}  # fmt: skip
    for stage in stages:
        left = budget_s - (time.perf_counter() - start)
        if left < min(stage.timeout_s, 10):
            report["stages"].append({"name": stage.name, "status": "skipped", "seconds": 0.0,
                                     "timeout_s": stage.timeout_s, "result": None,
                                     "log_tail": f"only {left:.0f} s of the budget left"})  # fmt: skip
            continue
        entry = run_stage(stage, out, min(stage.timeout_s, left))
        report["stages"].append(entry)
        print(f"{entry['name']:22} {entry['status']:8} {entry['seconds']:6.1f} s", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = all(s["status"] == "ok" for s in report["stages"])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "summary.txt").write_text(summary(report))
    return report


def summary(report: dict) -> str:
    lines = [f"{report['command']}: {'PASS' if report['ok'] else 'FAIL'} in {report['seconds']} s "
             f"(budget {report['budget_s']} s), started {report['started']}"]  # fmt: skip
    kernels = []
    for s in report["stages"]:
        r = s.get("result") or {}
        lines.append(f"- {s['name']}: {s['status']} ({s['seconds']} s){'; ' + r['note'] if r.get('note') else ''}")
        lines += [f"    {line}" for line in r.get("lines", [])]
        if s["status"] in ("hang", "error", "skipped"):
            tail = (s.get("log_tail") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"    {s['status']}: {tail[0][:200]}")
        kernels += r.get("kernels", [])
    if kernels:
        # Rejected: compiled, found spilling and passed over for the next register options (kernels/spill_free.py).
        used = [k for k in kernels if not k.get("rejected")]
        spilled = [k for k in used if k.get("n_spills")]
        regs = [k["n_regs"] for k in used if k.get("n_regs") is not None]
        lines.append(f"- compiled kernels used: {len(used)}, registers {min(regs, default=0)}-{max(regs, default=0)}, "
                     f"{len(spilled)} with spills; {len(kernels) - len(used)} spilling ones passed over"
                     + "".join(f"\n    spills: {k}" for k in spilled[:10]))  # fmt: skip
    return "\n".join(lines) + "\n"


# --- helpers the stages share (run in the children) ----------------------------------------------


def _write_result(result: dict) -> None:
    Path(os.environ[RESULT_ENV]).write_text(json.dumps(result, indent=1, default=str))


def _compiled_kernels() -> list[dict]:
    """Registers, spills and shared memory of every kernel this process compiled, from Triton's in-memory caches."""
    from kernels.spill_free import REJECTED
    from kernels.triton_bw import lstm_bw_kernel
    from kernels.triton_fw import lstm_fw_kernel

    keep = ("HAS_REC", "HAS_CU", "HAS_CELL", "HAS_ZH", "HAS_ZC", "SAVE", "SYNC", "PRECISION",
            "BLOCK_B", "BLOCK_H", "BLOCK_K")  # fmt: skip
    out = []
    for fn in (lstm_fw_kernel, lstm_bw_kernel):
        for caches in getattr(fn, "device_caches", {}).values():
            for k in caches[0].values():  # compiled kernels by cache key
                k = k.result() if hasattr(k, "result") else k  # an asynchronous compile's future
                with_handles = getattr(k, "_init_handles", None)
                if with_handles:
                    with_handles()  # n_regs and n_spills are read when the binary is loaded
                constants = getattr(getattr(k, "src", None), "constants", {}) or {}
                named = {fn.arg_names[path[0]]: v for path, v in constants.items() if isinstance(path, tuple)}
                out.append({"kernel": fn.__name__, **{n: str(named[n]) for n in keep if n in named},
                            "num_warps": k.metadata.num_warps, "n_regs": getattr(k, "n_regs", None),
                            "n_spills": getattr(k, "n_spills", None), "shared": k.metadata.shared,
                            "maxnreg": getattr(k.metadata, "maxnreg", None),
                            "rejected": k in REJECTED})  # fmt: skip
    return out


def _rel_err(a, b) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


MASK_KINDS = ("recurrent", "cell_update", "cell", "zoneout_h", "zoneout_c")


def _mask_settings() -> list[tuple[str, dict]]:
    """No mask; each kind alone in each scope; all five at once (step scope)."""
    alone = [(f"{k}/{s}", {k: s}) for k in MASK_KINDS for s in ("sequence", "step")]
    return [("none", {})] + alone + [("all/step", dict.fromkeys(MASK_KINDS, "step"))]


def _inputs(T, B, H, scopes: dict, seed=0, dtype=None, rate=0.3):
    """gx, h0, c0, w_hh and the masks, float64 on the GPU (``dtype`` casts; requires_grad on the first four)."""
    import torch

    from kernels import RecurrentMasks

    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def rand(*shape, s=1.0):
        return torch.randn(*shape, generator=g, device=DEVICE, dtype=torch.float64) * s

    xs = [rand(T, B, 4 * H), rand(B, H), rand(B, H), rand(4 * H, H, s=2 * H**-0.5)]
    masks = {}
    for name, scope in scopes.items():
        hit = (torch.rand((B, H) if scope == "sequence" else (T, B, H), generator=g, device=DEVICE,
                          dtype=torch.float64) < rate).double()  # fmt: skip
        masks[name] = hit if name.startswith("zoneout") else (1 - hit) / (1 - rate)
    dt = dtype or torch.float64
    xs = [x.to(dt).requires_grad_() for x in xs]
    return xs, RecurrentMasks(**{k: v.to(dt) for k, v in masks.items()})


def _outputs_and_grads(fn, xs, masks, upstream_seed=1):
    """hs, h_T, c_T and the gradients of gx, h0, c0, w_hh under a fixed random upstream gradient."""
    import torch

    hs, (h_T, c_T) = fn(*xs, masks)
    g = torch.Generator(device=DEVICE).manual_seed(upstream_seed)
    up = [torch.randn(o.shape, generator=g, device=DEVICE, dtype=torch.float64).to(o.dtype) for o in (hs, h_T, c_T)]
    grads = torch.autograd.grad((hs, h_T, c_T), xs, up)
    return [t.detach() for t in (hs, h_T, c_T, *grads)]


OUT_NAMES = ("hs", "h_T", "c_T", "d_gx", "d_h0", "d_c0", "d_w_hh")


def _triton(persistent: bool, precision: str | None = "ieee", align: bool = False):
    from kernels.triton_lstm import lstm_layer_triton

    return lambda gx, h0, c0, w, m: lstm_layer_triton(gx, h0, c0, w, m, persistent=persistent, precision=precision,
                                                      align=align)  # fmt: skip


# --- the stages ---------------------------------------------------------------------------------


def stage_environment() -> dict:
    import platform

    import torch
    import triton

    from kernels import triton_lstm

    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,mig.mode.current", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20) if _which("nvidia-smi") else None  # fmt: skip
    env = {
        "gpu": props.name, "sm_count": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "triton": triton.__version__, "python": platform.python_version(),
        "driver_and_mig": smi.stdout.strip() if smi and smi.returncode == 0 else "nvidia-smi not available",
        "cooperative_launch": triton_lstm.cooperative_launch_supported(),
        "default_precision": triton_lstm.default_precision(torch.device("cuda")),
    }  # fmt: skip
    return {"ok": True, "environment": env, "lines": [", ".join(f"{k} {v}" for k, v in env.items())]}


def _which(name: str) -> bool:
    return shutil.which(name) is not None


def _correctness(T, B, H, tol: float) -> dict:
    """Every mask setting, both modes, float32 "ieee", NaN-poisoned outputs, against float64 lstm_layer_loop."""
    import torch

    from kernels import triton_lstm
    from kernels.reference import lstm_layer_loop

    triton_lstm.POISON_OUTPUTS = True
    rows, bad = [], []
    for label, scopes in _mask_settings():
        xs, masks = _inputs(T, B, H, scopes)
        want = _outputs_and_grads(lstm_layer_loop, xs, masks)
        xs32 = [x.detach().float().requires_grad_() for x in xs]
        masks32 = type(masks)(*(None if m is None else m.float() for m in masks))
        modes = [(False, False), (True, False)]  # (persistent, align)
        if H % 16 and label in ALIGN_CHECKED:
            modes += [(False, True), (True, True)]
        got = {mode: _outputs_and_grads(_triton(mode[0], align=mode[1]), xs32, masks32) for mode in modes}
        for (p, align), outs in got.items():
            errs = {n: _rel_err(a, b) for n, a, b in zip(OUT_NAMES, outs, want)}
            nan = [n for n, a in zip(OUT_NAMES, outs) if torch.isnan(a).any()]
            worst = max(errs.values())
            rows.append({"masks": label, "persistent": p, "align": align, "max_rel_err": worst, "errors": errs,
                         "nan": nan})  # fmt: skip
            if nan or not worst <= tol:
                mode = ("persistent" if p else "per-step") + (" aligned" if align else "")
                bad.append(f"{label} {mode}: max rel err {worst:.2e}, NaN in {nan}")
        same = [torch.equal(a, b) for a, b in zip(got[False, False], got[True, False])]
        diff = max(_rel_err(a, b) for a, b in zip(got[True, False], got[False, False]))
        rows[-len(modes) + 1]["persistent_vs_per_step"] = {"bitwise_equal": all(same), "max_rel_diff": diff}
        if diff > tol / 10:
            bad.append(f"{label}: persistent differs from per-step by {diff:.2e}")
    worst = max(r["max_rel_err"] for r in rows)
    bitwise = all(r.get("persistent_vs_per_step", {}).get("bitwise_equal", True) for r in rows)
    line = f"T={T} B={B} H={H}: {len(rows)} runs, worst rel err {worst:.2e} (tolerance {tol:g}); " + (
        "persistent == per-step bitwise" if bitwise else "persistent and per-step differ in the last bits")
    return {"ok": not bad, "rows": rows, "failures": bad, "lines": [line, *bad[:10]], "kernels": _compiled_kernels()}


# Mask settings also run with rows padded to 16 units (kernels/row_align.py) where H is not a multiple of 16.
ALIGN_CHECKED = ("none", "all/step")
# Relative to the largest magnitude of each output; float32 "ieee" over T = 1024 steps needs more room.
TOL_IEEE = {35: 1e-4, 1024: 1e-3}


def stage_correctness_small() -> dict:
    return _correctness(35, 20, 200, TOL_IEEE[35])


def stage_correctness_medium() -> dict:
    return _correctness(35, 20, 650, TOL_IEEE[35])


def stage_correctness_long() -> dict:
    return _correctness(1024, 16, 768, TOL_IEEE[1024])


def stage_many_tiles() -> dict:
    """B=256, H=1500 persistent: more tiles than SMs, each program looping over several."""
    import torch

    from kernels import triton_lstm
    from kernels.reference import lstm_layer_loop

    triton_lstm.POISON_OUTPUTS = True
    T, B, H = 8, 256, 1500
    cfg = triton_lstm.launch_config(B, H, torch.float32, torch.device("cuda"), persistent=True, precision="ieee")
    tiles, programs = triton_lstm._n_tiles(B, H, cfg), triton_lstm._n_programs(B, H, cfg, torch.device("cuda"))
    xs, masks = _inputs(T, B, H, {"recurrent": "sequence", "zoneout_c": "step"})
    want = _outputs_and_grads(lstm_layer_loop, xs, masks)
    xs32 = [x.detach().float().requires_grad_() for x in xs]
    masks32 = type(masks)(*(None if m is None else m.float() for m in masks))
    errs = {p: max(_rel_err(a, b) for a, b in zip(_outputs_and_grads(_triton(p), xs32, masks32), want))
            for p in (False, True)}  # fmt: skip
    ok = all(e <= TOL_IEEE[35] for e in errs.values()) and tiles > programs
    line = (f"T={T} B={B} H={H}: {tiles} tiles on {programs} programs; max rel err per-step {errs[False]:.2e}, "
            f"persistent {errs[True]:.2e} (tolerance {TOL_IEEE[35]:g})")  # fmt: skip
    return {"ok": ok, "tiles": tiles, "programs": programs, "errors": errs, "lines": [line],
            "kernels": _compiled_kernels()}  # fmt: skip


def stage_cooperative_too_large() -> dict:
    """A persistent grid far larger than can be resident must fail to launch, not hang at the barrier."""
    import torch

    from kernels import triton_lstm

    if not triton_lstm.cooperative_launch_supported():
        return {"ok": False, "lines": ["this Triton has no launch_cooperative_grid: an oversized grid would hang"]}
    T, B, H = 4, 64, 1024
    xs, masks = _inputs(T, B, H, {}, dtype=torch.float32)
    cfg = triton_lstm.launch_config(B, H, torch.float32, torch.device("cuda"), persistent=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    triton_lstm._n_programs = lambda *a: 64 * sms  # more blocks than any SM can hold (at most 32 each on sm_90)
    try:
        with torch.no_grad():
            triton_lstm.lstm_forward(*[x.detach() for x in xs], masks, cfg, False)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - the failure is the expected outcome
        return {"ok": True, "lines": [f"grid of {64 * sms} programs refused: {type(e).__name__}: {str(e)[:160]}"]}
    return {"ok": False, "lines": [f"a grid of {64 * sms} programs launched and finished: the barrier was not tested"]}


def stage_precision() -> dict:
    """bfloat16 and float16 storage and tf32 products against float64, at Zaremba-medium and T=1024."""
    import torch

    from kernels.reference import lstm_layer_loop

    # Relative to the largest magnitude of each output; a few units of each format's resolution.
    cases = [("bfloat16", torch.bfloat16, None, 5e-2), ("float16", torch.float16, None, 1e-2),
             ("float32/tf32", torch.float32, "tf32", 1e-2)]  # fmt: skip
    rows, lines, ok = [], [], True
    for T, B, H in ((35, 20, 650), (1024, 16, 768)):
        xs, masks = _inputs(T, B, H, {"recurrent": "sequence", "zoneout_c": "step"}, seed=3)
        want = _outputs_and_grads(lstm_layer_loop, xs, masks)
        for label, dt, precision, tol in cases:
            low = [x.detach().to(dt).requires_grad_() for x in xs]
            low_masks = type(masks)(*(None if m is None else m.to(dt) for m in masks))
            for p in (False, True):
                outs = _outputs_and_grads(_triton(p, precision), low, low_masks)
                errs = {n: _rel_err(a, b) for n, a, b in zip(OUT_NAMES, outs, want)}
                worst = max(errs.values())
                ok &= worst <= tol
                rows.append({"T": T, "B": B, "H": H, "dtype": label, "persistent": p, "errors": errs, "tolerance": tol})
                lines.append(f"T={T} B={B} H={H} {label:13} {'persistent' if p else 'per-step  '}: worst rel err "
                             f"{worst:.2e} ({max(errs, key=errs.get)}), tolerance {tol:g}")  # fmt: skip
    return {"ok": ok, "rows": rows, "lines": lines, "kernels": _compiled_kernels()}


def stage_compile_time() -> dict:
    """First call (compiling both kernels into an empty cache) against the second, T=35 B=20 H=650, variational."""
    import torch

    xs, masks = _inputs(35, 20, 650, {"recurrent": "sequence"}, dtype=torch.float32)
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        _outputs_and_grads(_triton(False, None), xs, masks)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    line = f"first forward+backward call {times[0]:.2f} s (empty cache), second {times[1] * 1e3:.1f} ms"
    return {"ok": True, "first_s": times[0], "second_s": times[1], "lines": [line], "kernels": _compiled_kernels()}


BENCH_SHAPES = ((35, 20, 650), (35, 20, 1500), (1024, 16, 768))
BENCH_MASKS = {"none": {}, "variational": {"recurrent": "sequence"}, "naive": {"recurrent": "step"},
               "zoneout": {"zoneout_h": "step", "zoneout_c": "step"}}  # fmt: skip


def _median_ms(fn, warmup=3, reps=15) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _bench(shapes, placements) -> dict:
    """Medians (CUDA events) of a whole layer, input projection included, forward and forward+backward, float32."""
    import torch

    from kernels import linear
    from kernels.triton_lstm import launch_config, lstm_layer_triton

    rows, lines = [], []
    for T, B, H in shapes:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(T, B, H, generator=g, device="cuda").requires_grad_()
        lstm = torch.nn.LSTM(H, H).cuda()
        w_ih, w_hh = (t.detach().clone().requires_grad_() for t in (lstm.weight_ih_l0, lstm.weight_hh_l0))
        bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().requires_grad_()
        h0 = torch.zeros(B, H, device="cuda")
        params = [x, w_ih, w_hh, bias]

        def timed(run, label, wrt, first=None):
            # Gradients of x and every weight, as in training (cuDNN skips weight gradients nobody asks for).
            fwd = _median_ms(lambda: run())
            fb = _median_ms(lambda: torch.autograd.grad(run().sum(), wrt))
            rows.append({"T": T, "B": B, "H": H, "impl": label, "forward_ms": fwd, "forward_backward_ms": fb,
                         "first_call_s": first})  # fmt: skip
            return fwd, fb

        base = timed(lambda: lstm(x)[0], "torch.nn.LSTM (cuDNN)", [x, *lstm.parameters()])
        precision = launch_config(B, H, torch.float32, torch.device("cuda")).precision
        lines.append(f"T={T} B={B} H={H}: cuDNN {base[0]:.3f} ms fwd, {base[1]:.3f} ms fwd+bwd; Triton ({precision}):")
        for name in placements:
            scopes = BENCH_MASKS[name]
            _, masks = _inputs(T, B, H, scopes, dtype=torch.float32)
            for p in (False, True):
                def run(masks=masks, p=p):
                    gx = linear(x, w_ih, bias)
                    return lstm_layer_triton(gx, h0, h0, w_hh, masks, persistent=p)[0]

                torch.cuda.synchronize()
                start = time.perf_counter()
                torch.autograd.grad(run().sum(), params)
                torch.cuda.synchronize()
                first = time.perf_counter() - start
                fwd, fb = timed(run, f"triton {'persistent' if p else 'per-step'} {name}", params, first)
                mode = "persistent" if p else "per-step  "
                lines.append(f"    {name:11} {mode} {fwd:8.3f} ms ({fwd / base[0]:5.2f}x) fwd, "
                             f"{fb:8.3f} ms ({fb / base[1]:5.2f}x) fwd+bwd; first call {first:.1f} s")  # fmt: skip
    return {"ok": True, "rows": rows, "lines": lines, "kernels": _compiled_kernels()}


def stage_bench() -> dict:
    return _bench(BENCH_SHAPES, tuple(BENCH_MASKS))


def stage_bench_ptxas_defaults() -> dict:
    """The same with ptxas's own register allocation (no usage level 3, no maxnreg): what those options cost or save."""
    from kernels import triton_lstm

    os.environ[triton_lstm.PTXAS_DEFAULTS_ENV] = "1"  # read at every launch
    result = _bench((BENCH_SHAPES[0], BENCH_SHAPES[2]), ("none", "variational"))
    result["note"] = f"{triton_lstm.PTXAS_DEFAULTS_ENV}=1; compare with the bench stage"
    return result


def stage_alignment() -> dict:
    """The recurrence alone at H = 650, at H = 650 padded to 656 units (``align=True``, kernels/row_align.py)
    and at H = 656 (a multiple of 16, the same 41 unit tiles): whether padding pays, and what it could gain."""
    import torch

    from kernels.triton_lstm import lstm_layer_triton

    rows, lines = [], []
    for T, B in ((35, 20), (1024, 16)):
        times = {}
        for H, align in ((650, False), (650, True), (656, False)):
            xs, masks = _inputs(T, B, H, {}, dtype=torch.float32)
            run = lambda: lstm_layer_triton(*xs, masks, align=align)[0]  # noqa: E731
            fwd = _median_ms(run)
            fb = _median_ms(lambda: torch.autograd.grad(run().sum(), xs))
            times[H, align] = (fwd, fb)
            rows.append({"T": T, "B": B, "H": H, "align": align, "forward_ms": fwd, "forward_backward_ms": fb})
        (f, b), (fa, ba), (f16, b16) = times[650, False], times[650, True], times[656, False]
        lines.append(f"T={T} B={B} per-step, fwd / fwd+bwd: H=650 {f:.3f} / {b:.3f} ms; padded to 656 {fa:.3f} / "
                     f"{ba:.3f} ms ({fa / f:.2f}x / {ba / b:.2f}x of 650); H=656 {f16:.3f} / {b16:.3f} ms")  # fmt: skip
    return {"ok": True, "rows": rows, "lines": lines, "kernels": _compiled_kernels()}


def _dropin_correctness(T: int, B: int, I: int, H: int, tol: float) -> dict:
    """MaskedLSTM on a packed, bidirectional batch of mixed lengths, float32 Triton against the float64 spec,
    for a recurrent-mask placement and zoneout: outputs, final states and the input's gradient."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    from probe.masked_lstm import MaskedLSTM
    from probe.model.masked_lstm import LayerMasks, LSTMMasks

    rows, failures = [], []
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    on = lambda t, dtype: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    for spec in ("variational:p=0.3,rec=0.3", "zoneout:p=0.1,zc=0.2,zh=0.1", "naive:p=0.3,rec=0.3"):
        torch.manual_seed(0)
        ref = MaskedLSTM(I, H, 2, bidirectional=True, placement=spec, backend="spec").double()
        tri = MaskedLSTM(I, H, 2, bidirectional=True, placement=spec, backend="triton").to(DEVICE)
        tri.load_state_dict(ref.state_dict())
        masks = ref.sample_masks(T, B, torch.Generator().manual_seed(1))
        outs = []
        for module, dtype, device in ((ref, torch.float64, "cpu"), (tri, torch.float32, DEVICE)):
            m = LSTMMasks([LayerMasks(on(u.input, dtype), on(u.weight, dtype), u.recurrent.map(lambda t: on(t, dtype)))
                           for u in masks.layers], on(masks.output, dtype), [on(b, dtype) for b in masks.between])
            xi = x.to(device, dtype).requires_grad_(True)
            out, (h, c) = module(pack_padded_sequence(xi, lengths, enforce_sorted=False), masks=m)
            (gx,) = torch.autograd.grad(out.data.sum() + h.sum() + c.sum(), xi)
            outs.append([t.detach().double().cpu() for t in (out.data, h, c, gx)])
        errs = {name: _rel_err(a, b) for name, a, b in zip(("output", "h_n", "c_n", "d_input"), outs[1], outs[0])}
        rows.append({"placement": spec, **errs})
        if not all(e <= tol for e in errs.values()):
            failures.append(f"{spec}: {errs}")
    return {"ok": not failures, "rows": rows, "failures": failures}


def stage_dropin() -> dict:
    """MaskedLSTM as nn.LSTM's drop-in on CUDA: packed bidirectional batches, correctness and speed."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence

    from probe.masked_lstm import MaskedLSTM

    result = _dropin_correctness(50, 32, 128, 128, tol=2e-4)
    T, B, I, H = 50, 32, 256, 256
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(T // 10, T + 1, (B,), generator=g)
    lengths[0] = T
    x = torch.randn(T, B, I, generator=g).to(DEVICE).requires_grad_(True)
    timings = {}
    for name, build, packed in (
        ("nn_lstm", lambda: nn.LSTM(I, H, 2, bidirectional=True), True),
        ("masked_none", lambda: MaskedLSTM(I, H, 2, bidirectional=True), True),
        ("masked_variational", lambda: MaskedLSTM(I, H, 2, bidirectional=True, placement="variational:p=0.3,rec=0.3"), True),
        ("masked_variational_padded", lambda: MaskedLSTM(I, H, 2, bidirectional=True, placement="variational:p=0.3,rec=0.3"), False),
    ):
        m = build().to(DEVICE).train()

        def step(m=m, packed=packed):
            out, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x)
            data = out.data if packed else out
            torch.autograd.grad(data.sum() + h.sum() + c.sum(), [x, *m.parameters()])

        timings[name] = _median_ms(step)
    result["timings_ms"] = timings
    result["lines"] = [f"packed bidirectional T<={T} B={B} H={H}, fwd+bwd: " + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items())]
    result["kernels"] = _compiled_kernels()
    return result


STAGES = {  # name: (function, timeout in seconds); run in this order, the most telling first
    "environment": (stage_environment, 60),
    "correctness_medium": (stage_correctness_medium, 120),
    "correctness_long": (stage_correctness_long, 150),
    "correctness_small": (stage_correctness_small, 120),
    "dropin": (stage_dropin, 90),
    "many_tiles": (stage_many_tiles, 60),
    "cooperative_too_large": (stage_cooperative_too_large, 30),
    "precision": (stage_precision, 90),
    "compile_time": (stage_compile_time, 60),
    "bench": (stage_bench, 180),
    "bench_ptxas_defaults": (stage_bench_ptxas_defaults, 90),
    "alignment": (stage_alignment, 60),
}


def _child(name: str) -> int:
    """Run one stage in this (child) process and write its result where the parent said."""
    fn, _ = STAGES[name]
    result = fn()
    _write_result(result)
    return 0


def no_gpu_reason() -> str | None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 is set; unset it, the GPU check runs the compiled kernels"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible to torch {torch.__version__} (torch.cuda.is_available() is False)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json, summary.txt and the stage logs")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in the default order")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args(argv)
    if args.stage:
        return _child(args.stage)
    if args.out is None:
        parser.error("--out DIR is required")
    why = no_gpu_reason()
    if why:
        print(f"gpu_check: {why}", file=sys.stderr)
        return 2
    names = [n for n in args.stages.split(",") if n]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; valid: {', '.join(STAGES)}")
    # One Triton cache for the run (later stages reuse earlier compiles); the compile-time stage starts empty.
    empty = args.out / "triton-cache-empty"
    shutil.rmtree(empty, ignore_errors=True)
    caches = {n: args.out / ("triton-cache-empty" if n == "compile_time" else "triton-cache") for n in names}
    stages = [Stage(n, STAGES[n][1], env={"TRITON_CACHE_DIR": str(caches[n])}) for n in names]
    report = run_stages(stages, args.out, args.budget)
    print((args.out / "summary.txt").read_text(), end="")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
