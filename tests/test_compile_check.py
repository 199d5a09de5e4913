"""kernels/compile_check.py: the launch variants compile for sm_90 without spilling registers; no GPU needed.

The check compiles with the installed Triton's bundled ptxas, in processes
of its own without TRITON_INTERPRET (which conftest.py sets for this
process when there is no GPU). The full check (every variant, about ten
minutes on two cores) is ``python -m kernels.compile_check``; the test
runs the --quick subset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from kernels.tools import compile_check


def _compiler_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="module")
def compiler_env():
    """The environment to compile in, or a skip naming why this Triton cannot."""
    code = "from kernels.tools.compile_check import _preflight; print(_preflight() or 'ok')"
    env = _compiler_env()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    why = proc.stdout.strip() if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]
    if why != "ok":
        pytest.skip(f"no Triton that can compile for sm_90 here: {why}")
    return env


def test_the_variants_cover_every_choice_the_launcher_makes():
    vs = compile_check.variants()
    assert {(v.dtype, v.precision) for v in vs} == set(compile_check.DTYPES)
    assert {v.persistent for v in vs} == {False, True}
    assert {v.B for v in vs} == {20, 16, 128} and {v.H for v in vs} == {200, 650, 768, 1500}
    assert {v.masks for v in vs} >= {"none", "variational", "naive", "semeniuta", "rnndrop", "zoneout"}
    assert {(v.kernel, v.save) for v in vs} == {("fw", True), ("fw", False), ("bw", None)}
    assert len(vs) == 5 * 2 * len(compile_check.MASK_SETS) * 3 * 4 * 3


def test_a_spill_or_a_compile_error_is_a_problem():
    v = compile_check.variants()[0]
    clean = dict(regs=100, spill_stores=0, spill_loads=0, stack=0, shared=1024, compile_s=1.0)
    assert compile_check._row(v, {}, "k", clean)["problems"] == []
    assert compile_check._row(v, {}, "k", dict(clean, spill_stores=4, spill_loads=4))["problems"]
    assert compile_check._row(v, {}, "k", dict(clean, shared=compile_check.SM90_MAX_SHARED + 1))["problems"]
    assert compile_check._row(v, {}, "k", {"error": "CompilationError: ..."})["problems"]


def test_the_quick_subset_compiles_without_spills(compiler_env, tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "kernels.tools.compile_check", "--quick", "--json", str(out)],
                          env=compiler_env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.exists(), proc.stderr[-3000:]
    rows = json.loads(out.read_text())["variants"]
    assert len(rows) == len(compile_check.variants(**compile_check.QUICK))
    failing = [f"{r['label']}: {r['problems']}" for r in rows if r["problems"]]
    assert not failing, "\n".join(failing)
    assert all(r["regs"] > 0 and r["spill_stores"] == 0 and r["spill_loads"] == 0 for r in rows)
    assert proc.returncode == 0, proc.stderr[-3000:]


SAME_AS_TRITON = textwrap.dedent(
    """
    from kernels.tools import compile_check as cc
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
    except ImportError as e:
        raise SystemExit(f"skip: {e}")
    backend = make_backend(GPUTarget("cuda", 90, 32))
    checked = 0
    for v in (cc.Variant("fw", "float32", "tf32", False, "naive", True, 20, 650),
              cc.Variant("fw", "float16", None, True, "variational", False, 16, 768),
              cc.Variant("bw", "bfloat16", None, False, "zoneout", None, 128, 200),
              cc.Variant("bw", "float64", None, True, "all", None, 20, 1500)):
        _, calls = cc._launches(v)
        for kernel, args, consts in calls[:2]:
            signature, constexprs, attrs, options = cc.specialise(kernel, args, consts)
            binder = create_function_from_signature(kernel.signature, kernel.params, backend)
            bound, spec, opts = binder(*args, **consts)
            _, t_sig, t_consts, t_attrs = kernel._pack_args(backend, consts, bound, spec, opts)
            assert t_sig == signature, (v, t_sig, signature)
            assert {kernel.arg_names[k[0]]: x for k, x in t_consts.items()} == constexprs, v
            assert {k: a for k, a in t_attrs.items() if a} == attrs, (v, t_attrs, attrs)  # [] marks nothing
            checked += 1
    print("checked", checked)
    """
)


def test_the_specialisation_is_the_one_tritons_jit_derives(compiler_env):
    """compile_check derives signature, constants and attributes itself; Triton's (internal) binder must agree."""
    proc = subprocess.run([sys.executable, "-c", SAME_AS_TRITON], env=compiler_env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if "skip:" in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0 and "checked 6" in proc.stdout, proc.stderr[-3000:]  # 2 + 1 + 2 + 1 launches
