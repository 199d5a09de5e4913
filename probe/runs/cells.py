"""Runs of a study: a cell (what to train and how to measure it), its cached result, and ``run_cell``.

A cell's results live in its run folder ``<runs_dir>/<run_id>/``
(``probe.runs.folder``): the training files written by ``probe.runs.train`` and one
``measure-<id>.csv`` per measurement configuration. Every file is recorded in
the folder's manifest when written and verified when read, so a result is
either whole and the one that was written, or it is moved aside and
recomputed: a damaged result or checkpoint is recomputed from the last good
state (a run resumes from its checkpoint, or trains afresh when the
checkpoint is what was damaged), a damaged measurement table reruns only
the measurement. Nothing damaged reaches a statistic.

``run_cell`` holds the folder's lock while it trains and measures, so two
processes (two studies on one runs folder, workers of a Ray cluster on a
shared one) never train the same run twice: the second waits for the lock,
then finds the result and reuses it. Results are typed: ``CellResult.result``
is a ``probe.runs.config.RunResult``.
"""

from __future__ import annotations

import dataclasses
import math
import hashlib
import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from probe.data.corpus import Corpus
from probe.data.registry import corpus_fingerprint, load_corpus
from probe.runs.folder import RESULT, RunFolder, measure_file
from probe.runs.config import RunConfig, RunResult, RunStatus
from probe.runs.train import train

__all__ = ["Cell", "CellResult", "MeasureFn", "RunFolder", "load_cached", "measure_file", "run_cell",
           "run_cell_safely", "run_folder"]

MeasureFn = Callable[[Any, Corpus, Any, dict], pd.DataFrame]

STATUSES = tuple(RunStatus)  # what a CellResult's status can be


@dataclass(frozen=True)
class Cell:
    """One grid cell: what to train, and how to measure it."""

    run: RunConfig
    measure: Any = None  # a frozen dataclass, or None for training only

    def measure_id(self) -> str:
        fields = dataclasses.asdict(self.measure) if self.measure is not None else None
        if fields is not None:  # measurements added later that are off leave earlier configurations' ids as they were
            fields = {k: v for k, v in fields.items() if v is not None or k not in ("perturbation", "natural_copies")}
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def ids(self) -> dict:
        """Identifiers every row of this cell's tables carries."""
        return {"placement": self.run.placement, "seed": self.run.seed, "run_id": self.run.run_id()}


@dataclass
class CellResult:
    cell: Cell
    status: RunStatus
    result: RunResult | None  # what the run reported (None if it failed)
    measurements: pd.DataFrame | None
    cached: bool  # read from disk, not computed by this call
    error: str = ""  # a failure in one line
    log: str | None = None  # where a failure's traceback was kept


def run_folder(runs_dir: str | Path, cell: Cell) -> RunFolder:
    return RunFolder(Path(runs_dir) / cell.run.run_id())


def load_cached(runs_dir: str | Path, cell: Cell, *, repair: bool = False) -> CellResult | None:
    """The cell's results if they are complete and verified on disk, else None.

    Every file of the run folder is checked against its manifest, not only
    the ones read: a run whose checkpoint, config or metrics were damaged is
    not complete, and ``run_cell`` recomputes it. ``repair``: move damaged
    files aside (only the holder of the folder's lock may).
    """
    folder = run_folder(runs_dir, cell)
    if not folder.path.is_dir():
        return None
    table_name = measure_file(cell.measure_id())
    bad = folder.files.verify_all(repair=repair)
    if any(name == table_name or not name.startswith("measure-") for name in bad):
        return None  # another measurement's table is its own cell's business
    if folder.foreign_config(cell.run) is not None:
        return None  # another configuration's folder: never reused (training says why)
    saved = folder.files.read_json(RESULT, repair=repair)
    if saved is None:
        return None
    try:
        result = RunResult.from_json(saved)
    except ValueError:
        return None  # a result.json of an older version: recomputed
    if result.config != cell.run:
        return None
    if result.status != RunStatus.FINISHED or cell.measure is None:
        return CellResult(cell, result.status, result, None, cached=True)
    table = folder.files.read_table(table_name, repair=repair)
    if table is None:
        return None
    return CellResult(cell, RunStatus.FINISHED, result, table, cached=True)


