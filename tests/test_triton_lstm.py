"""The Triton LSTM computes the reference recurrence: forward outputs and all four gradients.

On a machine without a GPU, conftest.py sets TRITON_INTERPRET=1, so the
kernels run on the CPU through the Triton interpreter: slow, hence the
small shapes and the bounded number of hypothesis examples. Every buffer a
kernel should write starts full of NaN (``POISON_OUTPUTS``), so an element
no program writes fails the comparison. Tests marked ``gpu`` run only on a
CUDA machine (the compiled kernels, bfloat16, tf32, a multi-program
persistent grid). That every variant compiles for sm_90, and without
spilling, is tests/test_compile_check.py's job.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import MASK_NAMES, RecurrentMasks, lstm_layer
from kernels.reference import lstm_layer_loop

triton_lstm = pytest.importorskip("kernels.triton_lstm", reason="triton is not installed")

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (compiled kernels)")
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
# Large GPU shapes: other summation orders than cuBLAS's over K = 650 and T*B = 240.
GPU_TOL = dict(rtol=1e-3, atol=1e-4)
ZONEOUT = ("zoneout_h", "zoneout_c")


@pytest.fixture(scope="module", autouse=True)
def poison_outputs():
    """Kernel outputs start as NaN: an element the kernels never write fails every test."""
    triton_lstm.POISON_OUTPUTS = True
    yield
    triton_lstm.POISON_OUTPUTS = False


def make_inputs(T, B, H, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = H**-0.5  # keeps the gates away from saturation, so gradients are not all ~0

    def rand(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype).to(DEVICE).requires_grad_()

    return rand(T, B, 4 * H), rand(B, H), rand(B, H), rand(4 * H, H, s=2 * scale)


def make_mask(name, scope, T, B, H, dtype=torch.float32, seed=1, rate=0.4):
    """A dropout mask (0 or 1/(1-p)) or a zoneout mask (1 keeps the previous value)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, H) if scope == "sequence" else (T, B, H)
    hit = (torch.rand(shape, generator=g, dtype=torch.float64) < rate).double()
    m = hit if name in ZONEOUT else (1 - hit) / (1 - rate)
    return m.to(dtype).to(DEVICE)


def make_masks(scopes: dict, T, B, H, dtype=torch.float32, seed=1) -> RecurrentMasks:
    return RecurrentMasks(
        **{
            name: None if scopes.get(name) is None else make_mask(name, scopes[name], T, B, H, dtype, seed + k)
            for k, name in enumerate(MASK_NAMES)
        }
    )


def lowered(tensors, dtype):
    """Detached copies in ``dtype`` (None stays None): inputs for a reduced-precision run."""
    return [None if x is None else x.detach().to(dtype) for x in tensors]


def run_both(gx, h0, c0, w, masks, seed=2, **triton_kwargs):
    """Outputs and gradients (of a random linear function of all three outputs) of both."""
    g = torch.Generator().manual_seed(seed)
    results = []
    for fn in (lambda: triton_lstm.lstm_layer_triton(gx, h0, c0, w, masks, **triton_kwargs),
               lambda: lstm_layer_loop(gx, h0, c0, w, masks)):  # fmt: skip
        hs, (h_T, c_T) = fn()
        outs = (hs, h_T, c_T)
        if not results:
            upstream = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs]
        grads = torch.autograd.grad(outs, (gx, h0, c0, w), upstream)
        results.append([o.detach() for o in outs] + list(grads))
    return results


def assert_agree(gx, h0, c0, w, masks, tol=None, **triton_kwargs):
    got, want = run_both(gx, h0, c0, w, masks, **triton_kwargs)
    names = ("hs", "h_T", "c_T", "d_gx", "d_h0", "d_c0", "d_w_hh")
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, name
        assert not torch.isnan(a).any(), f"{name}: element never written (NaN poison survives)"
        torch.testing.assert_close(a, b, **(tol or TOL[a.dtype]), msg=lambda m: f"{name}: {m}")


# --- every mask kind and scope --------------------------------------------


@pytest.mark.parametrize("scope", ["sequence", "step"])
@pytest.mark.parametrize("name", MASK_NAMES)
def test_each_mask_alone_matches_the_spec(name, scope):
    T, B, H = 3, 2, 20
    assert_agree(*make_inputs(T, B, H), make_masks({name: scope}, T, B, H))


def test_no_masks_matches_the_spec():
    assert_agree(*make_inputs(4, 3, 24), RecurrentMasks())


