"""MaskedLSTM as a complete drop-in for nn.LSTM: packed sequences, both directions, projections, nn.LSTM's
error contract and attributes, higher-order gradients, whole-model saves.

Where nn.LSTM defines the answer (placement none, and every placement at evaluation) MaskedLSTM is
compared with it; with masks, a packed batch is compared with its rows run one at a time on the same
masks, and every path with the loop spec (``backend="spec"``).
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pack_sequence

from kernels import RecurrentMasks
from probe.masked_lstm import SAFE_GLOBALS, MaskedLSTM
from probe.model.masked_lstm import LayerMasks, LSTMMasks
from probe.model.packed import PackedLayout

F64 = torch.float64
TOL = dict(rtol=0, atol=1e-12)
LENGTHS = [4, 6, 2, 6, 1]  # mixed, unsorted, with a tie and a single step
SHAPES = [  # (bidirectional, proj_size)
    (False, 0), (True, 0), (False, 3), (True, 3),
]
PLACEMENTS = [
    "variational:p=0.3,rec=0.4",
    "zoneout:p=0.2,zc=0.3,zh=0.4",
    "semeniuta:p=0.3,rec=0.4",
    "naive:p=0.3,rec=0.4",
    "rnndrop:p=0.3,cell=0.3",
    "weight_drop:p=0.3,w=0.4",
    "zaremba:p=0.3",
]


def rand(*shape, seed, grad=False):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).requires_grad_(grad)


def pair(I=4, H=5, L=2, *, placement="none", backend="auto", seed=0, **kw):
    torch.manual_seed(seed)
    ref = nn.LSTM(I, H, L, **kw).to(F64)
    ours = MaskedLSTM(I, H, L, placement=placement, backend=backend, **kw).to(F64)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def padded_batch(lengths=LENGTHS, I=4, seed=1):
    x = rand(max(lengths), len(lengths), I, seed=seed)
    for b, n in enumerate(lengths):
        x.data[n:, b] = 0
    return x.requires_grad_(True)


def state(module, B, seed=2):
    D = 2 if module.bidirectional else 1
    P = module.proj_size or module.hidden_size
    return (rand(module.num_layers * D, B, P, seed=seed, grad=True),
            rand(module.num_layers * D, B, module.hidden_size, seed=seed + 1, grad=True))


def run_and_grads(module, inp, hx, leaves, **kw):
    """Outputs (packed data or tensor, h_n, c_n) and gradients of a fixed random projection of them."""
    out, (h, c) = module(inp, hx, **kw)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    g = torch.Generator().manual_seed(9)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=F64)).sum() for t in (data, h, c))
    names = list(leaves) + [n for n, _ in module.named_parameters()]
    tensors = list(leaves.values()) + [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, tensors)
    return [data.detach(), h.detach(), c.detach()], dict(zip(names, grads))


def assert_close_all(a, b, tol=TOL):
    for u, v in zip(a[0], b[0]):
        torch.testing.assert_close(u, v, **tol)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")


# --- the packed layout ---------------------------------------------------------------------------------


def test_packed_layout_maps_pads_and_reverses_rows_in_place():
    x = padded_batch()
    p = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    layout = PackedLayout.of(p.batch_sizes)
    padded, _ = pad_packed_sequence(p)  # unsorted order
    sorted_padded = padded[:, p.sorted_indices]
    torch.testing.assert_close(layout.pad(p.data), sorted_padded, **TOL)
    torch.testing.assert_close(sorted_padded[layout.steps, layout.rows], p.data, **TOL)  # entry i is at (t_i, b_i)
    assert layout.lengths.tolist() == sorted(LENGTHS, reverse=True)
    rev = layout.pad(layout.reverse(p.data))
    for b, n in enumerate(layout.lengths.tolist()):
        torch.testing.assert_close(rev[:n, b], sorted_padded[:n, b].flip(0), **TOL)
    assert torch.equal(layout.reverse(layout.reverse(p.data)), p.data)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [LENGTHS, [5, 5, 5], [9, 1, 1, 1], list(range(40, 0, -1))])
def test_span_index_gathers_each_spans_padded_block_and_places_its_outputs_back(lengths, reverse):
    """The spans' blocks are the padded batch's [t0:t1, :n] (reversed within each row for the reverse
    direction, zeros past a row's end), and ``place`` puts the flattened blocks back in packed order."""
    from probe.model import packed
    p = pack_sequence([torch.randn(n, 3, dtype=F64) for n in lengths], enforce_sorted=False)
    layout = PackedLayout.of(p.batch_sizes)
    data = layout.reverse(p.data) if reverse else p.data
    full = layout.pad(data)
    gather, place, sizes = layout.span_index(reverse)
    blocks = torch.cat([p.data, p.data.new_zeros(1, 3)]).index_select(0, gather).split(sizes)
    assert len(blocks) == len(layout.segments) <= packed.MAX_SEGMENTS
    for (t0, t1, n), block in zip(layout.segments, blocks):
        torch.testing.assert_close(block.view(t1 - t0, n, 3), full[t0:t1, :n], **TOL)
    assert torch.equal(torch.cat(blocks).index_select(0, place), p.data)  # outputs return to their entries
    assert layout.span_index(reverse) is layout.span_index(reverse)  # computed once per direction


@pytest.mark.parametrize("lengths", [LENGTHS, [5, 5, 5], [9, 1, 1, 1], list(range(40, 0, -1)), [1]])
def test_segments_cover_every_step_on_the_rows_active_there(lengths):
    from probe.model import packed
    layout = PackedLayout.of(pack_sequence([torch.zeros(n, 1) for n in lengths], enforce_sorted=False).batch_sizes)
    spans = layout.segments
    assert spans[0][0] == 0 and spans[-1][1] == layout.T and len(spans) <= packed.MAX_SEGMENTS
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    sizes = layout.batch_sizes.tolist()
    assert all(rows == sizes[t0] >= max(sizes[t0:t1]) for t0, t1, rows in spans)
    if len(set(lengths)) == 1:
        assert spans == ((0, layout.T, layout.B),)  # nothing to cut, nothing frozen
    if lengths == list(range(40, 0, -1)):  # a triangle: the spans skip much of the padding
        assert sum((t1 - t0) * rows for t0, t1, rows in spans) < 0.75 * layout.T * layout.B


def test_frozen_steps_keep_the_state_exactly_in_the_spec():
    """The freeze (zoneout of 1 past a row's end) returns each row's state at its own last step, bit for bit."""
    from kernels.reference import lstm_layer_loop
    lengths = [5, 3, 1]
    layout = PackedLayout.of(pack_padded_sequence(torch.zeros(5, 3, 1), lengths).batch_sizes)
    gx, h0, c0, w = rand(5, 3, 8, seed=0), rand(3, 2, seed=1), rand(3, 2, seed=2), rand(8, 2, seed=3)
    masks = layout.freeze(RecurrentMasks(), 2, 2, F64, "cpu")
    _, (h, c) = lstm_layer_loop(gx, h0, c0, w, masks)
    for b, n in enumerate(lengths):
        _, (hb, cb) = lstm_layer_loop(gx[:n, b : b + 1], h0[b : b + 1], c0[b : b + 1], w)
        assert torch.equal(h[b : b + 1], hb) and torch.equal(c[b : b + 1], cb)


# --- placement none, and evaluation: nn.LSTM's answers ------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "compiled", "spec"])
@pytest.mark.parametrize("bidirectional,proj_size", SHAPES)
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_input_is_nn_lstms(backend, bidirectional, proj_size, enforce_sorted):
    ref, ours = pair(placement="none", backend=backend, bidirectional=bidirectional, proj_size=proj_size)
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    x = padded_batch(lengths)
    hx = state(ref, len(lengths))
    leaves = {"x": x, "h0": hx[0], "c0": hx[1]}
    results = []
    for module in (ref, ours):
        p = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        results.append(run_and_grads(module, p, hx, leaves))
        out, _ = module(p, hx)
        assert torch.equal(out.batch_sizes, p.batch_sizes)
        if not enforce_sorted:
            assert torch.equal(out.sorted_indices, p.sorted_indices) and torch.equal(out.unsorted_indices, p.unsorted_indices)
    tol = TOL if backend != "auto" else dict(rtol=0, atol=0)  # auto is nn.LSTM's own call
    assert_close_all(results[1], results[0], tol)


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5), bidirectional=st.booleans(),
       proj=st.booleans(), L=st.integers(1, 2), enforce_sorted=st.booleans(), seed=st.integers(0, 2**16))
