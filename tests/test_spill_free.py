"""kernels/spill_free.py and the register candidates: each launch gets the first options whose kernel does not spill.

The real choice needs a CUDA device (it loads compiled binaries to read
their spills); here a fake kernel stands in for Triton's JIT function, and
the compile check's version of the rule runs with a fake compiler.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kernels import spill_free
from kernels.tools import compile_check

triton_lstm = pytest.importorskip("kernels.triton_lstm", reason="triton is not installed")

L3 = {"ptx_options": "--register-usage-level=3"}
WIDE = {**L3, "maxnreg": 255}
CANDIDATES = [L3, WIDE, {}]


class FakeKernel:
    """Compiles to a binary whose spills depend on the register options; counts the compiles."""

    def __init__(self, spills_by_maxnreg: dict, name="fake_kernel"):
        self.__name__ = name
        self.arg_names = ["x_ptr", "t0", "B"]  # t0 is not specialised on, as in the real kernels
        self.params = [SimpleNamespace(is_constexpr=False, do_not_specialize=name == "t0") for name in self.arg_names]
        self.spills = spills_by_maxnreg  # (ptx_options, maxnreg) -> bytes of local memory
        self.compiles, self.cache = [], []

    def warmup(self, *args, grid, **options):
        key = (options.get("ptx_options"), options.get("maxnreg"))
        self.compiles.append(key)
        self.cache.append(FakeBinary(self.spills[key]))  # the JIT's cache holds every binary it compiled
        return self.cache[-1]


class FakeBinary:
    def __init__(self, n_spills):
        self.n_spills = n_spills

    def _init_handles(self):
        pass


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(spill_free, "_CHOSEN", {})


def args_for(B=20, t0=0):
    return (torch.zeros(4), t0, B)


def test_the_first_candidate_without_spills_is_chosen_once_per_specialisation():
    k = FakeKernel({(L3["ptx_options"], None): 4, (L3["ptx_options"], 255): 0, (None, None): 0})
    consts = {"BLOCK_B": 16, "num_warps": 4, **L3}
    got = spill_free.choose(k, (8,), args_for(), consts, CANDIDATES)
    assert got == {"BLOCK_B": 16, "num_warps": 4, **WIDE}
    assert k.compiles == [(L3["ptx_options"], None), (L3["ptx_options"], 255)]  # stops at the first clean one
    # Later launches of the same specialisation (t0 is not specialised on) compile nothing more.
    assert spill_free.choose(k, (8,), args_for(t0=7), consts, CANDIDATES) == got
    assert len(k.compiles) == 2
    # Another specialisation (B divisible by 16) is chosen for afresh.
    spill_free.choose(k, (8,), args_for(B=32), consts, CANDIDATES)
    assert len(k.compiles) == 4


def test_a_clean_first_candidate_compiles_once_and_rejects_nothing():
    k = FakeKernel({(L3["ptx_options"], None): 0})
    assert spill_free.choose(k, (8,), args_for(), dict(L3), CANDIDATES) == L3
    assert k.compiles == [(L3["ptx_options"], None)]


def test_when_every_candidate_spills_the_first_is_kept_and_the_others_are_reported():
    k = FakeKernel({(L3["ptx_options"], None): 4, (L3["ptx_options"], 255): 8, (None, None): 12})
    assert spill_free.choose(k, (8,), args_for(), dict(L3), CANDIDATES) == L3
    assert len(k.compiles) == 3
    assert sorted(b.n_spills for b in spill_free.REJECTED) == [8, 12]
    assert spill_free.first_without_spills([4, 8, 12]) == 0
    assert spill_free.first_without_spills([None, 4, 0, 0]) == 2  # a failed compile (None) is not clean


def test_one_candidate_means_no_compile_here():
    k = FakeKernel({})
    assert spill_free.choose(k, (8,), args_for(), {"BLOCK_B": 16, **L3}, [{}]) == {"BLOCK_B": 16}
    assert k.compiles == []


def test_register_candidates_in_order_and_only_where_there_is_a_choice(monkeypatch):
    monkeypatch.delenv(triton_lstm.PTXAS_DEFAULTS_ENV, raising=False)
    monkeypatch.delenv("PTXAS_OPTIONS", raising=False)
    monkeypatch.setattr(triton_lstm, "interpreted", lambda: False)
    monkeypatch.setattr(triton_lstm, "_cuda_option", lambda name: True)
    monkeypatch.setattr(triton_lstm, "_ptxas_knows_usage_level", lambda: True)
    level = {"ptx_options": triton_lstm.PTXAS_OPTIONS}
    wide = {**level, "maxnreg": 255}
    assert triton_lstm.register_candidates(False) == [level, wide, {}]
    assert triton_lstm.register_candidates(True, fma_products=True) == [level, wide, {}]
    assert triton_lstm.register_candidates(True) == [wide, {}]  # the first already has maxnreg
    monkeypatch.setenv(triton_lstm.PTXAS_DEFAULTS_ENV, "1")
    assert triton_lstm.register_candidates(True) == [{}]
    monkeypatch.delenv(triton_lstm.PTXAS_DEFAULTS_ENV)
    monkeypatch.setattr(triton_lstm, "interpreted", lambda: True)
    assert triton_lstm.register_candidates(False) == [{}]


@pytest.fixture
def one_kernel_per_variant(monkeypatch):
    """The check's rule without Triton: each variant needs one kernel of its own (the launcher is not run)."""
    monkeypatch.setattr(compile_check, "_distinct_launches", lambda v: (triton_lstm.LaunchConfig(
        16, 16, 32, 4, 2, v.persistent, "tf32"), {f"key {v.label}": (None, None)}))  # fmt: skip