@pytest.mark.parametrize("persistent", [False, True], ids=["per_step", "persistent"])
def test_all_masks_together_match_the_spec(persistent):
    T, B, H = 4, 3, 37
    scopes = dict(recurrent="sequence", cell_update="step", cell="sequence", zoneout_h="step", zoneout_c="sequence")
    assert_agree(*make_inputs(T, B, H), make_masks(scopes, T, B, H), persistent=persistent)


def test_zoneout_at_evaluation_uses_fractional_keep_probabilities():
    T, B, H = 3, 2, 18
    full = lambda v: torch.full((B, H), v, device=DEVICE)  # noqa: E731
    assert_agree(*make_inputs(T, B, H), RecurrentMasks(zoneout_h=full(0.05), zoneout_c=full(0.25)))


@pytest.mark.parametrize("T,B,H", [(1, 1, 1), (1, 1, 17), (2, 1, 16), (5, 4, 1)])
def test_degenerate_shapes(T, B, H):
    scopes = dict(recurrent="step", zoneout_h="sequence", zoneout_c="step")
    assert_agree(*make_inputs(T, B, H), make_masks(scopes, T, B, H))


@pytest.mark.parametrize("persistent", [False, True], ids=["per_step", "persistent"])
def test_several_row_and_unit_tiles(persistent):
    """B=20 with 16-row tiles and H=40 with 16-unit tiles: 2 x 3 tiles, ragged at both edges."""
    T, B, H = 3, 20, 40
    cfg = triton_lstm.launch_config(B, H, torch.float32, DEVICE, persistent=persistent)
    cfg = dataclasses.replace(cfg, block_b=16, block_h=16, block_k=16)
    scopes = dict(recurrent="step", cell="step", zoneout_c="sequence")
    assert_agree(*make_inputs(T, B, H), make_masks(scopes, T, B, H), config=cfg)


def test_float64_matches_the_spec():
    T, B, H = 3, 3, 21
    scopes = dict(recurrent="sequence", cell_update="step", cell="step", zoneout_h="step", zoneout_c="step")
    dt = torch.float64
    assert_agree(*make_inputs(T, B, H, dt), make_masks(scopes, T, B, H, dt))


# --- row alignment (kernels/row_align.py) ---------------------------------

ALL_SCOPES = dict(recurrent="step", cell_update="sequence", cell="step", zoneout_h="sequence", zoneout_c="step")


