"""Grids of runs: each cell trained and measured once, cached on disk, resumable.

A cell is a training configuration (``RunConfig``) plus a measurement
configuration. Its results live in the run folder ``<runs_dir>/<run_id>/``
(``run_id`` is a hash of the full RunConfig): the training files written by
``probe.train`` and one ``measure-<hash>.csv`` per measurement configuration.
Every file is written atomically, so a cell is either finished or not; an
interrupted grid restarted with the same arguments skips finished cells,
resumes a half-trained run from its last epoch checkpoint, and never mistakes
another configuration's results for its own.

Cells are independent, so they run in worker processes (``jobs``); each
worker gets an equal share of the cores for torch's intra-op threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import multiprocessing as mp

import pandas as pd
import torch
from tqdm.auto import tqdm

from .corpus import Corpus
from .datasets import corpus_fingerprint, load_corpus
from .files import write_atomic
from .train import RunConfig, train

MeasureFn = Callable[[Any, Corpus, Any, dict], pd.DataFrame]


@dataclass(frozen=True)
class Cell:
    """One grid cell: what to train, and how to measure it."""

    run: RunConfig
    measure: Any = None  # a frozen dataclass, or None for training only

    def measure_id(self) -> str:
        blob = json.dumps(dataclasses.asdict(self.measure) if self.measure is not None else None, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def ids(self) -> dict:
        """Identifiers every row of this cell's tables carries."""
        return {"placement": self.run.placement, "seed": self.run.seed, "run_id": self.run.run_id()}


@dataclass
class CellResult:
    cell: Cell
    status: str  # finished, diverged or failed
    result: dict  # the run's result.json (empty if it failed)
    measurements: pd.DataFrame | None
    cached: bool
    error: str = ""


def run_dir_of(runs_dir: str | Path, cell: Cell) -> Path:
    return Path(runs_dir) / cell.run.run_id()


def _measure_path(runs_dir, cell: Cell) -> Path:
    return run_dir_of(runs_dir, cell) / f"measure-{cell.measure_id()}.csv"


def load_cached(runs_dir: str | Path, cell: Cell) -> CellResult | None:
    """The cell's results if they are complete on disk, else None."""
    result_path = run_dir_of(runs_dir, cell) / "result.json"
    if not result_path.exists():
        return None
    result = json.loads(result_path.read_text())
    if result.get("config") != json.loads(json.dumps(dataclasses.asdict(cell.run))):
        return None  # another configuration's run: never reuse it
    if result["status"] != "finished" or cell.measure is None:
        return CellResult(cell, result["status"], result, None, cached=True)
    mpath = _measure_path(runs_dir, cell)
    if not mpath.exists():
        return None
    return CellResult(cell, "finished", result, _read_measurements(mpath), cached=True)


def _read_measurements(path: Path) -> pd.DataFrame:
    # Only empty fields are missing values: a placement or mode is never parsed as NaN.
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


_CORPORA: dict[tuple, Corpus] = {}


def _corpus(config: RunConfig, data_dir) -> Corpus:
    """Corpora are loaded once per worker process."""
    key = (config.corpus, config.split, str(data_dir), corpus_fingerprint(config.corpus))  # text files: by content
    if key not in _CORPORA:
        _CORPORA[key] = load_corpus(config.corpus, data_dir, split=config.split)
    return _CORPORA[key]


def run_cell(cell: Cell, runs_dir: str | Path, measure_fn: MeasureFn | None, data_dir=None, threads: int | None = None):
    """Train and measure one cell (or read it from disk when it is finished)."""
    cached = load_cached(runs_dir, cell)
    if cached is not None:
        return cached
    if threads:
        torch.set_num_threads(threads)
    corpus = _corpus(cell.run, data_dir)
    result = train(cell.run, run_dir_of(runs_dir, cell), corpus=corpus, progress=False)
    summary = json.loads((run_dir_of(runs_dir, cell) / "result.json").read_text())
    if result.status != "finished" or cell.measure is None or measure_fn is None:
        return CellResult(cell, result.status, summary, None, cached=False)
    table = measure_fn(result.model, corpus, cell.measure, cell.ids())
    write_atomic(_measure_path(runs_dir, cell), table.to_csv(index=False))
    # Read back what was written so fresh and cached cells give identical tables.
    return CellResult(cell, "finished", summary, _read_measurements(_measure_path(runs_dir, cell)), cached=False)


def _run_cell_safely(cell, runs_dir, measure_fn, data_dir, threads) -> CellResult:
    try:
        return run_cell(cell, runs_dir, measure_fn, data_dir, threads)
    except Exception:  # a failed cell is reported; the grid carries on
        return CellResult(cell, "failed", {}, None, cached=False, error=traceback.format_exc())


EXECUTORS = ("local", "ray")


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
    (see ``probe.ray_executor``), writing into the same run cache, so either
    executor can resume a grid the other started. ``threads``: torch threads
    per run (default: this machine's cores shared among ``jobs``; 1 on Ray).
    Results do not depend on the executor when ``threads`` is the same.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; valid executors: {', '.join(EXECUTORS)}")
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    results: dict[int, CellResult] = {}
    todo: dict[tuple[str, str], list[int]] = {}  # one execution per distinct cell, never two
    for i, cell in enumerate(cells):
        cached = load_cached(runs_dir, cell)
        if cached is not None:
            results[i] = cached
        else:
            todo.setdefault((cell.run.run_id(), cell.measure_id()), []).append(i)
    bar = tqdm(total=len(cells), initial=len(results), desc="runs", unit="run", disable=not progress)

    def done(indices: list[int], result: CellResult) -> None:
        for i in indices:
            results[i] = result
        bar.update(len(indices))

    if executor == "ray":
        from .ray_executor import run_on_ray

        firsts = [idx[0] for idx in todo.values()]
        run_on_ray([cells[i] for i in firsts], list(todo.values()), runs_dir, measure_fn, data_dir,
                   address=address, threads=threads or 1, on_result=done)
    elif jobs == 1 or len(todo) <= 1:
        for indices in todo.values():
            done(indices, _run_cell_safely(cells[indices[0]], runs_dir, measure_fn, data_dir, threads))
    else:
        threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        # spawn, not fork: forked children inherit torch's thread pools in a broken state.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {
                pool.submit(_run_cell_safely, cells[idx[0]], str(runs_dir), measure_fn, data_dir, threads): idx
                for idx in todo.values()
            }
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
    bar.close()
    return [results[i] for i in range(len(cells))]
