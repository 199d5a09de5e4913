"""User errors cost one line and no training; failed runs make a study exit non-zero and never blank a report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import probe.runs.cells
from probe.preflight import PreflightError, check_backend, check_device, check_folder
from studies import memory_decay, zaremba

REPO = Path(__file__).resolve().parents[1]
# Two cells of the smoke preset, one worker (so a monkeypatched train reaches it).
SMOKE = ["--preset", "smoke", "--placements", "none", "zaremba:p=0.25", "--seeds", "1", "--jobs", "1",
         "--no-progress"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- the checks themselves ---------------------------------------------------------


@pytest.mark.parametrize("name", ["nonsense", "cuda:x", "tpu", ""])
def test_unknown_devices_are_named_with_the_valid_ones(name):
    with pytest.raises(PreflightError, match="valid devices: cpu, cuda, cuda:N"):
        check_device(name)


@NO_CUDA
def test_cuda_without_a_gpu_says_to_use_the_cpu():
    with pytest.raises(PreflightError, match="no usable CUDA GPU.*--device cpu"):
        check_device("cuda")


def test_a_file_or_an_unwritable_place_is_no_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PreflightError, match="is a file, not a folder"):
        check_folder(tmp_path / "f", "--out")
    with pytest.raises(PreflightError, match="cannot be created"):
        check_folder(tmp_path / "f" / "sub", "--out")
    assert check_folder(tmp_path / "new" / "deeper", "--out").is_dir()


def test_backends_are_checked_against_the_device():
    with pytest.raises(PreflightError, match="valid backends: auto, spec, compiled, native, triton"):
        check_backend("bogus", "cpu")
    check_backend("reference", "cpu")


# --- entry points: one line, exit 2, before any training ------------------------------


def study_error(capsys, main, argv) -> str:
    assert main(argv) == 2
    return one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv, message", [
    (["--device", "nonsense"], "unknown device 'nonsense'"),
    (["--placements", "none", "bogus"], "bogus"),
    (["--jobs", "0"], "--jobs must be at least 1"),
])
def test_memory_decay_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, message):
    line = study_error(capsys, memory_decay.main, [*SMOKE, "--out", str(tmp_path), *argv])
    assert message in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint.pt"))


@NO_CUDA
@pytest.mark.parametrize("main", [memory_decay.main, zaremba.main])
def test_studies_refuse_cuda_without_a_gpu(tmp_path, capsys, main):
    extra = SMOKE if main is memory_decay.main else ["--sizes", "small", "--split", "substitute"]
    assert "no usable CUDA GPU" in study_error(capsys, main, [*extra, "--out", str(tmp_path), "--device", "cuda"])


@pytest.mark.parametrize("main", [memory_decay.main, zaremba.main])
@pytest.mark.parametrize("option", ["--out", "--runs-dir"])
def test_studies_refuse_a_file_as_output_folder_before_training(tmp_path, capsys, main, option, shared_data):
    (tmp_path / "file").write_text("not a folder")
    extra = SMOKE if main is memory_decay.main else ["--sizes", "small", "--split", "substitute",
                                                       "--data-dir", str(shared_data)]
    argv = [*extra, "--out", str(tmp_path / "out"), option, str(tmp_path / "file")]
    if option == "--out":
        argv = [*extra, "--out", str(tmp_path / "file")]
    assert "is a file, not a folder" in study_error(capsys, main, argv)


def test_a_missing_corpus_hint_offers_only_options_the_study_has(tmp_path, capsys):
    line_and_rest = memory_decay.main([*SMOKE, "--out", str(tmp_path), "--corpus", "ptb", "--data-dir",
                                       str(tmp_path / "nodata")])
    assert line_and_rest == 2
    err = capsys.readouterr().err
    assert "--download" in err and "Traceback" not in err
    args = memory_decay.build_parser().parse_args([*SMOKE, "--download"])  # the option it suggests exists
    assert args.download


def cli(*args, tmp_path: Path, env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "probe.train", "--no-progress", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_probe_train_refuses_bad_arguments_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (["--device", "nonsense"], "unknown device"),
        (["--backend", "bogus"], "unknown backend 'bogus'"),
        (["--backend", "triton"], "runs on CPU only under the Triton interpreter"),
        (["--runs-dir", str(tmp_path / "file")], "is a file, not a folder"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no usable CUDA GPU"))
    for argv, message in cases:
        proc = cli(*argv, tmp_path=tmp_path)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert message in one_error_line(proc.stderr), argv
    assert not (tmp_path / "runs").exists()


# --- failed runs ---------------------------------------------------------------------


def failing_train(placements):
    real = probe.runs.cells.train

    def train(config, *args, **kwargs):
        if placements is None or config.placement in placements:
            raise PermissionError(13, "Permission denied", str(args[0]))
        return real(config, *args, **kwargs)
    return train


def test_a_study_whose_every_run_fails_exits_non_zero_and_keeps_the_old_report(tmp_path, capsys, monkeypatch):
    report = tmp_path / "memory_decay_smoke.html"
    report.write_text("the previous report")
    monkeypatch.setattr(probe.runs.cells, "train", failing_train(None))  # the runs folder turned read-only
    assert memory_decay.main([*SMOKE, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if " failed: PermissionError" in line]
    assert len(failed) == 2
    for line in failed:
        log = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
        assert "Traceback" in log.read_text() and "PermissionError" in log.read_text()
    assert "2 of 2 runs failed" in err and "no report written" in err
    assert "(the existing report is kept)" in err
    assert report.read_text() == "the previous report"


def test_one_failed_run_still_gives_a_report_and_a_non_zero_exit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(probe.runs.cells, "train", failing_train({"none"}))
    assert memory_decay.main([*SMOKE, "--out", str(tmp_path), "--reference", "zaremba"]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "Traceback" not in err
    assert (tmp_path / "memory_decay_smoke.html").exists()
    # The failure is not cached: the same command retries it, and reuses the finished run.
    monkeypatch.undo()
    assert memory_decay.main([*SMOKE, "--out", str(tmp_path), "--reference", "zaremba"]) == 0
    log = next((tmp_path / "runs").rglob("error.log"), None)
    assert log is None  # a run that later succeeded keeps no stale traceback