def spy_widths(monkeypatch) -> list[int]:
    """The hidden widths the forward kernel is launched at, in order."""
    widths = []
    real = triton_lstm.lstm_forward

    def spy(gx, *args, **kwargs):
        widths.append(gx.shape[-1] // 4)
        return real(gx, *args, **kwargs)

    monkeypatch.setattr(triton_lstm, "lstm_forward", spy)
    return widths


@pytest.mark.parametrize("persistent", [False, True], ids=["per_step", "persistent"])
def test_aligned_rows_match_the_spec(persistent, monkeypatch):
    """H = 21 runs at 32 units; outputs and every gradient are those of the 21 real units."""
    widths = spy_widths(monkeypatch)
    T, B, H = 3, 3, 21
    assert_agree(*make_inputs(T, B, H), make_masks(ALL_SCOPES, T, B, H), persistent=persistent, align=True)
    assert widths == [32]


def test_padded_units_stay_exactly_zero_under_every_mask():
    """The argument of row_align's docstring: zero units of a zero-padded problem stay zero at every step."""
    from kernels.row_align import pad_units

    T, B, H, Hp = 4, 3, 5, 16
    gx, h0, c0, w = (x.detach() for x in make_inputs(T, B, H))
    # Masks of value 1 in the padding too, so that zero padding of the masks is not what keeps the units at zero.
    ones_in_padding = (torch.nn.functional.pad(m, (0, Hp - H), value=1.0) for m in make_masks(ALL_SCOPES, T, B, H))
    masks = RecurrentMasks(*ones_in_padding)
    gx_p, h0_p, c0_p, w_p, _ = pad_units(gx, h0, c0, w, RecurrentMasks(), Hp)
    hs, (h_T, c_T) = triton_lstm.lstm_layer_triton(gx_p, h0_p, c0_p, w_p, masks, align=False)
    assert hs.shape[-1] == Hp
    assert torch.equal(hs[..., H:], torch.zeros_like(hs[..., H:]))
    assert torch.equal(c_T[:, H:], torch.zeros_like(c_T[:, H:]))


def test_rows_are_padded_only_when_asked_and_needed(monkeypatch):
    from kernels.row_align import ALIGN_ENV, padded_width

    assert [padded_width(h) for h in (1, 16, 21, 650, 768, 1500)] == [16, 16, 32, 656, 768, 1504]
    widths = spy_widths(monkeypatch)
    monkeypatch.delenv(ALIGN_ENV, raising=False)
    for H, align in ((21, None), (21, False), (32, True)):  # off by default; nothing to pad at 32
        triton_lstm.lstm_layer_triton(*[x.detach() for x in make_inputs(2, 2, H)], align=align)
    monkeypatch.setenv(ALIGN_ENV, "1")
    triton_lstm.lstm_layer_triton(*[x.detach() for x in make_inputs(2, 2, 21)])
    assert widths == [21, 21, 32, 32]
    monkeypatch.setenv(ALIGN_ENV, "yes")
    with pytest.raises(ValueError, match=f"{ALIGN_ENV} must be '0' or '1'; got 'yes'"):
        triton_lstm.lstm_layer_triton(*[x.detach() for x in make_inputs(2, 2, 21)])


def test_16_bit_storage_carries_the_state_in_float32():
    T, B, H = 2, 2, 8
    gx, h0, c0, w = lowered(make_inputs(T, B, H), torch.half)
    h, c, gates, tanhc = triton_lstm.lstm_forward(gx, h0, c0, w, RecurrentMasks(), triton_lstm.launch_config(
        B, H, torch.half, DEVICE), save=True)  # fmt: skip
    assert h.dtype == c.dtype == torch.float32 and gates.dtype == tanhc.dtype == torch.half
    hs, (h_T, c_T) = triton_lstm.lstm_layer_triton(gx, h0, c0, w)
    assert hs.dtype == h_T.dtype == c_T.dtype == torch.half
    assert [triton_lstm.state_dtype(d) for d in (torch.bfloat16, torch.float32, torch.float64)] == [
        torch.float32, torch.float32, torch.float64]  # fmt: skip


def float16_errors(T: int, B: int = 4, H: int = 32, seed: int = 0) -> list[float]:
    """Errors of the float16 kernels against the float64 spec, in float16 epsilons, relative to each output's
    largest magnitude: hs, h_T, c_T, then the gradients of gx, h0, c0, w_hh. A forget-gate bias of 3 (long
    memory) makes c accumulate over many steps. The spec runs on the float16-rounded inputs, so only the
    kernels' own rounding is measured."""
    g = torch.Generator().manual_seed(seed)
    gx = torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64)
    gx[:, :, H : 2 * H] += 3.0
    h0, c0 = (torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.randn(4 * H, H, generator=g, dtype=torch.float64) * 2 * H**-0.5
    exact = [x.half().double().to(DEVICE).requires_grad_() for x in (gx, h0, c0, w)]
    half = [x.detach().half().requires_grad_() for x in exact]
    results = []
    for fn, inputs in ((triton_lstm.lstm_layer_triton, half), (lstm_layer_loop, exact)):
        hs, (h_T, c_T) = fn(*inputs, RecurrentMasks())
        up = torch.Generator().manual_seed(seed + 1)
        upstream = [torch.randn(o.shape, generator=up, dtype=torch.float64).to(o) for o in (hs, h_T, c_T)]
        results.append([hs, h_T, c_T, *torch.autograd.grad((hs, h_T, c_T), inputs, upstream)])
    eps = torch.finfo(torch.float16).eps
    return [float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max()) / eps
            for a, b in zip(*results)]  # fmt: skip


def test_float16_error_does_not_grow_with_the_sequence():
    """Rounding the carried state to float16 at every step (before it was kept in float32) compounded:
    between T = 8 and T = 64, c_T's error grew from 0.86 to 2.04 float16 epsilons here and the gradients'
    from at most 1.14 to 5.22. Carried in float32: c_T 0.37 and 0.39 (the one rounding of the output),
    gradients at most 0.76 and 1.62."""
    for T in (8, 64):
        hs, h_T, c_T, *grads = float16_errors(T)
        assert c_T <= 1.0, f"T={T}: c_T off by {c_T:.2f} float16 epsilons"
        assert max(grads) <= 4, f"T={T}: gradients off by up to {max(grads):.2f} float16 epsilons"
        # h also carries the rounding of h to float16 for every step's product, as in any 16-bit GEMM:
        # measured 3.16 (hs) and 3.40 (h_T) epsilons at T = 64, 0.45 and 0.47 at T = 8.
        assert hs <= 8 and h_T <= 8, f"T={T}: hs {hs:.2f}, h_T {h_T:.2f} float16 epsilons"


