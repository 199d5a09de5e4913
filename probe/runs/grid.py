"""Grids of runs: which cells to run, where, and in what order (``run_grid``).

What one cell is, how its results are cached, verified and locked, lives in
``probe.runs.cells``; this module only schedules. Cells already finished on disk
are skipped; an interrupted grid restarted with the same arguments resumes
(a half-trained run from its last epoch checkpoint). Two grids sharing a
runs folder never train one run twice: a cell whose run another process is
training is put back and taken up after every other cell, when it is
usually finished and is simply read.

Cells are independent, so they run in worker processes (``jobs``); each
worker gets an equal share of the cores for torch's intra-op threads.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from probe.runs.cells import Cell, CellResult, MeasureFn, load_cached, run_cell_safely
from probe.runs.config import RunStatus
from probe.signals import sigint_ignored

EXECUTORS = ("local", "ray")


class GridInterrupted(KeyboardInterrupt):
    """A grid stopped by SIGINT or SIGTERM after its workers were stopped; finished runs are on disk."""

    def __init__(self, finished: int, total: int, signum: int):
        super().__init__(f"{finished} of {total} runs finished")
        self.finished, self.total, self.signum = finished, total, signum

    @property
    def line(self) -> str:
        return f"interrupted; rerun the same command to resume ({self.finished} of {self.total} runs finished)"


def run_grid(
    cells: list[Cell],
    runs_dir: str | Path,
    measure_fn: MeasureFn | None = None,
    *,
    jobs: int = 1,
    data_dir=None,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
    threads: int | None = None,
) -> list[CellResult]:
    """Run every cell (skipping finished ones) and return results in cell order.

    ``executor="local"``: ``jobs`` worker processes on this machine.
    ``executor="ray"``: one Ray task per cell on the cluster at ``address``
    (see ``probe.runs.ray_executor``), writing into the same run cache, so either
    executor can resume a grid the other started. ``threads``: torch threads
    per run (default: this machine's cores shared among ``jobs``; 1 on Ray).
    Results do not depend on the executor when ``threads`` is the same.
    A failed cell's CellResult has status "failed", its error in one line and
    its traceback's path (``log``).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; valid executors: {', '.join(EXECUTORS)}")
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    results: dict[int, CellResult] = {}
    todo: dict[tuple[str, str], list[int]] = {}  # one execution per distinct cell, never two
    for i, cell in enumerate(cells):
        cached = load_cached(runs_dir, cell)  # read-only: repairs are made under the run's lock
        if cached is not None:
            results[i] = cached
        else:
            todo.setdefault((cell.run.run_id(), cell.measure_id()), []).append(i)
    bar = tqdm(total=len(cells), initial=len(results), desc="runs", unit="run", disable=not progress)
    busy: list[list[int]] = []

    def done(indices: list[int], result: CellResult) -> None:
        if result.status == RunStatus.BUSY:
            busy.append(indices)
            return
        for i in indices:
            results[i] = result
        bar.update(len(indices))

    groups = list(todo.values())
    try:
        # First pass: skip runs another process holds. Second: wait for them, then reuse what it wrote.
        for wait in (False, True):
            _execute(cells, groups, runs_dir, measure_fn, data_dir, jobs=jobs, executor=executor, address=address,
                     threads=threads, wait=wait, on_result=done)
            groups, busy = busy, []
            if not groups:
                break
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under probe.signals.handled_signals
        signum = getattr(e, "signum", 2)
    else:
        signum = None
    bar.close()
    if signum is not None:
        # Raised here, not in the except block: the first exception's frames (and the stopped pool's queues
        # and semaphores they hold) are freed first, so nothing is reported leaked at exit.
        gc.collect()
        finished = sum(r.status == RunStatus.FINISHED for r in results.values())
        raise GridInterrupted(finished, len(cells), signum)
    return [results[i] for i in range(len(cells))]


def _execute(cells, groups, runs_dir, measure_fn, data_dir, *, jobs, executor, address, threads, wait, on_result):
    """Run the first cell of every index group; ``on_result(indices, CellResult)`` as each ends."""
    if not groups:
        return
    if executor == "ray":
        from probe.runs.ray_executor import run_on_ray

        run_on_ray([cells[g[0]] for g in groups], groups, runs_dir, measure_fn, data_dir,
                   address=address, threads=threads or 1, wait=wait, on_result=on_result)
    elif jobs == 1 or len(groups) <= 1:
        for g in groups:
            on_result(g, run_cell_safely(cells[g[0]], runs_dir, measure_fn, data_dir, threads, wait))
    else:
        threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        # spawn, not fork: forked children inherit torch's thread pools in a broken state.
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker)
        try:
            with sigint_ignored():  # workers start ignoring SIGINT: the parent stops them
                futures = {
                    pool.submit(run_cell_safely, cells[g[0]], str(runs_dir), measure_fn, data_dir, threads, wait): g
                    for g in groups
                }
            for fut in as_completed(futures):
                on_result(futures[fut], fut.result())
        except BaseException:
            _stop_workers(pool)
            raise
        pool.shutdown(wait=True)


def _init_worker() -> None:
    """A worker's tqdm takes a thread lock, not its default multiprocessing one: a worker stopped by the parent
    would otherwise leave that semaphore for the resource tracker to report at exit."""
    tqdm.set_lock(threading.RLock())


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate every worker now and wait for it: a killed run leaves its last checkpoint, its lock is
    released by the kernel, and every file it wrote was written atomically."""
    processes = list((pool._processes or {}).values())  # the executor has no public handle on them
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    pool.shutdown(wait=True)  # the manager thread sees the workers gone and closes its queues (and semaphores)
