"""The import contract in pyproject.toml ([tool.importlinter]): probe's layers import only downward,
kernels import nothing of the project; a new upward import fails it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (the test extra)")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([LINT, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def _copy_tree(dest: Path) -> Path:
    for package in ("probe", "kernels", "studies"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "csrc"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_import_contract_is_kept():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module, upward", [
    ("probe/data/corpus.py", "import probe.model.language_model"),  # data may not import model
    ("probe/runs/config.py", "import probe.report.text"),  # runs may not import report
    ("probe/placements.py", "import probe.data.corpus"),  # a leaf may not import a layer
    ("kernels/contract.py", "import probe.placements"),  # kernels import nothing of probe
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    tree = _copy_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{upward}  # deliberately upward\n")
    res = _lint(tree)
    assert res.returncode != 0, res.stdout
    assert "BROKEN" in res.stdout
