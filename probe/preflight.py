"""Checks made before any training, each failing with one line that says what was wrong and what is valid.

Every entry point (``probe.train``, ``studies.memory_decay``, ``studies.zaremba``)
runs them on its arguments, so a mistake costs seconds, not a trained grid.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


class PreflightError(ValueError):
    """An argument that cannot work on this machine; the message is one line."""


DEVICE_TYPES = ("cpu", "cuda")


def check_device_name(name: str) -> torch.device:
    """``name`` parsed as a device this toolkit runs on (whether it exists here is ``check_device``)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise PreflightError(f"unknown device {name!r}; valid devices: cpu, cuda, cuda:N") from None
    if device.type not in DEVICE_TYPES:
        raise PreflightError(f"device {name!r} is not supported; valid devices: cpu, cuda, cuda:N")
    return device


def check_device(name: str) -> torch.device:
    """``name`` as a device that exists on this machine."""
    device = check_device_name(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PreflightError(f"device {name!r} requested but this machine has no usable CUDA GPU "
                                 f"(torch {torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise PreflightError(f"device {name!r} requested but this machine has {count} CUDA device(s); "
                                 f"valid: cuda:0 .. cuda:{count - 1}")
    return device


def check_backend(backend: str, device: str) -> None:
    """The recurrence backend can run on ``device`` (Triton needs CUDA, or the interpreter on CPU)."""
    from kernels.layer import canonical_backend

    try:
        backend = canonical_backend(backend)
    except ValueError as e:
        raise PreflightError(str(e)) from None
    if backend != "triton":
        return
    try:
        from kernels.triton_lstm import interpreted
    except ImportError:
        raise PreflightError("backend 'triton' needs the triton package (pip install triton); "
                             "use --backend auto or compiled") from None
    if torch.device(device).type == "cpu" and not interpreted():
        raise PreflightError("backend 'triton' runs on CPU only under the Triton interpreter (set TRITON_INTERPRET=1, "
                             "slow, for tests); use --backend auto or compiled on CPU, or --device cuda")


def check_folder(path: str | Path, what: str) -> Path:
    """``path`` is (or can be made) a folder this process can write to; it is created if missing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{what} {path} is a file, not a folder; pass a folder (created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PreflightError(f"{what} {path} cannot be created ({e.strerror or e}); pass a folder you can "
                             "write to") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise PreflightError(f"{what} {path} is not writable ({e.strerror or e}); pass a folder you can "
                             "write to") from None
    return path
