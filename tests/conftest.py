"""Shared test setup.

TRITON_INTERPRET must be set before triton is first imported anywhere in the
process, so it is set here, at collection time, whenever no GPU is present:
Triton kernels then run on the CPU through the interpreter (correctness
only; never time it).
"""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Test models are tiny: one intra-op thread is faster than two, and it keeps
# timings sane when other processes share the cores (OpenMP threads that spin
# at barriers while descheduled slow small ops down tenfold).
torch.set_num_threads(int(os.environ.get("DROPOUT_PROBE_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The corpora folder: $DROPOUT_PROBE_DATA, else ../shared/data beside the repo."""
    path = Path(os.environ.get("DROPOUT_PROBE_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"corpora folder {path} not found (set DROPOUT_PROBE_DATA)")
    return path
