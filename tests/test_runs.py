"""Runs you can trust: the manifest, damaged artifacts recomputed, locks, canonical run identity.

Every damage case copies one finished run folder, damages one artifact in
one way, and runs the cell again: the damaged file must be moved aside with
one line naming it, and the cell's results must equal the undamaged ones
(nothing damaged reaches a statistic), recomputing no more than the damage
requires.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import probe.runs.manifest
import probe.runs.train
from probe.runs.manifest import DAMAGED, MANIFEST, Manifest
from probe.runs.folder import CHECKPOINT, CONFIG, METRICS, RESULT, RunFolder, measure_file
from probe.runs.cells import Cell, load_cached, run_cell, run_folder
from probe.runs.config import RunConfig, preset
from probe.runs.train import evaluate, train
from probe.data.corpus import batchify

REPO = Path(__file__).resolve().parents[1]
CORPUS = "synthetic:train=5000,valid=1000,test=1000"


@dataclasses.dataclass(frozen=True)
class PplMeasure:
    """A measurement configuration for the tests: perplexity over the first n validation windows."""

    windows: int = 3


def ppl_measure(model, corpus, measure: PplMeasure, ids: dict) -> pd.DataFrame:
    ppl_measure.calls += 1
    data = batchify(corpus.valid, 4)[: measure.windows * 10 + 1]
    rows = [dict(ids, measure="valid_nll", x_name="windows", x=float(measure.windows), value=evaluate(model, data, 10))]
    rows.append(dict(ids, measure="note", x_name="", x=float("nan"), value=float("nan")))
    return pd.DataFrame(rows)


ppl_measure.calls = 0


def tiny(placement="zaremba", seed=0, **kw) -> RunConfig:
    return preset("tiny", corpus=CORPUS, placement=placement, seed=seed, epochs=3, **kw)


CELL = Cell(tiny(), PplMeasure())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished, measured cell: (runs_dir, its CellResult)."""
    runs = tmp_path_factory.mktemp("runs")
    return runs, run_cell(CELL, runs, ppl_measure)