def test_packed_input_on_the_compiled_loop_is_nn_lstms_over_random_batches(lengths, bidirectional, proj, L,
                                                                          enforce_sorted, seed):
    if enforce_sorted:
        lengths = sorted(lengths, reverse=True)
    ref, ours = pair(3, 4, L, backend="compiled", seed=seed, bidirectional=bidirectional, proj_size=2 if proj else 0)
    x = padded_batch(lengths, I=3, seed=seed)
    hx = state(ref, len(lengths), seed=seed + 1)
    leaves = {"x": x, "h0": hx[0], "c0": hx[1]}
    got = [run_and_grads(m, pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), hx, leaves)
           for m in (ref, ours)]
    assert_close_all(got[1], got[0])


@pytest.mark.parametrize("bidirectional,proj_size", SHAPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_padded_bidirectional_and_projected_input_is_nn_lstms(bidirectional, proj_size, batch_first):
    for backend in ("auto", "compiled"):
        ref, ours = pair(placement="none", backend=backend, bidirectional=bidirectional, proj_size=proj_size,
                         batch_first=batch_first)
        x = rand(*((3, 5, 4) if batch_first else (5, 3, 4)), seed=4, grad=True)
        hx = state(ref, 3)
        leaves = {"x": x, "h0": hx[0], "c0": hx[1]}
        assert_close_all(run_and_grads(ours, x, hx, leaves), run_and_grads(ref, x, hx, leaves))
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


@pytest.mark.parametrize("spec", PLACEMENTS)
def test_evaluation_of_packed_bidirectional_input_is_nn_lstms(spec):
    if spec.startswith("zoneout"):
        pytest.skip("zoneout's evaluation is its expectation, not nn.LSTM's function")
    ref, ours = pair(placement=spec, bidirectional=True, proj_size=3, dropout=0.3)
    ref.eval(), ours.eval()
    p = pack_padded_sequence(padded_batch(), LENGTHS, enforce_sorted=False)
    a, (ha, ca) = ref(p)
    b, (hb, cb) = ours(p)
    assert torch.equal(a.data, b.data) and torch.equal(ha, hb) and torch.equal(ca, cb)


# --- with masks: a packed row is that row alone -------------------------------------------------------------


def row_masks(masks: LSTMMasks, b: int, n: int) -> LSTMMasks:
    """Row b's masks for its n steps alone (step masks cut to n steps, sequence masks kept)."""
    def cut(m):
        if m is None:
            return None
        return m[:n, b : b + 1] if m.dim() == 3 else m[b : b + 1]
    layers = [LayerMasks(cut(m.input), m.weight, m.recurrent.map(cut)) for m in masks.layers]
    return LSTMMasks(layers, cut(masks.output), [cut(u) for u in masks.between or ()])


def rows_one_at_a_time(module, x, lengths, hx, masks):
    outs, hs, cs = [], [], []
    for b, n in enumerate(lengths):
        out, (h, c) = module(x[:n, b : b + 1], (hx[0][:, b : b + 1], hx[1][:, b : b + 1]), masks=row_masks(masks, b, n))
        outs.append(out[:, 0])
        hs.append(h)
        cs.append(c)
    return outs, torch.cat(hs, 1), torch.cat(cs, 1)


@pytest.mark.parametrize("backend", ["auto", "compiled", "spec"])  # auto: zaremba, weight_drop on torch's fused LSTM
@pytest.mark.parametrize("bidirectional,proj_size", SHAPES)
@pytest.mark.parametrize("spec", PLACEMENTS)
def test_a_packed_row_is_that_row_alone_with_its_masks(spec, bidirectional, proj_size, backend):
    if proj_size and backend == "compiled" and not spec.startswith(("zaremba", "weight_drop")):
        pytest.skip("LSTMP layers with recurrent masks run the loop spec only")
    _, m = pair(placement=spec, backend=backend, bidirectional=bidirectional, proj_size=proj_size, dropout=0.25)
    m.train()
    x = padded_batch()
    hx = state(m, len(LENGTHS))
    masks = m.sample_masks(max(LENGTHS), len(LENGTHS), torch.Generator().manual_seed(5))
    p = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    out, (h, c) = m(p, hx, masks=masks)
    padded, _ = pad_packed_sequence(out)
    outs, h1, c1 = rows_one_at_a_time(m, x, LENGTHS, hx, masks)
    for b, n in enumerate(LENGTHS):
        torch.testing.assert_close(padded[:n, b], outs[b], **TOL)
        assert not padded[n:, b].any()
    torch.testing.assert_close(h, h1, **TOL)
    torch.testing.assert_close(c, c1, **TOL)
    # the gradients too: through packing, freezing and reversal
    grads = torch.autograd.grad(out.data.sum() + h.sum() + c.sum(), [x, *m.parameters()])
    grads1 = torch.autograd.grad(sum(o.sum() for o in outs) + h1.sum() + c1.sum(), [x, *m.parameters()])
    for u, v in zip(grads, grads1):
        torch.testing.assert_close(u, v, **TOL)


@pytest.mark.parametrize("spec", ["variational:p=0.3,rec=0.4", "zoneout:p=0.2,zc=0.3,zh=0.4"])
def test_the_triton_backend_runs_packed_bidirectional_input(spec):
    """The Triton kernels (the interpreter on a CPU) on the freeze masks, against the loop spec."""
    pytest.importorskip("kernels.triton_lstm", reason="triton is not installed")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU, the interpreter (tests/conftest.py)
    lengths = [3, 1, 2]
    _, spec_m = pair(I=3, H=4, placement=spec, backend="spec", bidirectional=True)
    tri = MaskedLSTM(3, 4, 2, placement=spec, backend="triton", bidirectional=True).to(device, F64)
    tri.load_state_dict(spec_m.state_dict())
    masks = spec_m.sample_masks(3, 3, torch.Generator().manual_seed(0))
    x = padded_batch(lengths, I=3)
    p = pack_padded_sequence(x, lengths, enforce_sorted=False)
    a, (ha, ca) = spec_m(p, masks=masks)
    (ga,) = torch.autograd.grad(a.data.sum() + ha.sum() + ca.sum(), x)
    on = lambda t: None if t is None else t.to(device)  # noqa: E731
    dev_masks = LSTMMasks([LayerMasks(on(m.input), on(m.weight), m.recurrent.map(on)) for m in masks.layers],
                          on(masks.output), [on(u) for u in masks.between])
    xd = x.detach().to(device).requires_grad_(True)
    b, (hb, cb) = tri(pack_padded_sequence(xd, lengths, enforce_sorted=False), masks=dev_masks)
    (gb,) = torch.autograd.grad(b.data.sum() + hb.sum() + cb.sum(), xd)
    for u, v in ((a.data, b.data), (ha, hb), (ca, cb), (ga, gb)):
        torch.testing.assert_close(u, v.cpu(), rtol=1e-10, atol=1e-12)


# --- nn.LSTM's contract: errors, empty input, attributes ----------------------------------------------------

CONSTRUCTOR_CASES = [
    dict(bias=0), dict(batch_first="False"), dict(input_size=2.5), dict(hidden_size=3.0), dict(input_size=0),
    dict(hidden_size=0), dict(num_layers=0), dict(dropout=1.5), dict(dropout=True), dict(proj_size=-1),
    dict(proj_size=5), dict(proj_size=7),
]


@pytest.mark.parametrize("kw", CONSTRUCTOR_CASES, ids=lambda kw: ",".join(f"{k}={v!r}" for k, v in kw.items()))
def test_constructor_errors_are_nn_lstms(kw):
    args = {**dict(input_size=3, hidden_size=5, num_layers=2), **kw}
    with pytest.raises(Exception) as expected:
        nn.LSTM(**args)
    with pytest.raises(type(expected.value)) as got:
        MaskedLSTM(**args, placement="variational")
    assert str(got.value) == str(expected.value)


def test_dropout_on_one_layer_warns_as_nn_lstm_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MaskedLSTM(3, 4, 1, dropout=0.5)
    assert len(caught) == 1 and "num_layers greater than 1" in str(caught[0].message)
    assert caught[0].filename == __file__


def forward_cases(batch_first):
    """Bad calls, each a function of a module (nn.LSTM(3, 4, 2, batch_first) or its MaskedLSTM)."""
    B = 2
    good = torch.randn(*((B, 5, 3) if batch_first else (5, B, 3)))
    return {
        "1-D input": lambda m: m(torch.randn(5)),
        "4-D input": lambda m: m(torch.randn(5, 2, 3, 1)),
        "wrong input size": lambda m: m(torch.randn(5, 2, 7)),
        "wrong h_0 batch": lambda m: m(good, (torch.zeros(2, 3, 4), torch.zeros(2, B, 4))),
        "wrong c_0 size": lambda m: m(good, (torch.zeros(2, B, 4), torch.zeros(2, B, 5))),
        "2-D state, 3-D input": lambda m: m(good, (torch.zeros(2, 4), torch.zeros(2, 4))),
        "3-D state, 2-D input": lambda m: m(torch.randn(5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))),
        "wrong layers in state": lambda m: m(good, (torch.zeros(3, B, 4), torch.zeros(3, B, 4))),
        "float64 input": lambda m: m(good.double()),
        "zero-length sequence": lambda m: m(torch.randn(*((B, 0, 3) if batch_first else (0, B, 3)))),
        "packed, wrong input size": lambda m: m(pack_sequence([torch.randn(3, 7), torch.randn(2, 7)])),
    }


