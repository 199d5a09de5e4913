"""kernels: the reference recurrence against torch.nn.LSTM and the loop spec; oneDNN GEMMs; input checks.

``lstm_layer_loop`` is the spec (docs/recurrence.md writes its equations out);
``lstm_layer_compiled`` is the fast whole-sequence autograd Function every
CPU run uses. Without masks both must be ``torch.nn.LSTM``; with masks the
fast one must be the spec, forward and backward.
"""

from __future__ import annotations

import itertools
import re
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.reference
from kernels import cpu_ext
from kernels import MASK_NAMES, RecurrentMasks, gemm, lstm_layer, lstm_layer_from_input
from kernels.reference import lstm_layer_loop, lstm_layer_compiled

ZONEOUT = ("zoneout_h", "zoneout_c")


@pytest.fixture(autouse=True, params=["compiled loop", "python loop"])
def serial_loop(request, monkeypatch):
    """Every test here runs on both implementations of the serial loop (kernels.cpu_ext, and Python)."""
    compiled = request.param == "compiled loop"
    if compiled and not cpu_ext.available():
        pytest.skip(f"the compiled CPU loop is not available here ({cpu_ext._state.get('why')})")
    monkeypatch.setattr(kernels.reference, "USE_COMPILED", compiled)
    return compiled
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def make_inputs(T, B, H, dtype=torch.float64, seed=0):
    """gx, h0, c0, w_hh as leaves that require grad; W_hh scaled so gates are not saturated."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    return rand(T, B, 4 * H), rand(B, H), rand(B, H), rand(4 * H, H, scale=H**-0.5)


def make_mask(name, scope, T, B, H, dtype=torch.float64, seed=1, rate=0.4, fractional=False):
    """A dropout mask (0 or 1/(1-p)), or a zoneout mask (1 keeps; in [0, 1] when fractional)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, H) if scope == "sequence" else (T, B, H)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    if name in ZONEOUT:
        mask = u if fractional else (u < rate).double()
    else:
        mask = (u >= rate).double() / (1 - rate)
    return mask.to(dtype)


def outputs_and_grads(fn, inputs, seed=7):
    """Outputs of fn(*inputs) and the gradients of a random projection of all three outputs."""
    hs, (h_T, c_T) = fn(*inputs)
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in (hs, h_T, c_T)]
    loss = sum((t * w).sum() for t, w in zip((hs, h_T, c_T), weights))
    grads = torch.autograd.grad(loss, [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad])
    return (hs.detach(), h_T.detach(), c_T.detach()), grads


def assert_same_function(fn_a, fn_b, inputs, tol):
    out_a, grad_a = outputs_and_grads(fn_a, inputs)
    out_b, grad_b = outputs_and_grads(fn_b, inputs)
    for name, a, b in zip(("hs", "h_T", "c_T"), out_a, out_b):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(("gx", "h0", "c0", "w_hh"), grad_a, grad_b):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"d{name}: {m}")


def reference(masks):
    return lambda gx, h0, c0, w: lstm_layer_compiled(gx, h0, c0, w, masks)


def loop(masks):
    return lambda gx, h0, c0, w: lstm_layer_loop(gx, h0, c0, w, masks)


# --- against torch.nn.LSTM ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,I,H", [(7, 3, 5, 6), (1, 1, 2, 3), (12, 4, 9, 17)])
def test_unmasked_layer_equals_torch_nn_lstm(dtype, T, B, I, H):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H).to(dtype)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(B, H, dtype=dtype, requires_grad=True)
    c0 = torch.randn(B, H, dtype=dtype, requires_grad=True)
    ours = {name: p.detach().clone().requires_grad_() for name, p in lstm.named_parameters()}

    def torch_lstm(x, h0, c0):
        hs, (h_T, c_T) = lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
        return hs, (h_T[0], c_T[0])

    def kernel(x, h0, c0):
        # nn.LSTM has two biases; our gx carries their sum: gx = x W_ih^T + b_ih + b_hh.
        gx = F.linear(x, ours["weight_ih_l0"], ours["bias_ih_l0"] + ours["bias_hh_l0"])
        return lstm_layer(gx, h0, c0, ours["weight_hh_l0"], backend="reference")

    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    theirs_out, theirs_grads = _grads(torch_lstm, (x, h0, c0), list(lstm.parameters()))
    ours_out, ours_grads = _grads(kernel, (x, h0, c0), [ours[n] for n, _ in lstm.named_parameters()])
    for name, a, b in zip(("hs", "h_T", "c_T"), ours_out, theirs_out):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    names = ["x", "h0", "c0"] + [n for n, _ in lstm.named_parameters()]
    for name, a, b in zip(names, ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"d{name}: {m}")