def test_the_compile_check_applies_the_same_rule(one_kernel_per_variant):
    """A kernel that spills with the first candidate is compiled with the next; the row reports the clean one."""
    v_spilling, v_clean = compile_check.variants(masks=("all",), B=(20,), H=(650,), dtypes=(("float32", "tf32"),))[:2]
    calls = []

    def fake_compile(v, key, candidate):
        calls.append((v.label, candidate))
        spills = 4 if (v == v_spilling and candidate == 0) else 0
        result = dict(regs=100 + candidate, spill_stores=spills, spill_loads=spills, stack=spills, shared=1024,
                      compile_s=0.1)  # fmt: skip
        return {**result, "options": {"maxnreg": [None, 255, None][candidate]}, "n_candidates": 3}

    rows = compile_check.run_check([v_spilling, v_clean], jobs=1, compile_fn=fake_compile)
    by_label = {r["label"]: r for r in rows}
    spilled, clean = by_label[v_spilling.label], by_label[v_clean.label]
    assert sorted(calls) == sorted([(v_spilling.label, 0), (v_clean.label, 0), (v_spilling.label, 1)])
    assert spilled["problems"] == [] and spilled["regs"] == 101 and spilled["options"] == {"maxnreg": 255}
    assert [t["spill_stores"] for t in spilled["tried"]] == [4, 0]
    assert len(clean["tried"]) == 1 and clean["problems"] == []


def test_the_compile_check_fails_a_kernel_that_spills_with_every_candidate(one_kernel_per_variant):
    v = compile_check.variants(masks=("none",), B=(20,), H=(650,), dtypes=(("float32", "tf32"),))[0]

    def always_spills(v, key, candidate):
        return dict(regs=255, spill_stores=8, spill_loads=8, stack=8, shared=1024, compile_s=0.1, options={},
                    n_candidates=2)  # fmt: skip

    (row,) = compile_check.run_check([v], jobs=1, compile_fn=always_spills)
    assert len(row["tried"]) == 2 and row["problems"] == ["spills 8 B stores, 8 B loads"]