@pytest.mark.parametrize("placement", ["none", "variational:p=0.3,rec=0.3"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("case", list(forward_cases(False)))
def test_forward_errors_are_nn_lstms(case, batch_first, placement):
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, 2, batch_first=batch_first)
    ours = MaskedLSTM(3, 4, 2, batch_first=batch_first, placement=placement).train()
    call = forward_cases(batch_first)[case]
    with pytest.raises(Exception) as expected:
        call(ref)
    with pytest.raises(type(expected.value)) as got:
        call(ours)
    if case.startswith("packed"):  # nn.LSTM does not check packed data; the product fails. Ours says why:
        assert str(got.value) == "input.size(-1) must be equal to input_size. Expected 3, got 7"
    else:
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("placement", ["none", "variational:p=0.3,rec=0.3", "zoneout:p=0.1,zc=0.2,zh=0.2"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_an_empty_batch_returns_empty_outputs_as_nn_lstm(placement, batch_first):
    ref, ours = pair(3, 4, 2, placement=placement, bidirectional=True, batch_first=batch_first)
    ours.train()
    x = torch.randn(*((0, 5, 3) if batch_first else (5, 0, 3)), dtype=F64)
    (a, (ha, ca)), (b, (hb, cb)) = ref(x), ours(x)
    for u, v in ((a, b), (ha, hb), (ca, cb)):
        assert u.shape == v.shape and u.dtype == v.dtype and u.numel() == 0


@pytest.mark.parametrize("case", ["another batch", "another length", "packed, another batch", "wrong size",
                                  "wrong dtype", "wrong weight"])
def test_explicit_masks_of_another_shape_are_refused_in_one_line(case):
    m = MaskedLSTM(3, 4, 2, placement="naive:p=0.3,rec=0.3", bidirectional=True).double()  # step masks
    x = torch.randn(5, 3, 3, dtype=F64)
    inp = pack_sequence([torch.randn(n, 3, dtype=F64) for n in (5, 2, 4)], enforce_sorted=False)
    masks = {
        "another batch": m.sample_masks(5, 1),
        "another length": m.sample_masks(7, 3),
        "packed, another batch": m.sample_masks(5, 8),
        "wrong size": MaskedLSTM(3, 6, 2, placement="naive:p=0.3,rec=0.3", bidirectional=True).double().sample_masks(5, 3),
        "wrong dtype": m.sample_masks(5, 3, dtype=torch.float32),
        "wrong weight": MaskedLSTM(3, 4, 2, placement="weight_drop:p=0.1,w=0.3", bidirectional=True, proj_size=2).double().sample_masks(5, 3),
    }[case]
    with pytest.raises(ValueError) as err:
        m(inp if case.startswith("packed") else x, masks=masks)
    assert "mask" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("backend", ["auto", "compiled", "spec"])
def test_under_autocast_the_masked_recurrence_runs_in_the_parameters_dtype(backend):
    m = MaskedLSTM(3, 4, 2, placement="variational:p=0.3,rec=0.3", bidirectional=True, backend=backend).train()
    x = torch.randn(5, 3, 3)
    masks = m.sample_masks(5, 3, torch.Generator().manual_seed(0))
    plain, (h, c) = m(x, masks=masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (ha, ca) = m(x.bfloat16(), masks=masks)
        packed, _ = m(pack_padded_sequence(x.bfloat16(), [5, 3, 2]), masks=masks)
    assert out.dtype == ha.dtype == ca.dtype == packed.data.dtype == torch.float32
    torch.testing.assert_close(out, m(x.bfloat16().float(), masks=masks)[0], rtol=0, atol=0)


def test_nn_lstm_attributes_are_there():
    ref, ours = pair(placement="variational", bidirectional=True, proj_size=2)
    assert isinstance(ours, nn.LSTM)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert ours._all_weights == ref._all_weights
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == [[tuple(w.shape) for w in ws] for ws in ref.all_weights]
    assert [tuple(w.shape) for w in ours._flat_weights] == [tuple(w.shape) for w in ref._flat_weights]
    x = torch.randn(5, 3, 4, dtype=F64)
    assert ours.get_expected_hidden_size(x, None) == ref.get_expected_hidden_size(x, None) == (4, 3, 2)
    hx = (torch.zeros(4, 3, 2, dtype=F64), torch.zeros(4, 3, 5, dtype=F64))
    ours.check_forward_args(x, hx, None)
    perm = torch.tensor([2, 0, 1])
    assert all(torch.equal(u, v) for u, v in zip(ours.permute_hidden(hx, perm), ref.permute_hidden(hx, perm)))
    assert "bidirectional=True" in repr(ours) and "proj_size=2" in repr(ours) and "placement='variational" in repr(ours)


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "parametrize"])
def test_weight_reparametrisations_work_and_match_nn_lstm(wrap):
    """weight_norm, spectral_norm and parametrizations of weight_hh, on nn.LSTM and on MaskedLSTM alike."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    modules = pair(placement="none", backend="compiled")  # compiled: this module's layers, not nn.LSTM's call
    for m in modules:
        torch.manual_seed(0)
        if wrap == "weight_norm":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch prefers the parametrization now
                torch.nn.utils.weight_norm(m, "weight_hh_l0")
        elif wrap == "spectral_norm":
            torch.nn.utils.spectral_norm(m, "weight_hh_l0")
        else:
            parametrize.register_parametrization(m, "weight_hh_l0", Double())
        m.eval()
    x = rand(5, 3, 4, seed=0)
    (a, (ha, _)), (b, (hb, _)) = modules[0](x), modules[1](x)
    torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(ha, hb, **TOL)
    # and with masks in training: the reparametrised weight is the one masked
    masked = MaskedLSTM(4, 5, 2, placement="variational:p=0.2,rec=0.3").to(F64).train()
    parametrize.register_parametrization(masked, "weight_hh_l0", Double())
    out, _ = masked(x, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert masked.parametrizations.weight_hh_l0.original.grad.abs().sum() > 0


def test_an_awd_style_weight_drop_wrapper_works():
    """The wrapper of salesforce/awd-lstm-lm: deletes the raw weight, sets a dropped copy before each call."""
    class WeightDrop(nn.Module):
        def __init__(self, module, name, p):
            super().__init__()
            self.module, self.name, self.p = module, name, p
            w = getattr(module, name)
            del module._parameters[name]
            module.register_parameter(name + "_raw", nn.Parameter(w.data))

        def forward(self, *args):
            raw = getattr(self.module, self.name + "_raw")
            setattr(self.module, self.name, nn.functional.dropout(raw, self.p, self.training))
            return self.module(*args)

    for module in pair(placement="none"):
        wd = WeightDrop(module, "weight_hh_l0", 0.5).train()
        torch.manual_seed(0)
        out, _ = wd(rand(5, 3, 4, seed=0))
        out.sum().backward()
        assert module.weight_hh_l0_raw.grad is not None
    # MaskedLSTM's own layers read the dropped weight: its output is nn.LSTM's on the same drop
    ref, ours = pair(placement="none", backend="compiled")
    outs = []
    for module in (ref, ours):
        wd = WeightDrop(module, "weight_hh_l0", 0.5).train()
        torch.manual_seed(0)
        outs.append(wd(rand(5, 3, 4, seed=0))[0])
    torch.testing.assert_close(outs[0], outs[1], **TOL)


# --- higher-order gradients -----------------------------------------------------------------------------


def test_gradcheck_and_gradgradcheck_on_the_spec_with_masks():
    m = MaskedLSTM(2, 3, 1, placement="variational:p=0.2,rec=0.3", backend="spec", bidirectional=True).to(F64)
    masks = m.sample_masks(3, 2, torch.Generator().manual_seed(0))
    x = rand(3, 2, 2, seed=0, grad=True)
    fn = lambda x: m(x, masks=masks)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("backend", ["auto", "spec"])  # auto hands a mask-free pass to nn.LSTM; spec is ours
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_and_gradgradcheck_without_masks(packed, backend):
    m = MaskedLSTM(2, 3, 1, bidirectional=True, backend=backend).to(F64)
    x = rand(3, 2, 2, seed=0, grad=True)
    if packed:
        fn = lambda x: m(pack_padded_sequence(x, [3, 2]))[0].data  # noqa: E731
    else:
        fn = lambda x: m(x)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("backend", ["compiled", "triton"])
def test_a_double_backward_through_a_first_order_backend_raises_naming_the_spec(backend):
    if backend == "triton":
        pytest.importorskip("kernels.triton_lstm", reason="triton is not installed")
    m = MaskedLSTM(2, 3, 1, placement="variational:p=0.2,rec=0.3", backend=backend).to(F64)
    masks = m.sample_masks(3, 2, torch.Generator().manual_seed(0))
    x = rand(3, 2, 2, seed=0, grad=True)
    out, _ = m(x, masks=masks)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)  # first order: fine
    spec = MaskedLSTM(2, 3, 1, placement="variational:p=0.2,rec=0.3", backend="spec").to(F64)
    spec.load_state_dict(m.state_dict())
    (g_spec,) = torch.autograd.grad(spec(x, masks=masks)[0].pow(2).sum(), x, create_graph=True)
    torch.testing.assert_close(g, g_spec, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="backend='spec'") as err:
        g.sum().backward()
    assert "\n" not in str(err.value)


# --- whole-model saves ----------------------------------------------------------------------------------------


class Tagger(nn.Module):
    """A pytorch/examples-style model: embedding, bidirectional LSTM over packed input, linear head."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.embed = nn.Embedding(20, 4)
        self.rnn = rnn
        self.head = nn.Linear(2 * 5, 3)

    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.embed(ids), lengths, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out)
        return self.head(out)


def test_a_whole_model_saves_and_loads_under_weights_only_with_the_documented_list():
    torch.manual_seed(0)
    model = Tagger(MaskedLSTM(4, 5, 2, bidirectional=True, placement="zoneout:p=0.1,zc=0.2,zh=0.1"))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([Tagger, nn.Embedding, nn.Linear]):  # no file runs code:
        with pytest.raises(Exception, match="MaskedLSTM"):  # MaskedLSTM is not allowed by default
            torch.load(buf, weights_only=True)
    buf.seek(0)
    with torch.serialization.safe_globals([Tagger, nn.Embedding, nn.Linear, *SAFE_GLOBALS]):
        loaded = torch.load(buf, weights_only=True)
    assert loaded.rnn.placement == model.rnn.placement and loaded.rnn.backend == model.rnn.backend
    ids, lengths = torch.randint(20, (6, 3)), [6, 2, 4]
    model.eval(), loaded.eval()
    assert torch.equal(model(ids, lengths), loaded(ids, lengths))


def test_a_pytorch_examples_style_model_trains_saves_and_reloads_with_only_the_class_changed():
    torch.manual_seed(0)
    model = Tagger(MaskedLSTM(4, 5, 2, bidirectional=True, dropout=0.2, placement="variational:p=0.2,rec=0.2"))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(20, (7, 8), generator=g)
    lengths = torch.randint(1, 8, (8,), generator=g).tolist()
    tags = ids % 3  # learnable from the token alone
    losses = []
    for _ in range(30):
        model.train()
        logits = model(ids, lengths)
        mask = torch.arange(logits.shape[0]).unsqueeze(1) < torch.tensor(lengths)
        loss = nn.functional.cross_entropy(logits[mask], tags[: logits.shape[0]][mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = Tagger(MaskedLSTM(4, 5, 2, bidirectional=True, dropout=0.2, placement="variational:p=0.2,rec=0.2"))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    model.eval(), fresh.eval()
    assert torch.equal(model(ids, lengths), fresh(ids, lengths))


def test_the_onednn_linear_is_differentiable_twice():
    """kernels.linear's oneDNN Function (float32 on the CPU) differentiates its own backward correctly."""
    from kernels import linear
    from kernels.gemm import uses_onednn
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g, requires_grad=True)
    w = torch.randn(512, 128, generator=g, requires_grad=True)
    b = torch.randn(512, generator=g, requires_grad=True)
    if not uses_onednn(x, x.numel() * w.shape[0]):
        pytest.skip("oneDNN products are not used on this machine")
    results = []
    for fn in (linear, nn.functional.linear):
        (gx,) = torch.autograd.grad(fn(x, w, b).pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), [x, w, b]))
    for u, v in zip(*results):
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-4 * float(v.abs().max()))  # float32, large sums


