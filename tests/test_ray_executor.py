"""Study grids on a real Ray cluster started on 127.0.0.1 by the test (no mocks)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from probe.runs.grid import run_grid
from probe.measure import run_all
from probe.placements import parse_placement
from probe.runs.ray_executor import ClusterError, connect
from studies.memory_decay import PRESETS, plan_cells

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")

SMOKE = PRESETS["smoke"]
PLAN = SMOKE.corpora[0]
# The smoke study's whole grid: every placement x its seeds.
CELLS = plan_cells(PLAN, [parse_placement(p).spec for p in SMOKE.placements], list(range(SMOKE.seeds)), "cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=180)
    address = f"127.0.0.1:{port}"
    try:
        connect(address)
        yield address
    finally:
        ray.shutdown()
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _tables(results) -> pd.DataFrame:
    frames = [r.measurements for r in results]
    ppl = pd.DataFrame([{"run_id": r.cell.run.run_id(), "valid": r.result.valid_ppl, "test": r.result.test_ppl}
                        for r in results])
    return pd.concat(frames, ignore_index=True), ppl


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    runs = tmp_path_factory.mktemp("local")
    return run_grid(CELLS, runs, run_all, jobs=2, threads=1, progress=False)


def test_ray_grid_equals_the_local_grid(cluster, local, tmp_path):
    remote = run_grid(CELLS, tmp_path, run_all, executor="ray", address=cluster, progress=False)
    assert [r.status for r in remote] == ["finished"] * len(CELLS)
    assert not any(r.cached for r in remote)
    for a, b in zip(_tables(local), _tables(remote)):
        pd.testing.assert_frame_equal(a, b)


def test_a_grid_started_locally_is_finished_on_ray_without_recomputing(cluster, local, tmp_path):
    half = run_grid(CELLS[:2], tmp_path, run_all, jobs=1, threads=1, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    full = run_grid(CELLS, tmp_path, run_all, executor="ray", address=cluster, progress=False)
    assert [r.cached for r in full] == [True, True] + [False] * (len(CELLS) - 2)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert [r.status for r in half] == ["finished"] * 2
    for a, b in zip(_tables(local), _tables(full)):
        pd.testing.assert_frame_equal(a, b)


def test_a_run_whose_worker_dies_is_retried_and_completed(cluster, local, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    markers = tmp_path / "markers"
    markers.mkdir()
    cells = CELLS[:2]
    fn = _with_marker_dir(str(markers))
    results = run_grid(cells, tmp_path / "runs", fn, executor="ray", address=cluster, progress=False)
    assert [r.status for r in results] == ["finished", "finished"]
    assert sorted(p.name for p in markers.iterdir()) == sorted(c.run.run_id() for c in cells)  # each died once
    for r, ref in zip(results, local[:2]):
        pd.testing.assert_frame_equal(r.measurements, ref.measurements)


def _with_marker_dir(path: str):
    def measure(model, corpus, config, ids):
        marker = Path(path) / ids["run_id"]
        if not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies mid-run
        return run_all(model, corpus, config, ids)

    return measure


def test_unreachable_cluster_and_impossible_requests_give_clear_errors(cluster, tmp_path):
    with pytest.raises(ClusterError, match="no Ray cluster answers at 127.0.0.1:1"):
        connect_fresh("127.0.0.1:1")
    gpu_cells = [dataclasses.replace(CELLS[0], run=dataclasses.replace(CELLS[0].run, device="cuda"))]
    with pytest.raises(ClusterError, match="no GPU"):
        run_grid(gpu_cells, tmp_path, run_all, executor="ray", address=cluster, progress=False)


def connect_fresh(address):
    from probe.runs.ray_executor import _reachable

    _reachable(address)