def test_float16_storage_stays_close_to_float32():
    T, B, H = 3, 2, 20
    gx, h0, c0, w = make_inputs(T, B, H)
    masks = make_masks(dict(recurrent="step", zoneout_c="step"), T, B, H)
    half_masks = RecurrentMasks(*lowered(masks, torch.half))
    hs, _ = triton_lstm.lstm_layer_triton(*lowered((gx, h0, c0, w), torch.half), half_masks)
    want, _ = lstm_layer_loop(gx, h0, c0, w, masks)
    torch.testing.assert_close(hs.float(), want.detach(), rtol=1e-2, atol=1e-2)


# --- random shapes and mask combinations ------------------------------------

scope_st = st.sampled_from([None, "sequence", "step"])


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 6),
    B=st.integers(1, 5),
    H=st.integers(1, 40),
    scopes=st.fixed_dictionaries({name: scope_st for name in MASK_NAMES}),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    persistent=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_masks_match_the_spec(T, B, H, scopes, dtype, persistent, seed):
    masks = make_masks(scopes, T, B, H, dtype, seed + 1)
    assert_agree(*make_inputs(T, B, H, dtype, seed), masks, persistent=persistent)


# --- autograd plumbing --------------------------------------------------------


def test_gradients_reach_only_the_inputs_that_need_them():
    T, B, H = 3, 2, 20
    gx, h0, c0, w = make_inputs(T, B, H)
    w = w.detach()
    masks = make_masks(dict(recurrent="sequence"), T, B, H)
    hs, (h_T, c_T) = lstm_layer(gx, h0, c0, w, **masks._asdict(), backend="triton")
    (hs.sum() + h_T.square().sum() + c_T.sum()).backward()  # expanded (stride-0) upstream gradients
    ref_inputs = [x.detach().requires_grad_() for x in (gx, h0, c0)]
    rs, (rh, rc) = lstm_layer_loop(*ref_inputs, w, masks)
    (rs.sum() + rh.square().sum() + rc.sum()).backward()
    for x, r in zip((gx, h0, c0), ref_inputs):
        torch.testing.assert_close(x.grad, r.grad, **TOL[torch.float32])


