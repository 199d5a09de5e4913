"""scripts/gpu_check.py without a GPU: the one-line refusal, the stage machinery, the report's shape.

The stages themselves need a CUDA GPU; their shared correctness code also
runs here on CPU tensors under the Triton interpreter (conftest.py sets
TRITON_INTERPRET=1 when no GPU is present).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_exits_with_one_line_and_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    assert "no CUDA GPU" in output
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_under_the_interpreter_it_refuses_in_one_line(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and len(output.splitlines()) == 1, output
    assert "TRITON_INTERPRET" in output


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_hanging_stage_is_reported_as_a_hang_and_the_run_carries_on(gpu_check, tmp_path):
    writes = f"""
        import json, os
        json.dump({{"ok": True, "lines": ["fine"], "kernels": [{{"kernel": "k", "n_regs": 40, "n_spills": 0}}]}},
                  open(os.environ["{gpu_check.RESULT_ENV}"], "w"))
    """
    stages = [
        gpu_check.Stage("sleeps", 2, cmd=_python("import time; print('waiting', flush=True); time.sleep(120)")),
        gpu_check.Stage("crashes", 30, cmd=_python("raise SystemExit('broken on purpose')")),
        gpu_check.Stage("fails", 30, cmd=_python(writes.replace('"ok": True', '"ok": False'))),
        gpu_check.Stage("passes", 30, cmd=_python(writes)),
    ]
    report = gpu_check.run_stages(stages, tmp_path, budget_s=120)
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status == {"sleeps": "hang", "crashes": "error", "fails": "fail", "passes": "ok"}
    sleeps = report["stages"][0]
    assert 2 <= sleeps["seconds"] < 30 and "waiting" in sleeps["log_tail"]
    assert "broken on purpose" in report["stages"][1]["log_tail"]
    assert report["ok"] is False

    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(on_disk) >= {"command", "started", "budget_s", "seconds", "ok", "stages"}
    for entry in on_disk["stages"]:
        assert set(entry) >= {"name", "status", "seconds", "timeout_s", "result"}
    assert on_disk["stages"][3]["result"]["lines"] == ["fine"]
    text = (tmp_path / "summary.txt").read_text()
    assert "FAIL" in text and "- sleeps: hang" in text and "registers 40-40, 0 with spills" in text


def test_stages_that_no_longer_fit_the_budget_are_skipped(gpu_check, tmp_path):
    stages = [gpu_check.Stage("slow", 3, cmd=_python("import time; time.sleep(60)")),
              gpu_check.Stage("later", 30, cmd=_python("pass"))]  # fmt: skip
    report = gpu_check.run_stages(stages, tmp_path, budget_s=5)
    assert [s["status"] for s in report["stages"]] == ["hang", "skipped"]


def test_every_stage_named_in_the_table_exists_and_the_timeouts_fit_the_budget(gpu_check):
    assert list(gpu_check.STAGES)[0] == "environment"
    assert all(callable(fn) and timeout > 0 for fn, timeout in gpu_check.STAGES.values())
    assert gpu_check.DEFAULT_BUDGET_S <= 8 * 60 - 30  # the whole run inside 8 minutes


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs this as a stage")
def test_the_correctness_code_runs_on_cpu_under_the_interpreter(gpu_check, monkeypatch):
    """The stages' comparison code on tiny shapes: every mask setting, both modes, poisoned outputs."""
    from kernels import triton_lstm

    if not triton_lstm.interpreted():
        pytest.skip("needs the Triton interpreter")
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(triton_lstm, "POISON_OUTPUTS", True)
    result = gpu_check._correctness(3, 2, 20, tol=1e-4)
    assert result["ok"], result["failures"]
    # H = 20 is not a multiple of 16: the settings of ALIGN_CHECKED also run with padded rows.
    assert len(result["rows"]) == 2 * len(gpu_check._mask_settings()) + 2 * len(gpu_check.ALIGN_CHECKED)
    assert {r["masks"] for r in result["rows"] if r["align"]} == set(gpu_check.ALIGN_CHECKED)
    assert sum("persistent_vs_per_step" in r for r in result["rows"]) == len(gpu_check._mask_settings())
    assert result["kernels"] == []  # interpreted kernels have no compiled binaries


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs this as a stage")
def test_the_dropin_correctness_code_runs_on_cpu_under_the_interpreter(gpu_check, monkeypatch):
    """The drop-in stage's comparison: packed, bidirectional, mixed lengths, Triton against the float64 spec."""
    from kernels import triton_lstm

    if not triton_lstm.interpreted():
        pytest.skip("needs the Triton interpreter")
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    result = gpu_check._dropin_correctness(4, 3, 3, 4, tol=1e-4)
    assert result["ok"], result["failures"]
    assert len(result["rows"]) == 3 and all(r["output"] < 1e-4 for r in result["rows"])
