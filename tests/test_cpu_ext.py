"""The compiled CPU loop: built once and shared, and a machine that cannot build it falls back in one line.

That it computes the reference's function, forward and every gradient for
every mask kind and scope, is tested in test_reference.py, which runs each
of its tests on both loops.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import cpu_ext
from kernels.reference import compiled_loop

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["-m", "probe.train", "--preset", "tiny", "--corpus", "synthetic:train=3000,valid=800,test=800",
         "--placement", "variational", "--epochs", "1", "--no-progress"]


def train_with(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    tmp_path.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, "PYTHONPATH": str(REPO), "DROPOUT_PROBE_RUNS": str(tmp_path / "runs"), **env}
    return subprocess.run([sys.executable, *TRAIN], cwd=tmp_path, env=full, capture_output=True, text=True,
                          timeout=600)


def notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if "compiled CPU recurrence is not used" in line]


@pytest.mark.parametrize("env, why", [
    ({cpu_ext.DISABLE_ENV: "1"}, "DROPOUT_PROBE_NO_CPP_EXT=1"),
    ({"CXX": "no-such-compiler-anywhere"}, "no C++ compiler ('no-such-compiler-anywhere' not found on PATH)"),
    ({"CXX": "false"}, "building it failed"),  # a compiler that fails: the build raises, training goes on
])
def test_without_the_compiled_loop_training_goes_on_after_one_line(tmp_path, env, why):
    proc = train_with(tmp_path, **env, **{cpu_ext.DIR_ENV: str(tmp_path / "ext")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = notices(proc.stderr)
    assert len(lines) == 1 and why in lines[0], proc.stderr[-2000:]
    assert "finished" in proc.stdout


def test_the_fallback_and_the_compiled_loop_train_the_same_run(tmp_path):
    if not cpu_ext.available():
        pytest.skip(f"the compiled CPU loop is not available here ({cpu_ext._state.get('why')})")
    compiled = train_with(tmp_path / "a")
    python = train_with(tmp_path / "b", **{cpu_ext.DISABLE_ENV: "1"})
    assert compiled.returncode == python.returncode == 0
    assert not notices(compiled.stderr)
    ppl = [float(out.stdout.split("test ppl ")[1].split(",")[0]) for out in (compiled, python)]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-4)  # the same function, rounded differently


def test_the_compiled_loop_serves_cpu_float32_and_float64_only():
    if not cpu_ext.available():
        pytest.skip(f"the compiled CPU loop is not available here ({cpu_ext._state.get('why')})")
    assert compiled_loop(torch.zeros(1)) and compiled_loop(torch.zeros(1, dtype=torch.float64))
    assert not compiled_loop(torch.zeros(1, dtype=torch.bfloat16))


def test_a_second_process_loads_the_build_instead_of_compiling(tmp_path):
    if not cpu_ext.available():
        pytest.skip(f"the compiled CPU loop is not available here ({cpu_ext._state.get('why')})")
    code = ("import time; t = time.perf_counter(); from kernels import cpu_ext; ok = cpu_ext.available(); "
            "print(ok, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=600)
    ok, seconds = out.stdout.split()
    assert ok == "True" and float(seconds) < 10, out.stdout  # a build takes tens of seconds; a load, a fraction


def test_rows_split_across_threads_compute_the_same_function(monkeypatch):
    """From H = 200 the compiled loop gives each thread a block of batch rows; the tests elsewhere run one thread."""
    if not cpu_ext.available():
        pytest.skip(f"the compiled CPU loop is not available here ({cpu_ext._state.get('why')})")
    import kernels.reference
    from kernels import lstm_layer_from_input

    T, B, H = 4, 5, 200
    g = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    x, w_ih, w_hh, bias = leaf(T, B, H), leaf(4 * H, H, scale=0.05), leaf(4 * H, H, scale=0.05), leaf(4 * H)
    h0, c0 = leaf(B, H), leaf(B, H)
    masks = {"recurrent": (torch.rand(T, B, H, generator=g, dtype=torch.float64) > 0.3).double() / 0.7,
             "cell": (torch.rand(B, H, generator=g, dtype=torch.float64) > 0.3).double() / 0.7,
             "zoneout_h": torch.rand(T, B, H, generator=g, dtype=torch.float64),
             "zoneout_c": torch.rand(B, H, generator=g, dtype=torch.float64)}
    threads = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(2)
        for compiled in (True, False):
            monkeypatch.setattr(kernels.reference, "USE_COMPILED", compiled)
            hs, (h, c) = lstm_layer_from_input(x, w_ih, bias, h0, c0, w_hh, **masks, backend="reference")
            loss = (hs * hs.detach().cos()).sum() + h.sum() + 2 * c.sum()
            results.append([hs, h, c, *torch.autograd.grad(loss, [x, w_ih, bias, h0, c0, w_hh])])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_cpu_speed_prints_one_row_per_shape_and_thread_count_with_every_mask_kind(capsys):
    from studies import cpu_speed

    cpu_speed.main(["--mask-kinds", "--rounds", "1", "--shapes", "5x2x8", "6x3x4", "--threads", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 5 x 2 x 8", "| 6 x 3 x 4"))]
    assert len(rows) == 2
    assert all(row.count("x (") == len(cpu_speed.MASK_KINDS) for row in rows)


def test_a_build_baton_left_by_a_killed_process_does_not_block_loading(tmp_path):
    # torch's FileBaton is a plain file: a process killed while holding it used to leave every later load
    # waiting forever. The loader now holds an flock first and clears a baton nobody can hold.
    from kernels import cpu_ext

    folder = cpu_ext.build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lock").write_text("")
    code = "from kernels import cpu_ext; print(cpu_ext.available())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