def _grads(fn, inputs, params):
    hs, (h_T, c_T) = fn(*inputs)
    g = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)).sum() for t in (hs, h_T, c_T))
    grads = torch.autograd.grad(loss, list(inputs) + params)
    return (hs.detach(), h_T.detach(), c_T.detach()), grads


# --- the fast reference against the loop spec -------------------------------


@pytest.mark.parametrize("scope", ["sequence", "step"])
@pytest.mark.parametrize("name", MASK_NAMES)
def test_reference_equals_spec_for_each_mask(name, scope):
    T, B, H = 5, 3, 4
    inputs = make_inputs(T, B, H)
    masks = RecurrentMasks(**{name: make_mask(name, scope, T, B, H)})
    assert_same_function(reference(masks), loop(masks), inputs, TOL[torch.float64])


@pytest.mark.parametrize("name", ZONEOUT)
def test_reference_equals_spec_for_fractional_zoneout(name):
    """Zoneout at evaluation holds the keep probability, not 0/1."""
    T, B, H = 5, 3, 4
    inputs = make_inputs(T, B, H)
    masks = RecurrentMasks(**{name: make_mask(name, "sequence", T, B, H, fractional=True)})
    assert_same_function(reference(masks), loop(masks), inputs, TOL[torch.float64])


@pytest.mark.parametrize("scopes", list(itertools.product(["sequence", "step"], repeat=len(MASK_NAMES))))
def test_reference_equals_spec_with_every_mask_at_once(scopes):
    T, B, H = 4, 2, 3
    inputs = make_inputs(T, B, H, seed=2)
    masks = RecurrentMasks(
        **{name: make_mask(name, scope, T, B, H, seed=10 + i) for i, (name, scope) in enumerate(zip(MASK_NAMES, scopes))}
    )
    assert_same_function(reference(masks), loop(masks), inputs, TOL[torch.float64])


@st.composite
def masked_problems(draw):
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 4))
    H = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**16))
    masks = {}
    for i, name in enumerate(MASK_NAMES):
        scope = draw(st.sampled_from([None, "sequence", "step"]))
        if scope is not None:
            rate = draw(st.sampled_from([0.0, 0.3, 0.7]))
            fractional = name in ZONEOUT and draw(st.booleans())
            masks[name] = make_mask(name, scope, T, B, H, seed=seed + i + 1, rate=rate, fractional=fractional)
    return T, B, H, seed, RecurrentMasks(**masks)


@settings(max_examples=80, deadline=None)
@given(masked_problems())
def test_reference_equals_spec_on_random_shapes_and_masks(problem):
    T, B, H, seed, masks = problem
    inputs = make_inputs(T, B, H, seed=seed)
    assert_same_function(reference(masks), loop(masks), inputs, TOL[torch.float64])


@pytest.mark.parametrize("scope", ["sequence", "step"])
def test_reference_equals_spec_in_float32(scope):
    T, B, H = 9, 5, 16
    inputs = make_inputs(T, B, H, dtype=torch.float32)
    masks = RecurrentMasks(**{n: make_mask(n, scope, T, B, H, dtype=torch.float32, seed=i) for i, n in enumerate(MASK_NAMES)})
    assert_same_function(reference(masks), loop(masks), inputs, TOL[torch.float32])