def test_forward_without_grad_saves_nothing_and_agrees():
    T, B, H = 3, 2, 20
    inputs = [x.detach() for x in make_inputs(T, B, H)]
    masks = make_masks(dict(cell="step", zoneout_h="step"), T, B, H)
    with torch.no_grad():
        hs, (h_T, c_T) = triton_lstm.lstm_layer_triton(*inputs, masks)
        rs, (rh, rc) = lstm_layer_loop(*inputs, masks)
    assert not hs.requires_grad
    for a, b in ((hs, rs), (h_T, rh), (c_T, rc)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


# --- dispatch and errors --------------------------------------------------------


@pytest.mark.skipif(ON_GPU, reason="checks the CPU choice")
def test_auto_backend_picks_the_reference_on_cpu(monkeypatch):
    called = []
    monkeypatch.setattr(triton_lstm, "lstm_layer_triton", lambda *a, **k: called.append("triton"))
    real = kernels.layer.lstm_layer_compiled
    monkeypatch.setattr(kernels.layer, "lstm_layer_compiled", lambda *a: called.append("reference") or real(*a))
    lstm_layer(*[x.detach() for x in make_inputs(2, 2, 8)], backend="auto")
    assert called == ["reference"]


def test_backend_triton_dispatches_to_the_kernels(monkeypatch):
    called = []
    real = triton_lstm.lstm_layer_triton
    monkeypatch.setattr(triton_lstm, "lstm_layer_triton", lambda *a, **k: called.append(1) or real(*a, **k))
    lstm_layer(*[x.detach() for x in make_inputs(2, 2, 8)], backend="triton")
    assert called == [1]


@pytest.mark.skipif(ON_GPU, reason="interpreter-only limitation")
def test_bfloat16_under_the_interpreter_is_a_clear_error():
    inputs = [x.detach().bfloat16() for x in make_inputs(2, 2, 8)]
    with pytest.raises(ValueError, match="bfloat16"):
        lstm_layer(*inputs, backend="triton")


@pytest.mark.skipif(ON_GPU, reason="checks CPU tensors")
def test_cpu_tensors_without_the_interpreter_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(triton_lstm, "interpreted", lambda: False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        lstm_layer(*[x.detach() for x in make_inputs(2, 2, 8)], backend="triton")


def test_unsupported_device_and_precision_are_clear_errors():
    meta = [torch.empty(s, device="meta") for s in ((2, 2, 32), (2, 8), (2, 8), (32, 8))]
    with pytest.raises(ValueError, match="CUDA tensors"):
        lstm_layer(*meta, backend="triton")
    with pytest.raises(ValueError, match="precision"):
        triton_lstm.lstm_layer_triton(*[x.detach() for x in make_inputs(2, 2, 8)], precision="fast")


def test_float32_precision_defaults_to_cudnns_choice_and_can_be_overridden(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # launch_config only reads the device type
    monkeypatch.delenv(triton_lstm.PRECISION_ENV, raising=False)
    assert triton_lstm.launch_config(20, 650, torch.float32, cuda).precision == "tf32"  # cuDNN's default
    assert triton_lstm.launch_config(20, 650, torch.float32, cpu).precision == "ieee"  # the interpreter
    assert triton_lstm.launch_config(20, 650, torch.float32, cuda, precision="ieee").precision == "ieee"
    monkeypatch.setenv(triton_lstm.PRECISION_ENV, "ieee")
    assert triton_lstm.launch_config(20, 650, torch.float32, cuda).precision == "ieee"
    assert triton_lstm.launch_config(20, 650, torch.float32, cuda, precision="tf32").precision == "tf32"
    monkeypatch.setenv(triton_lstm.PRECISION_ENV, "fast")
    with pytest.raises(ValueError, match=triton_lstm.PRECISION_ENV):
        triton_lstm.launch_config(20, 650, torch.float32, cuda)


def test_float32_precision_follows_cudnns_switch(monkeypatch):
    monkeypatch.delenv(triton_lstm.PRECISION_ENV, raising=False)
    before = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        assert triton_lstm.default_precision(torch.device("cuda")) == "ieee"
    finally:
        torch.backends.cudnn.allow_tf32 = before
    assert triton_lstm.default_precision(torch.device("cuda")) == ("tf32" if before else "ieee")


def test_persistent_launches_are_cooperative_where_triton_can(monkeypatch):
    per_step = triton_lstm.launch_config(20, 650, torch.float32, DEVICE, persistent=False)
    persistent = dataclasses.replace(per_step, persistent=True)
    if triton_lstm.interpreted():  # the interpreter's launcher takes no such option
        assert "launch_cooperative_grid" not in triton_lstm.kernel_constexprs(persistent, torch.float32)
    monkeypatch.setattr(triton_lstm, "cooperative_launch_supported", lambda: True)
    assert triton_lstm.kernel_constexprs(persistent, torch.float32)["launch_cooperative_grid"] is True
    assert "launch_cooperative_grid" not in triton_lstm.kernel_constexprs(per_step, torch.float32)


def test_register_options_are_passed_only_where_they_apply(monkeypatch):
    """ptxas usage level 3 for every launch, maxnreg=255 for persistent tensor-core ones; none when interpreted."""
    monkeypatch.delenv(triton_lstm.PTXAS_DEFAULTS_ENV, raising=False)
    monkeypatch.delenv("PTXAS_OPTIONS", raising=False)
    if triton_lstm.interpreted():
        assert triton_lstm.register_options(True) == {}
    monkeypatch.setattr(triton_lstm, "interpreted", lambda: False)
    monkeypatch.setattr(triton_lstm, "_cuda_option", lambda name: True)
    monkeypatch.setattr(triton_lstm, "_ptxas_knows_usage_level", lambda: True)
    assert triton_lstm.register_options(False) == {"ptx_options": triton_lstm.PTXAS_OPTIONS}
    assert triton_lstm.register_options(True) == {"ptx_options": triton_lstm.PTXAS_OPTIONS, "maxnreg": 255}
    assert triton_lstm.register_options(True, fma_products=True) == {"ptx_options": triton_lstm.PTXAS_OPTIONS}
    monkeypatch.setenv("PTXAS_OPTIONS", "-lineinfo")  # Triton's own variable is kept
    assert triton_lstm.register_options(False) == {"ptx_options": f"-lineinfo {triton_lstm.PTXAS_OPTIONS}"}
    monkeypatch.setattr(triton_lstm, "_ptxas_knows_usage_level", lambda: False)  # ptxas older than CUDA 12.8
    assert triton_lstm.register_options(True) == {"maxnreg": 255}
    monkeypatch.setenv(triton_lstm.PTXAS_DEFAULTS_ENV, "1")
    assert triton_lstm.register_options(True) == {}


def test_persistent_launch_uses_one_program_under_the_interpreter():
    if ON_GPU:
        pytest.skip("the GPU grid is one program per SM")
    cfg = triton_lstm.launch_config(20, 650, torch.float32, DEVICE, persistent=True)
    assert triton_lstm._n_programs(20, 650, cfg, DEVICE) == 1


# --- GPU only -----------------------------------------------------------------


@gpu
@pytest.mark.parametrize("align", [False, True], ids=["rows_as_given", "aligned_rows"])
@pytest.mark.parametrize("persistent", [False, True], ids=["per_step", "persistent"])
def test_large_shapes_match_the_reference_on_gpu(persistent, align):
    """Zaremba-medium sized: many tiles, a persistent grid of many programs (a real barrier), and 650 padded to 656."""
    T, B, H = 12, 20, 650
    scopes = dict(recurrent="sequence", cell_update="step", zoneout_h="step", zoneout_c="step")
    masks = make_masks(scopes, T, B, H)
    assert_agree(*make_inputs(T, B, H), masks, tol=GPU_TOL, persistent=persistent, precision="ieee", align=align)


@gpu
@pytest.mark.parametrize("B", [1, 100, 256])
def test_batch_sizes_up_to_256_on_gpu(B):
    T, H = 4, 100
    masks = make_masks(dict(recurrent="step", cell="sequence"), T, B, H)
    assert_agree(*make_inputs(T, B, H), masks, tol=GPU_TOL, precision="ieee")


@gpu
@pytest.mark.parametrize("dtype,precision", [(torch.bfloat16, None), (torch.float32, "tf32")])
def test_reduced_precision_stays_close_to_float32(dtype, precision):
    T, B, H = 8, 16, 256
    gx, h0, c0, w = make_inputs(T, B, H)
    masks = make_masks(dict(recurrent="sequence", zoneout_c="step"), T, B, H)
    low_masks = RecurrentMasks(*lowered(masks, dtype))
    hs, _ = triton_lstm.lstm_layer_triton(*lowered((gx, h0, c0, w), dtype), low_masks, precision=precision)
    want, _ = lstm_layer_loop(gx, h0, c0, w, masks)
    torch.testing.assert_close(hs.float(), want.detach(), rtol=3e-2, atol=3e-2)


@gpu
def test_auto_backend_picks_triton_on_gpu(monkeypatch):
    called = []
    real = triton_lstm.lstm_layer_triton
    monkeypatch.setattr(triton_lstm, "lstm_layer_triton", lambda *a, **k: called.append(1) or real(*a, **k))
    lstm_layer(*[x.detach() for x in make_inputs(2, 2, 8)], backend="auto")
    assert called == [1]


@gpu
def test_launched_kernels_do_not_spill_on_gpu():
    """All five masks, float32 "ieee", persistent, B=16 H=768: a variant whose first register options spill with
    Triton 3.6 (kernels/compile_check.py); whatever spilled was passed over, and what runs does not spill."""
    from kernels.spill_free import REJECTED
    from kernels.triton_bw import lstm_bw_kernel
    from kernels.triton_fw import lstm_fw_kernel

    def compiled():
        for fn in (lstm_fw_kernel, lstm_bw_kernel):
            for caches in fn.device_caches.values():
                for k in caches[0].values():
                    yield fn.__name__, k.result() if hasattr(k, "result") else k

    before = {id(k) for _, k in compiled()}
    T, B, H = 4, 16, 768
    inputs = make_inputs(T, B, H)
    scopes = dict.fromkeys(MASK_NAMES, "step")
    for persistent in (False, True):
        hs, (h_T, c_T) = triton_lstm.lstm_layer_triton(*inputs, make_masks(scopes, T, B, H), persistent=persistent,
                                                       precision="ieee")  # fmt: skip
        torch.autograd.grad((hs.sum() + h_T.sum() + c_T.sum()), inputs)
    used = []
    for name, k in compiled():
        if id(k) not in before and k not in REJECTED:
            k._init_handles()
            used.append((name, k.n_regs, k.n_spills))
    assert used and all(spills == 0 for _, _, spills in used), used
