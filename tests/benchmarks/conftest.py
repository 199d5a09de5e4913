"""Benchmark setup: time with every CPU core, whatever the unit tests use.

tests/conftest.py pins torch to one intra-op thread for the tiny test
models; a benchmark of oneDNN's LSTM against ours should use the machine
as a user would. The thread count is restored afterwards, so collecting
benchmarks beside the unit tests changes nothing for them.
"""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def all_cpu_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DROPOUT_PROBE_BENCH_THREADS", os.cpu_count() or 1)))
    yield
    torch.set_num_threads(before)