def test_reference_handles_outputs_that_take_no_gradient():
    """Only hs feeds the loss (h_T and c_T unused): the backward still matches the spec."""
    T, B, H = 4, 2, 3
    gx, h0, c0, w = make_inputs(T, B, H)
    masks = RecurrentMasks(recurrent=make_mask("recurrent", "step", T, B, H))
    got = torch.autograd.grad(lstm_layer_compiled(gx, h0, c0, w, masks)[0].sum(), [gx, h0, c0, w])
    want = torch.autograd.grad(lstm_layer_loop(gx, h0, c0, w, masks)[0].sum(), [gx, h0, c0, w])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_reference_does_not_modify_its_inputs():
    T, B, H = 4, 2, 3
    inputs = make_inputs(T, B, H)
    masks = RecurrentMasks(**{n: make_mask(n, "step", T, B, H, seed=i) for i, n in enumerate(MASK_NAMES)})
    before = [t.detach().clone() for t in (*inputs, *masks)]
    outputs_and_grads(reference(masks), inputs)
    for a, b in zip(before, (*inputs, *masks)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fractional", [False, True])
def test_gradcheck_with_every_mask(fractional):
    T, B, H = 3, 2, 3
    gx, h0, c0, w = make_inputs(T, B, H, seed=4)
    scopes = ("step", "sequence", "step", "sequence", "step")
    masks = {
        n: make_mask(n, s, T, B, H, seed=20 + i, fractional=fractional)
        for i, (n, s) in enumerate(zip(MASK_NAMES, scopes))
    }

    def fn(gx, h0, c0, w):
        hs, (h_T, c_T) = lstm_layer(gx, h0, c0, w, **masks, backend="reference")
        return hs, h_T, c_T

    assert torch.autograd.gradcheck(fn, (gx, h0, c0, w), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_without_masks():
    inputs = make_inputs(4, 3, 2, seed=5)
    assert torch.autograd.gradcheck(
        lambda *a: (lambda hs, s: (hs, *s))(*lstm_layer(*a, backend="reference")), inputs, eps=1e-6, atol=1e-7
    )


# --- backends ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_auto_backend_on_cpu_is_the_reference(dtype):
    T, B, H = 5, 3, 4
    gx, h0, c0, w = make_inputs(T, B, H, dtype=dtype)
    masks = {n: make_mask(n, "step", T, B, H, dtype=dtype, seed=i) for i, n in enumerate(MASK_NAMES)}
    auto = outputs_and_grads(lambda *a: lstm_layer(*a, **masks, backend="auto"), (gx, h0, c0, w))
    ref = outputs_and_grads(lambda *a: lstm_layer(*a, **masks, backend="reference"), (gx, h0, c0, w))
    for a, b in zip(auto[0] + auto[1], ref[0] + ref[1]):
        assert torch.equal(a, b)


def test_default_backend_is_auto():
    T, B, H = 3, 2, 4
    gx, h0, c0, w = make_inputs(T, B, H)
    with torch.no_grad():
        assert torch.equal(lstm_layer(gx, h0, c0, w)[0], lstm_layer(gx, h0, c0, w, backend="reference")[0])


# --- input validation ---------------------------------------------------------


def _valid(T=3, B=2, H=4, dtype=torch.float32):
    return dict(
        gx=torch.zeros(T, B, 4 * H, dtype=dtype),
        h0=torch.zeros(B, H, dtype=dtype),
        c0=torch.zeros(B, H, dtype=dtype),
        w_hh=torch.zeros(4 * H, H, dtype=dtype),
    )


def _call(**changes):
    args = _valid()
    masks = {k: changes.pop(k) for k in list(changes) if k in MASK_NAMES}
    args.update(changes)
    backend = args.pop("backend", "reference")
    return lstm_layer(args["gx"], args["h0"], args["c0"], args["w_hh"], **masks, backend=backend)


@pytest.mark.parametrize(
    "changes,expected",
    [
        (dict(gx=torch.zeros(3, 16)), ["gx must be (T, B, 4H)", "(3, 16)"]),
        (dict(gx=torch.zeros(3, 2, 4, 16)), ["gx must be (T, B, 4H)"]),
        (dict(gx=torch.zeros(3, 2, 15)), ["gx must be (T, B, 4H)", "(3, 2, 15)"]),
        (dict(gx=torch.zeros(0, 2, 16)), ["T, B, H >= 1"]),
        (dict(gx=torch.zeros(3, 2, 16, dtype=torch.int64)), ["floating-point", "torch.int64"]),
        (dict(h0=torch.zeros(2, 5)), ["h0 must have shape (2, 4)", "got (2, 5)"]),
        (dict(c0=torch.zeros(3, 4)), ["c0 must have shape (2, 4)", "got (3, 4)"]),
        (dict(w_hh=torch.zeros(4, 16)), ["w_hh must have shape (16, 4)", "got (4, 16)"]),
        (dict(h0=torch.zeros(2, 4, dtype=torch.float64)), ["h0 is torch.float64", "gx is torch.float32"]),
        (dict(w_hh=torch.zeros(16, 4, dtype=torch.float64)), ["w_hh is torch.float64"]),
        (dict(c0=torch.zeros(2, 4, device="meta")), ["c0", "on meta", "on cpu", "device"]),
        (dict(recurrent=torch.ones(2, 4, dtype=torch.float64)), ["recurrent is torch.float64"]),
        (dict(zoneout_c=torch.ones(2, 4, device="meta")), ["zoneout_c", "on meta"]),
        (dict(cell=torch.ones(3, 2, 5)), ["mask 'cell'", "(B, H) = (2, 4)", "(T, B, H) = (3, 2, 4)", "(3, 2, 5)"]),
        (dict(zoneout_h=torch.ones(3, 4)), ["mask 'zoneout_h'", "got (3, 4)"]),
        (dict(cell_update=torch.ones(4)), ["mask 'cell_update'", "got (4,)"]),
        (dict(recurrent=torch.ones(1, 2, 4)), ["mask 'recurrent'", "got (1, 2, 4)"]),
        (dict(backend="cudnn"), ["unknown backend 'cudnn'", "auto, spec, compiled, native, triton"]),
    ],
)
def test_invalid_inputs_raise_errors_naming_the_problem(changes, expected):
    with pytest.raises(ValueError) as err:
        _call(**changes)
    for part in expected:
        assert part in str(err.value), f"{part!r} not in {str(err.value)!r}"


def test_valid_inputs_pass_the_checks():
    hs, (h_T, c_T) = _call(recurrent=torch.ones(2, 4), cell=torch.ones(3, 2, 4))
    assert hs.shape == (3, 2, 4) and h_T.shape == c_T.shape == (2, 4)


# --- oneDNN products and their fallback ---------------------------------------

needs_onednn = pytest.mark.skipif(not gemm.onednn_available(), reason="this torch build has no oneDNN linear")


@pytest.fixture(autouse=True)
def onednn_for_every_size(monkeypatch):
    """Route even this file's small products through oneDNN, so the fast path is what is tested."""
    monkeypatch.setattr(gemm, "MIN_MACS", 0)


def test_small_products_skip_onednn_and_large_ones_use_it(monkeypatch):
    monkeypatch.setattr(gemm, "MIN_MACS", 1 << 20)
    x = torch.zeros(8, 32)
    assert not gemm.uses_onednn(x, 8 * 32 * 128)
    assert gemm.uses_onednn(x, 700 * 650 * 2600) == gemm.onednn_available()
    assert not gemm.PackedWeight(torch.zeros(128, 32), 8).onednn
    assert gemm.PackedWeight(torch.zeros(2600, 650), 20).onednn == gemm.onednn_available()


@pytest.fixture
def fallback(monkeypatch):
    """Run kernels.gemm as on a build without oneDNN."""
    monkeypatch.setattr(gemm, "_ONEDNN", False)


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_onednn_is_used_only_for_cpu_float32():
    assert gemm.uses_onednn(torch.zeros(2, dtype=torch.float32)) == gemm.onednn_available()
    assert not gemm.uses_onednn(torch.zeros(2, dtype=torch.float64))
    assert not gemm.uses_onednn(torch.zeros(2, dtype=torch.bfloat16))


@needs_onednn
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (7, 5, 3), (64, 33, 130)])
def test_mm_t_onednn_agrees_with_fallback(M, K, N, monkeypatch):
    a, b = _rand(M, K, seed=1), _rand(N, K, seed=2)
    fast = gemm.mm_t(a, b)
    monkeypatch.setattr(gemm, "_ONEDNN", False)
    slow = gemm.mm_t(a, b)
    assert fast.shape == slow.shape == (M, N)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slow, a @ b.t(), rtol=0, atol=0)