_CORPORA: dict[tuple, Corpus] = {}


def _corpus(config: RunConfig, data_dir) -> Corpus:
    """Corpora are loaded once per worker process."""
    key = (config.corpus, config.split, str(data_dir), corpus_fingerprint(config.corpus))  # text files: by content
    if key not in _CORPORA:
        _CORPORA[key] = load_corpus(config.corpus, data_dir, split=config.split)
    return _CORPORA[key]


def run_cell(cell: Cell, runs_dir: str | Path, measure_fn: MeasureFn | None, data_dir=None,
             threads: int | None = None, *, wait: bool = True) -> CellResult:
    """Train and measure one cell, or read it from disk when it is finished.

    Holds the run folder's lock throughout; if another process holds it, waits
    (``wait=True``) or returns status "busy" at once (``wait=False``).
    """
    folder = run_folder(runs_dir, cell)
    if not folder.acquire(wait=wait):
        return CellResult(cell, RunStatus.BUSY, None, None, cached=False)
    try:
        cached = load_cached(runs_dir, cell, repair=True)
        if cached is not None:
            return cached
        if threads:
            torch.set_num_threads(threads)
        corpus = _corpus(cell.run, data_dir)
        trained = train(cell.run, folder.path, corpus=corpus, progress=False)
        result = RunResult.from_json(folder.files.read_json(RESULT))
        if trained.status != RunStatus.FINISHED or cell.measure is None or measure_fn is None:
            return CellResult(cell, trained.status, result, None, cached=False)
        name = measure_file(cell.measure_id())
        table = folder.files.read_table(name, repair=True)  # still good when only the result was damaged
        if table is None:
            folder.files.write_table(name, measure_fn(trained.model, corpus, cell.measure, cell.ids()))
            # Read back what was written so fresh and cached cells give identical tables.
            table = folder.files.read_table(name)
        return CellResult(cell, RunStatus.FINISHED, result, table, cached=False)
    finally:
        folder.release()


def run_cell_safely(cell: Cell, runs_dir, measure_fn, data_dir=None, threads=None, wait: bool = True) -> CellResult:
    """``run_cell``, with a failure turned into a CellResult: one line, and the traceback in the run folder."""
    folder = run_folder(runs_dir, cell)
    try:
        result = run_cell(cell, runs_dir, measure_fn, data_dir, threads, wait=wait)
    except Exception as e:  # a failed cell is reported; the grid carries on
        log = folder.log_failure(traceback.format_exc())
        first = str(e).splitlines()[0] if str(e) else ""
        return CellResult(cell, RunStatus.FAILED, None, None, cached=False, error=f"{type(e).__name__}: {first}",
                          log=str(log) if log else None)
    if result.status != RunStatus.BUSY:
        folder.clear_failure()
    return result


# --- results as tidy rows ------------------------------------------------------------


def training_rows(result: CellResult) -> list[dict]:
    """Perplexities (at the selected epoch and the last one) and training curves of one run as tidy rows."""
    ids = result.cell.ids()
    r = result.result
    if r is None:  # a failed run: no numbers
        return []

    def row(measure, value, x_name="", x=math.nan):
        value = math.nan if value is None else value
        return dict(ids, measure=measure, x_name=x_name, x=x, value=value, layer=-1, mode="")

    rows = [row(key, getattr(r, key)) for key in ("valid_ppl", "test_ppl", "final_valid_ppl", "final_test_ppl")]
    rows += [row("selected_epoch", r.selected_epoch), row("train_seconds", r.seconds)]
    for e in r.epochs:
        rows.append(row("train_ppl", e["train_ppl"], "epoch", float(e["epoch"])))
        rows.append(row("valid_ppl_epoch", e["valid_ppl"], "epoch", float(e["epoch"])))
    return rows


def tidy_table(results: list[CellResult]) -> pd.DataFrame:
    """Every number the report shows, one row per placement x seed x measure x x-value."""
    frames = [pd.DataFrame([r for res in results for r in training_rows(res)])]
    frames += [res.measurements for res in results if res.measurements is not None]
    df = pd.concat(frames, ignore_index=True)
    df["seed"] = df["seed"].astype(int)
    return df
