"""The compiled CPU recurrence (``kernels/csrc/lstm_cpu.cpp``): built on first use, shared by every process.

The masked recurrence's serial loop is a few small operations per step; at
the sizes studies train on CPUs (H of 64 to 650, batch 20) Python's cost per
operation is most of its time. The C++ loop runs the same steps with one
product, two vectorised ATen calls and fused raw loops per step.

It is compiled with ``torch.utils.cpp_extension`` the first time it is
needed (about a minute, once per machine, torch version and source; the
result is kept in ``$DROPOUT_PROBE_EXT_DIR``, else the user cache), under
cpp_extension's own lock, so the worker processes of a study wait for one
build and then load it. Where it cannot be built (no C++ compiler, no
Python headers) or ``DROPOUT_PROBE_NO_CPP_EXT=1`` is set, ``available()`` is
False, the recurrence runs its Python loop, and one line says so once per
process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import sysconfig
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "lstm_cpu.cpp"
DISABLE_ENV = "DROPOUT_PROBE_NO_CPP_EXT"
DIR_ENV = "DROPOUT_PROBE_EXT_DIR"
# -march=native: the build is for the machine that runs it (its folder is keyed by the CPU's model and flags),
# so the fused loops use its vector width (AVX2 and FMA on the machines this was measured on). -fopenmp:
# at::parallel_for is inline OpenMP, which without it compiles to a serial loop.
FLAGS = ["-O3", "-march=native", "-fopenmp"]

_state: dict = {}  # "ok": bool, "why": str


def build_dir() -> Path:
    """Where the build lives: one folder per source, flags, torch and Python version."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + torch.__version__.encode()
                         + sys.version.encode() + _cpu_identity().encode()).hexdigest()[:12]
    root = os.environ.get(DIR_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dropout-probe"
    return Path(root) / "ext" / f"lstm_cpu-{key}"


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (Linux), so that a shared cache never serves a build for another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform

        return platform.processor() + platform.machine()
    keep = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(keep))


def _missing_piece() -> str | None:
    """Why the extension cannot be built here, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not found on PATH)"
    include = sysconfig.get_paths().get("include")
    if not include or not (Path(include) / "Python.h").exists():
        return "no Python headers (Python.h not found; install the python3-dev package)"
    return None


def available() -> bool:
    """Whether the compiled recurrence is loaded (building it on the first call)."""
    if "ok" not in _state:
        _state["ok"], _state["why"] = _load()
        if not _state["ok"]:
            print(f"dropout-probe: the compiled CPU recurrence is not used ({_state['why']}); running the Python "
                  "loop, which computes the same function more slowly", file=sys.stderr)
    return _state["ok"]


def _load() -> tuple[bool, str]:
    if os.environ.get(DISABLE_ENV) == "1":
        return False, f"{DISABLE_ENV}=1"
    if hasattr(torch.ops.dropout_probe, "lstm_fw"):
        return True, ""
    why = _missing_piece()
    if why is not None:
        return False, why
    try:
        from torch.utils import cpp_extension

        folder = build_dir()
        folder.mkdir(parents=True, exist_ok=True)
        with _held(folder / ".probe-lock"):
            # torch's build baton (a plain file) outlives a process killed while holding it, and then every
            # later load waits on it forever. Every loader holds the flock above first, so a baton found now
            # was left by a dead process.
            (folder / "lock").unlink(missing_ok=True)
            cpp_extension.load(name="dropout_probe_lstm_cpu", sources=[str(SOURCE)], extra_cflags=FLAGS,
                               extra_ldflags=["-fopenmp"], build_directory=str(folder), is_python_module=False,
                               verbose=False)
    except Exception as e:  # a failed build must never stop training: the Python loop computes the same
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        return False, f"building it failed: {first[:200]}"
    return True, ""


@contextlib.contextmanager
def _held(path: Path):
    """An flock on ``path`` while held: released by the kernel when its holder dies (a no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def usable(t: torch.Tensor) -> bool:
    """Whether the compiled loop serves a recurrence on ``t`` (CPU, float32 or float64)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and available()


def forward(gates, h0, c0, w_hh, packed, masks, bias=None):
    """hs, cs, tcs as ``kernels.reference._forward_loop`` on ``gates + bias``; ``gates`` is activated in place."""
    return torch.ops.dropout_probe.lstm_fw(gates, h0.contiguous(), c0.contiguous(), w_hh.contiguous(), packed, bias,
                                           *(None if m is None else m.contiguous() for m in masks))


def backward(d_hs, d_hT, d_cT, w_hh, packed_t, gates, cs, tcs, masks):
    """dZ, dh0, dc0 as ``kernels.reference._backward_loop``."""
    return torch.ops.dropout_probe.lstm_bw(d_hs.contiguous(), d_hT.contiguous(), d_cT.contiguous(),
                                           w_hh.contiguous(), packed_t, gates, cs, tcs,
                                           *(None if m is None else m.contiguous() for m in masks))