@needs_onednn
def test_mm_t_accepts_non_contiguous_operands(monkeypatch):
    a, b = _rand(9, 6, seed=1).t(), _rand(9, 4, seed=2).t()  # (6, 9) and (4, 9), both transposed views
    torch.testing.assert_close(gemm.mm_t(a, b), a @ b.t(), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("B,K,N", [(1, 3, 8), (20, 200, 800), (5, 7, 28)])
def test_packed_weight_onednn_agrees_with_fallback(B, K, N, monkeypatch):
    w, x = _rand(N, K, seed=3), _rand(B, K, seed=4)
    packed = gemm.PackedWeight(w, B)
    assert packed.onednn
    fast = torch.stack([packed(x), packed(x * 2)])  # reused across calls, as across time steps
    monkeypatch.setattr(gemm, "_ONEDNN", False)
    plain = gemm.PackedWeight(w, B)
    assert not plain.onednn
    slow = torch.stack([plain(x), plain(x * 2)])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(slow[0], x @ w.t(), rtol=0, atol=0)


@needs_onednn
def test_packed_weight_applies_a_transposed_weight_view():
    w = _rand(12, 5, seed=5)
    x = _rand(3, 12, seed=6)
    torch.testing.assert_close(gemm.PackedWeight(w.t(), 3)(x), x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("path", ["onednn", "fallback"])
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5), (1, 1, 5)])
def test_linear_equals_f_linear_with_gradients(path, shape, with_bias, monkeypatch):
    if path == "onednn" and not gemm.onednn_available():
        pytest.skip("this torch build has no oneDNN linear")
    if path == "fallback":
        monkeypatch.setattr(gemm, "_ONEDNN", False)
    x = _rand(*shape, seed=1).requires_grad_()
    w = _rand(7, 5, seed=2).requires_grad_()
    b = _rand(7, seed=3).requires_grad_() if with_bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    dy = _rand(*shape[:-1], 7, seed=4)
    ours = gemm.linear(x, w, b)
    ours_grads = torch.autograd.grad(ours, leaves, dy)
    theirs = F.linear(x, w, b)
    theirs_grads = torch.autograd.grad(theirs, leaves, dy)
    assert ours.shape == theirs.shape == (*shape[:-1], 7)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for name, a, c in zip(("x", "w", "b"), ours_grads, theirs_grads):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5, msg=lambda m: f"d{name}: {m}")


