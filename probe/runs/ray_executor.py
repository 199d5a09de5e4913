"""Run grid cells as Ray tasks on an existing cluster (``run_grid(..., executor="ray")``).

Each cell becomes one task that trains and measures it exactly as a local
worker would (``probe.runs.cells.run_cell``), writing into the same run cache:
the cache must be a folder every Ray node sees at the same path (the
local disk for a one-machine cluster, a shared filesystem otherwise).
A task asks for a GPU when its run's device is CUDA.

A task whose worker process dies is retried by Ray (``max_retries``); since
every file a run writes is written atomically and training resumes from its
last epoch checkpoint, a retried run neither loses nor duplicates work, and
a run that still fails is reported as failed, never half-written.

    pip install -e ".[ray]"
    ray start --head --port 6379            # on the head node
    python -m studies.memory_decay --executor ray --address HEAD_IP:6379
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

from probe.runs.cells import CellResult, run_cell_safely
from probe.runs.config import RunStatus

# A worker killed mid-run (out of memory, a preempted node) is tried again this many times.
MAX_RETRIES = 2


class ClusterError(RuntimeError):
    """The Ray cluster cannot be reached, or cannot run what the grid asks for."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "--executor ray needs the Ray package: pip install -e \".[ray]\" (or pip install ray)"
        ) from None
    return ray


def connect(address: str | None):
    """Connect to the cluster at ``address`` (host:port), with an error that says what to do."""
    ray = _ray()
    if not address:
        raise ClusterError("--executor ray needs --address HOST:PORT of a running cluster (start one with "
                           "`ray start --head --port 6379`)")
    if ray.is_initialized():
        return ray
    _reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(
            f"could not connect to a Ray cluster at {address}: {e}. Check the address and that the cluster "
            "is running (`ray status --address` on the head node), or start one with `ray start --head`."
        ) from None
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes: ray.init retries an unreachable address for a long time."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address must be HOST:PORT (e.g. 127.0.0.1:6379); got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(
            f"no Ray cluster answers at {address} ({e}); check the address, or start one with "
            f"`ray start --head --port {port}`"
        ) from None


def _check_resources(ray, cells) -> None:
    need_gpu = [c for c in cells if c.run.device.startswith("cuda")]
    gpus = ray.cluster_resources().get("GPU", 0)
    if need_gpu and gpus < 1:
        raise ClusterError(
            f"{len(need_gpu)} runs ask for device {need_gpu[0].run.device!r} but the cluster has no GPU "
            f"(resources: {ray.cluster_resources()}); use --device cpu or add GPU nodes"
        )


def run_on_ray(cells, index_groups, runs_dir, measure_fn, data_dir, *, address: str | None, threads: int,
               on_result: Callable, wait: bool = True) -> None:
    """Submit one task per cell; call ``on_result(indices, CellResult)`` as each finishes.

    ``wait``: whether a task whose run another worker holds waits for it, or returns "busy"."""
    ray = connect(address)
    _check_resources(ray, cells)
    runs_dir = str(Path(runs_dir).resolve())
    task = ray.remote(run_cell_safely)
    pending = {}
    for cell, indices in zip(cells, index_groups):
        gpu = 1 if cell.run.device.startswith("cuda") else 0
        ref = task.options(num_cpus=threads, num_gpus=gpu, max_retries=MAX_RETRIES, retry_exceptions=False).remote(
            cell, runs_dir, measure_fn, data_dir, threads, wait
        )
        pending[ref] = (cell, indices)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        cell, indices = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as e:  # the task's worker died more often than it may be retried
            result = CellResult(cell, RunStatus.FAILED, None, None, cached=False,
                                error=f"Ray task failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        on_result(indices, result)
