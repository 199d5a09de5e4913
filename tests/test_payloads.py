"""No file a user is handed runs code: a checkpoint carrying a pickled payload is refused, never executed,
wherever a checkpoint is read (a study rerun, probe.train, probe.measure on a folder with and without its
manifest, and on a plain file)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probe.measure.__main__ import main as measure_main
from probe.runs.config import preset
from probe.runs.folder import CHECKPOINT, RunFolder
from probe.runs.manifest import MANIFEST
from probe.runs.train import train

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "synthetic:vocab=8,train=3000,valid=800,test=800,lags=2+4,cue=0.3,mark=1"
CONFIG = preset("tiny", corpus=CORPUS, epochs=2, hidden_size=8, emb_size=8, placement="zaremba:p=0.1")


class Payload:
    """Unpickling this runs ``exec``: it writes ``flag``. The tests assert that the flag never appears."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return exec, (f"open({str(self.flag)!r}, 'w').write('the payload ran')",)


def payload_bytes(flag: Path, *, toolkit_like: bool = True) -> bytes:
    buf = io.BytesIO()
    obj = {"config": {"corpus": CORPUS}, "model": Payload(flag)} if toolkit_like else Payload(flag)
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder after one of its two epochs: resuming it reads its checkpoint."""
    path = tmp_path / "runs" / CONFIG.run_id()
    train(CONFIG, path, progress=False, stop_after_epoch=1)
    return path


def plant(run_dir: Path, flag: Path, *, manifest: bool) -> None:
    """Swap a payload in as the run's checkpoint: recorded in its manifest (as an attacker who recomputes
    the unkeyed sha256 would), or with the manifest deleted."""
    RunFolder(run_dir).files.write(CHECKPOINT, payload_bytes(flag))
    if not manifest:
        (run_dir / MANIFEST).unlink()


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest updated", "manifest deleted"])
def test_training_over_a_planted_checkpoint_never_runs_it_and_retrains(run_dir, tmp_path, manifest, capsys):
    flag = tmp_path / "ran"
    plant(run_dir, flag, manifest=manifest)
    result = train(CONFIG, run_dir, progress=False)
    assert not flag.exists()
    assert result.status == "finished" and len(result.epochs) == 2  # recomputed from scratch
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line says what was moved aside and recomputed


def test_probe_train_cli_over_a_planted_checkpoint_never_runs_it(run_dir, tmp_path):
    flag = tmp_path / "ran"
    plant(run_dir, flag, manifest=True)
    args = ["--preset", "tiny", "--corpus", CORPUS, "--epochs", "2", "--hidden-size", "8", "--emb-size", "8",
            "--placement", "zaremba:p=0.1", "--runs-dir", str(run_dir.parent), "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "probe.train", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert not flag.exists()


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest updated", "manifest deleted"])
def test_probe_measure_refuses_a_planted_checkpoint_in_a_run_folder(run_dir, tmp_path, manifest, capsys):
    flag = tmp_path / "ran"
    plant(run_dir, flag, manifest=manifest)
    code = measure_main(["--checkpoint", str(run_dir), "--out", str(tmp_path / "out")])
    assert code == 2 and not flag.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err


@pytest.mark.parametrize("toolkit_like", [True, False], ids=["toolkit-shaped dict", "bare object"])
def test_probe_measure_refuses_a_payload_file_naming_the_global(tmp_path, toolkit_like, capsys):
    flag = tmp_path / "ran"
    path = tmp_path / "model.pt"
    path.write_bytes(payload_bytes(flag, toolkit_like=toolkit_like))
    code = measure_main(["--checkpoint", str(path), "--out", str(tmp_path / "out")])
    assert code == 2 and not flag.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"names the global (__builtin__|builtins)\.exec", err[0]), err


def test_a_study_rerun_over_a_planted_checkpoint_never_runs_it(tmp_path):
    flag = tmp_path / "ran"
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = [sys.executable, "-m", "studies.memory_decay", "--preset", "smoke", "--placements", "none",
            "--seeds", "1", "--runs-dir", str(runs), "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    plant(run_dir, flag, manifest=True)
    for table in run_dir.glob("measure-*.csv"):  # the rerun must measure again, so it reads the checkpoint
        RunFolder(run_dir).files.move_aside(table.name, "removed by the test", quiet=True)
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert not flag.exists()


def test_the_toolkits_own_checkpoint_loads_weights_only(run_dir):
    blob = (run_dir / CHECKPOINT).read_bytes()
    ckpt = torch.load(io.BytesIO(blob), weights_only=True)
    assert {"config", "epoch", "model", "best", "optimizer", "rng"} <= set(ckpt)