def test_linear_gradient_only_for_inputs_that_need_it():
    x = _rand(4, 5, seed=1)
    w = _rand(3, 5, seed=2).requires_grad_()
    b = _rand(3, seed=3)
    (dw,) = torch.autograd.grad(gemm.linear(x, w, b).sum(), [w])
    torch.testing.assert_close(dw, torch.ones(4, 3).t() @ x, rtol=1e-5, atol=1e-5)


def test_linear_in_float64_is_f_linear_exactly():
    x, w, b = _rand(4, 5, seed=1, dtype=torch.float64), _rand(3, 5, seed=2, dtype=torch.float64), _rand(3, dtype=torch.float64)
    assert torch.equal(gemm.linear(x, w, b), F.linear(x, w, b))


def test_linear_accepts_empty_input():
    assert gemm.linear(torch.zeros(0, 5), _rand(3, 5), _rand(3)).shape == (0, 3)


@needs_onednn
def test_recurrence_agrees_on_onednn_and_fallback(monkeypatch):
    T, B, H = 8, 4, 16
    inputs = make_inputs(T, B, H, dtype=torch.float32, seed=9)
    masks = RecurrentMasks(**{n: make_mask(n, "step", T, B, H, dtype=torch.float32, seed=i) for i, n in enumerate(MASK_NAMES)})
    fast = outputs_and_grads(reference(masks), inputs)
    monkeypatch.setattr(gemm, "_ONEDNN", False)
    slow = outputs_and_grads(reference(masks), inputs)
    for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_environment_variable_switches_onednn_off():
    code = "from kernels import gemm; import torch; print(gemm.onednn_available(), gemm.uses_onednn(torch.zeros(1)))"
    env = {**os.environ, "DROPOUT_PROBE_NO_ONEDNN": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- the input projection fused into the recurrence ------------------------------


def _projected_inputs(T, B, I, H, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    return rand(T, B, I), rand(4 * H, I, scale=I**-0.5), rand(4 * H), rand(B, H), rand(B, H), rand(4 * H, H, scale=H**-0.5)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("scope", ["sequence", "step"])
def test_projected_layer_equals_projection_then_spec_loop(dtype, tol, scope):
    T, B, I, H = 6, 3, 5, 7
    masks = RecurrentMasks(**{n: make_mask(n, scope, T, B, H, dtype=dtype, seed=i) for i, n in enumerate(MASK_NAMES)})
    fused = lambda x, w_ih, b, h0, c0, w: lstm_layer_from_input(x, w_ih, b, h0, c0, w, **masks._asdict(), backend="reference")
    spec = lambda x, w_ih, b, h0, c0, w: lstm_layer_loop(x @ w_ih.t() + b, h0, c0, w, masks)
    inputs = _projected_inputs(T, B, I, H, dtype)
    out_a, grad_a = outputs_and_grads(fused, inputs)
    out_b, grad_b = outputs_and_grads(spec, inputs)
    assert len(grad_a) == len(grad_b) == 6  # x, w_ih, bias, h0, c0, w_hh
    for a, b in zip(out_a + grad_a, out_b + grad_b):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_projected_layer_gradcheck_with_every_mask():
    T, B, I, H = 3, 2, 3, 4
    masks = RecurrentMasks(**{n: make_mask(n, "step", T, B, H, seed=i) for i, n in enumerate(MASK_NAMES)})
    f = lambda *a: lstm_layer_from_input(*a, **masks._asdict(), backend="reference")[0]
    assert torch.autograd.gradcheck(f, _projected_inputs(T, B, I, H, torch.float64))


def test_projected_layer_without_bias_and_without_weight_grads():
    x, w_ih, _, h0, c0, w = _projected_inputs(4, 2, 3, 5, torch.float64)
    w_ih.requires_grad_(False)
    hs, _ = lstm_layer_from_input(x, w_ih, None, h0, c0, w, backend="reference")
    expected, _ = lstm_layer_loop(x @ w_ih.t(), h0, c0, w)
    torch.testing.assert_close(hs, expected, rtol=1e-12, atol=1e-12)
    dx, dw = torch.autograd.grad(hs.sum(), [x, w])
    ex, ew = torch.autograd.grad(expected.sum(), [x, w])
    torch.testing.assert_close(dx, ex)
    torch.testing.assert_close(dw, ew)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(x=torch.zeros(4, 2)), "x must be (T, B, I)"),
        (dict(w_ih=torch.zeros(20, 4, dtype=torch.float64)), "w_ih must be (4H, I)"),
        (dict(bias=torch.zeros(7, dtype=torch.float64)), "bias must be (4H,)"),
        (dict(bias=torch.zeros(20)), "bias is torch.float32"),
        (dict(h0=torch.zeros(3, 5, dtype=torch.float64)), "h0 must have shape"),
    ],
)
def test_projected_layer_rejects_bad_inputs(change, message):
    x, w_ih, b, h0, c0, w = (t.detach() for t in _projected_inputs(4, 2, 3, 5, torch.float64))
    args = dict(x=x, w_ih=w_ih, bias=b, h0=h0, c0=c0, w_hh=w) | change
    with pytest.raises(ValueError, match=re.escape(message)):
        lstm_layer_from_input(**args)


def test_backends_are_named_for_what_they_run_and_reference_is_an_alias_of_compiled():
    import warnings

    from kernels import BACKENDS, canonical_backend
    from kernels.reference import lstm_layer_loop

    assert BACKENDS == ("auto", "spec", "compiled", "native", "triton")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert canonical_backend("reference") == "compiled"
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    g = torch.Generator().manual_seed(0)
    gx, h0, c0, w = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 3, 16), (3, 4), (3, 4), (16, 4)))
    rec = (torch.rand(5, 3, 4, generator=g, dtype=torch.float64) > 0.3).double() / 0.7
    want = lstm_layer_loop(gx, h0, c0, w, RecurrentMasks(recurrent=rec))[0]
    for backend in ("spec", "compiled"):
        got = lstm_layer(gx, h0, c0, w, masks=RecurrentMasks(recurrent=rec), backend=backend)[0]
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="not both"):
        lstm_layer(gx, h0, c0, w, recurrent=rec, masks=RecurrentMasks(recurrent=rec))
