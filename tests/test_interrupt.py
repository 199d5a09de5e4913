"""SIGINT and SIGTERM stop a study (and probe.train) with one line, exit 130 / 143, leave no process behind,
and a rerun resumes to the same tests table as a run never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
STUDY = [sys.executable, "-m", "studies.memory_decay", "--preset", "smoke", "--no-progress",
         "--placements", "none", "zaremba:p=0.25", "naive:p=0.25,rec=0.25"]


def sigint_default() -> None:
    """Run in the child before exec: SIGINT at its default. A job started in the background (``nohup ... &``)
    inherits SIGINT as ignored, exec keeps it ignored, and Python then installs no KeyboardInterrupt handler,
    so the study would never see the signal these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(stat.parent.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier} - out
        out |= frontier
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def finished_runs(runs: Path) -> int:
    return len(list(runs.glob("*/result.json")))


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_study_stops_its_workers_says_one_line_and_resumes(tmp_path, signum, code):
    runs, out = tmp_path / "runs", tmp_path / "out"
    proc = subprocess.Popen([*STUDY, "--runs-dir", str(runs), "--out", str(out)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint_default)
    try:
        assert wait_for(lambda: len(children(proc.pid)) >= 2 and finished_runs(runs) >= 1, 120), "no worker started"
        workers = children(proc.pid)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        else:
            os.kill(proc.pid, signal.SIGTERM)  # the main process only
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted; rerun the same command to resume ("), err
    assert "Traceback" not in err, err
    assert wait_for(lambda: not any(alive(p) for p in workers), 10), "a worker outlived the study"

    resumed = subprocess.run([*STUDY, "--runs-dir", str(runs), "--out", str(out)], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    fresh = subprocess.run([*STUDY, "--runs-dir", str(tmp_path / "fresh"), "--out", str(tmp_path / "fresh_out")],
                           cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    name = "memory_decay_smoke_tests.csv"
    assert (out / name).read_bytes() == (tmp_path / "fresh_out" / name).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_probe_train_stops_with_one_line(tmp_path, signum, code):
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "probe.train", "--preset", "tiny", "--epochs", "50", "--runs-dir", str(runs),
            "--corpus", "synthetic:vocab=8,train=20000,valid=2000,test=2000", "--no-progress"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=sigint_default)
    try:
        assert wait_for(lambda: any(runs.glob("*/checkpoint.pt")), 120), "no epoch finished"
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted; rerun the same command to resume (") and "of 50 epochs finished" in last
    assert "Traceback" not in err