@pytest.fixture
def count(monkeypatch):
    """Counts of epochs trained and measurements made during a test."""
    counts = {"epochs": 0}
    real = probe.runs.train._train_epoch

    def counting(*args, **kwargs):
        counts["epochs"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(probe.runs.train, "_train_epoch", counting)
    ppl_measure.calls = 0
    return counts


def same_result(a, b) -> None:
    assert a.status == b.status == "finished"
    timing = ("seconds", "words_per_sec")
    strip = lambda epochs: [{k: v for k, v in e.items() if k not in timing} for e in epochs]  # noqa: E731
    assert strip(a.result.epochs) == strip(b.result.epochs)
    for key in ("valid_ppl", "test_ppl", "final_valid_ppl", "final_test_ppl", "selected_epoch", "best_epoch"):
        assert getattr(a.result, key) == getattr(b.result, key), key
    pd.testing.assert_frame_equal(a.measurements, b.measurements)


# --- damage ---------------------------------------------------------------------


def cut_at_line(blob: bytes) -> bytes:
    lines = blob.splitlines(keepends=True)
    if len(lines) > 2:
        return b"".join(lines[: len(lines) // 2])
    return blob[: blob.index(b"\n") + 1] if b"\n" in blob[:-1] else blob[: len(blob) // 2]


def cut_mid_line(blob: bytes) -> bytes:
    lines = blob.splitlines(keepends=True)
    keep = b"".join(lines[: len(lines) // 2])
    return keep + lines[len(lines) // 2][:3] if len(lines) > 1 else blob[: len(blob) // 2]


def flip_byte(blob: bytes) -> bytes:
    i = len(blob) // 2
    return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]


def empty(blob: bytes) -> bytes:
    return b""


DAMAGES = {"cut at a line": cut_at_line, "cut mid-line": cut_mid_line, "flipped byte": flip_byte, "empty": empty}


def damage(path: Path, how) -> bytes:
    original = path.read_bytes()
    path.write_bytes(how(original))
    assert path.read_bytes() != original
    return original


# --- the manifest ----------------------------------------------------------------


def test_written_files_verify_and_tables_keep_their_row_count(tmp_path):
    m = Manifest(tmp_path)
    m.write_json("a.json", {"x": 1})
    m.write_table("t.csv", pd.DataFrame({"placement": ["none", "NA"], "value": [1.0, float("nan")]}))
    assert m.read_json("a.json") == {"x": 1}
    table = m.read_table("t.csv")
    assert list(table["placement"]) == ["none", "NA"] and table["value"].isna().tolist() == [False, True]
    assert m.entries()["t.csv"]["rows"] == 2
    assert m.verify_all() == []


@pytest.mark.parametrize("how", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_file_is_moved_aside_with_one_line_and_its_bytes_kept(tmp_path, capsys, how):
    m = Manifest(tmp_path)
    m.write("t.csv", "a,b\n1,2\n3,4\n5,6\n")
    original = damage(tmp_path / "t.csv", how)
    damaged_bytes = (tmp_path / "t.csv").read_bytes()
    assert m.read("t.csv") is None and (tmp_path / "t.csv").exists()  # without repair nothing moves
    assert m.read_table("t.csv", repair=True) is None
    assert not (tmp_path / "t.csv").exists()
    moved = list((tmp_path / DAMAGED).iterdir())
    assert len(moved) == 1 and moved[0].read_bytes() == damaged_bytes != original
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "t.csv") in err[0] and "recomputing" in err[0]


def test_without_a_manifest_no_file_is_trusted(tmp_path, capsys):
    m = Manifest(tmp_path)
    m.write_json("a.json", {"x": 1})
    (tmp_path / MANIFEST).unlink()
    assert m.verify_all() == ["a.json"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no manifest.json" in err[0] and "none of its 1 files" in err[0]


@pytest.mark.parametrize("how", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_manifest_trusts_nothing(tmp_path, how):
    m = Manifest(tmp_path)
    m.write_json("a.json", {"x": 1})
    m.write_json("b.json", {"y": 2})
    damage(tmp_path / MANIFEST, how)
    assert m.verify_all() == ["a.json", "b.json"]
    assert {p.name.split(".")[0] for p in (tmp_path / DAMAGED).iterdir()} == {"manifest", "a", "b"}


def test_a_write_killed_at_any_point_leaves_a_folder_that_verifies(tmp_path, monkeypatch):
    m = Manifest(tmp_path)
    m.write("f.txt", "one\n")
    # Killed before the file was replaced: the old content is still accepted.
    monkeypatch.setattr(probe.runs.manifest, "write_atomic", _fail_on("f.txt", probe.runs.manifest.write_atomic))
    with pytest.raises(KeyboardInterrupt):
        m.write("f.txt", "two\n")
    assert m.read("f.txt") == b"one\n"
    monkeypatch.undo()
    # Killed after the file was replaced but before the manifest settled: the new content is accepted.
    monkeypatch.setattr(Manifest, "_save", _fail_after_calls(2, Manifest._save))
    with pytest.raises(KeyboardInterrupt):
        m.write("f.txt", "three\n")
    monkeypatch.undo()
    assert m.read("f.txt") == b"three\n"
    m.write("f.txt", "four\n")  # and the next write settles it
    assert m.read("f.txt") == b"four\n" and "previous" not in m.entries()["f.txt"]


def _fail_on(name, real):
    def write(path, data):
        if Path(path).name == name:
            raise KeyboardInterrupt
        return real(path, data)
    return write


def _fail_after_calls(n, real):
    calls = {"n": 0}

    def save(self, files):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, files)
    return save


# --- damaged run artifacts are recomputed ---------------------------------------

# artifact -> (epochs trained, measurements made) when only it is damaged
RECOMPUTE = {
    CONFIG: (0, 0),  # rewritten from the cell's configuration; the run only re-evaluates
    METRICS: (0, 0),
    RESULT: (0, 0),  # re-evaluated from the checkpoint; the measurement table is still good
    CHECKPOINT: (3, 0),  # nothing to resume from: trained afresh, the same run bit for bit
    measure_file(CELL.measure_id()): (0, 1),  # only the measurement reruns
}


@pytest.mark.parametrize("how", DAMAGES.values(), ids=DAMAGES.keys())
@pytest.mark.parametrize("artifact", RECOMPUTE)
def test_a_damaged_artifact_is_recomputed_and_never_used(finished, tmp_path, count, capsys, artifact, how):
    runs, reference = finished
    shutil.copytree(runs, tmp_path / "runs")
    folder = run_folder(tmp_path / "runs", CELL)
    damage(folder.path / artifact, how)
    assert load_cached(tmp_path / "runs", CELL) is None  # the read-only scan never takes it as finished
    again = run_cell(CELL, tmp_path / "runs", ppl_measure)
    same_result(again, reference)
    assert (count["epochs"], ppl_measure.calls) == RECOMPUTE[artifact]
    err = capsys.readouterr().err
    assert f"damaged run file {folder.path / artifact}:" in err
    assert [p.name.rsplit(".", 1)[0] for p in (folder.path / DAMAGED).iterdir()] == [artifact]
    assert folder.files.verify_all(repair=False) == []  # the folder is whole again
    assert {CONFIG, METRICS, RESULT, CHECKPOINT} <= {p.name for p in folder.path.iterdir()}
    cached = run_cell(CELL, tmp_path / "runs", ppl_measure)
    assert cached.cached
    same_result(cached, reference)


def test_a_run_folder_without_manifest_is_recomputed_from_scratch(finished, tmp_path, count):
    runs, reference = finished
    shutil.copytree(runs, tmp_path / "runs")
    folder = run_folder(tmp_path / "runs", CELL)
    (folder.path / MANIFEST).unlink()
    again = run_cell(CELL, tmp_path / "runs", ppl_measure)
    same_result(again, reference)
    assert (count["epochs"], ppl_measure.calls) == (3, 1)
    assert len(list((folder.path / DAMAGED).iterdir())) == 5  # config, metrics, checkpoint, result, table


@pytest.mark.parametrize("how", DAMAGES.values(), ids=DAMAGES.keys())
def test_an_unfinished_run_with_a_damaged_checkpoint_restarts_and_ends_as_an_uninterrupted_one(
        finished, tmp_path, count, how):
    _, reference = finished
    runs = tmp_path / "runs"
    train(CELL.run, run_folder(runs, CELL).path, progress=False, stop_after_epoch=2)
    damage(run_folder(runs, CELL).path / CHECKPOINT, how)
    count["epochs"] = 0
    same_result(run_cell(CELL, runs, ppl_measure), reference)
    assert count["epochs"] == 3


def test_an_unreadable_result_json_names_no_parser_error(finished, tmp_path, capsys):
    """A result.json cut mid-value once stopped a whole study with 'Expecting ',' delimiter'."""
    runs, reference = finished
    shutil.copytree(runs, tmp_path / "runs")
    path = run_folder(tmp_path / "runs", CELL).path / RESULT
    path.write_text(path.read_text()[:40])
    same_result(run_cell(CELL, tmp_path / "runs", ppl_measure), reference)
    assert "Expecting" not in capsys.readouterr().err


# --- locks ---------------------------------------------------------------------------


HOLD = textwrap.dedent("""
    import sys, time
    from probe.runs.folder import RunFolder
    RunFolder(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    folder = RunFolder(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder.path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not folder.acquire(wait=False)  # really held by the other process
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not folder.acquire(wait=False):
            assert time.monotonic() < deadline, "the lock of a SIGKILLed process was never released"
            time.sleep(0.05)
        folder.release()
    finally:
        holder.kill()


GRID = textwrap.dedent("""
    import json, sys
    from probe.runs.grid import run_grid
    from probe.runs.cells import Cell
    from probe.runs.config import preset
    cells = [Cell(preset("tiny", corpus=%r, placement=p, seed=s, epochs=3))
             for p in ("none", "zaremba") for s in (0, 1)]
    results = run_grid(cells, sys.argv[1], None, jobs=1, threads=1, progress=False)
    print(json.dumps({r.cell.run.run_id(): [r.status, r.cached, r.result.test_ppl] for r in results}))
""" % CORPUS)


def test_two_processes_on_one_runs_folder_train_each_run_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", GRID, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    a, b = (json.loads(out) for out, _ in outs)
    assert a.keys() == b.keys() and len(a) == 4
    for run_id in a:
        assert a[run_id][0] == b[run_id][0] == "finished"
        assert a[run_id][2] == b[run_id][2]  # one result, read by both
        assert sorted([a[run_id][1], b[run_id][1]]) == [False, True], f"run {run_id} trained twice or never"


# --- canonical identity ------------------------------------------------------------


def test_two_spellings_of_one_placement_are_one_run():
    short, full = tiny("zaremba"), tiny("zaremba:p=0.5")
    assert short == full and short.run_id() == full.run_id() and short.placement == "zaremba:p=0.5"
    assert tiny("variational").run_id() == tiny("variational:rec=0.3,p=0.5,emb=0").run_id()
    assert tiny("zaremba").run_id() != tiny("zaremba:p=0.4").run_id()


def test_a_folder_of_another_configuration_is_refused_in_one_place(finished, tmp_path):
    runs, _ = finished
    shutil.copytree(runs, tmp_path / "runs")
    other = dataclasses.replace(CELL.run, seed=7)
    shutil.move(run_folder(tmp_path / "runs", CELL).path, tmp_path / "runs" / other.run_id())
    assert load_cached(tmp_path / "runs", Cell(other, PplMeasure())) is None
    with pytest.raises(ValueError, match="holds a run of a different configuration"):
        run_cell(Cell(other, PplMeasure()), tmp_path / "runs", ppl_measure)


def test_probe_measure_refuses_a_damaged_checkpoint_of_a_run_folder(finished, tmp_path):
    from probe.runs.checkpoints import CheckpointError, load_checkpoint

    runs, _ = finished
    shutil.copytree(runs, tmp_path / "runs")
    folder = run_folder(tmp_path / "runs", CELL)
    load_checkpoint(folder.path)  # whole: loads
    damage(folder.path / CHECKPOINT, flip_byte)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(folder.path)