class RNNModel(nn.Module):
    """pytorch/examples' word_language_model/model.py RNNModel (LSTM case), with nn.LSTM replaced by MaskedLSTM
    and nothing else changed: encoder, dropout, LSTM, decoder, tied weights, init_hidden."""

    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False, lstm=nn.LSTM, **kw):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = lstm(ninp, nhid, nlayers, dropout=dropout, **kw)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.nhid, self.nlayers = nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def test_pytorch_examples_word_language_model_trains_saves_whole_and_reloads_with_only_the_class_changed():
    torch.manual_seed(0)
    model = RNNModel(30, 16, 16, 2, dropout=0.2, tie_weights=True, lstm=MaskedLSTM, placement="variational:p=0.2,rec=0.2")
    g = torch.Generator().manual_seed(0)
    data = (torch.arange(400) * 7 % 30).view(-1, 4)  # a periodic stream: learnable
    opt = torch.optim.SGD(model.parameters(), lr=20.0)  # examples' default, with its clip of 0.25
    first = last = None
    for epoch in range(15):
        model.train()
        hidden = model.init_hidden(4)
        for i in range(0, data.size(0) - 1, 20):  # examples' get_batch and repackage_hidden
            x, y = data[i : i + 20], data[i + 1 : i + 21]
            x = x[: len(y)]
            hidden = tuple(h.detach() for h in hidden)
            model.zero_grad()
            out, hidden = model(x, hidden)
            loss = nn.functional.nll_loss(out, y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            first = loss.item() if first is None else first
            last = loss.item()
    assert last < 0.5 * first
    buf = io.BytesIO()
    torch.save(model, buf)  # examples saves the whole model
    buf.seek(0)
    with torch.serialization.safe_globals([RNNModel, nn.Dropout, nn.Embedding, nn.Linear, *SAFE_GLOBALS]):
        loaded = torch.load(buf, weights_only=True)
    model.eval(), loaded.eval()
    x = data[:20]
    a, _ = model(x, model.init_hidden(4))
    b, _ = loaded(x, loaded.init_hidden(4))
    assert torch.equal(a, b) and loaded.rnn.placement.spec == model.rnn.placement.spec
