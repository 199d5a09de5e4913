"""probe.model.masked_lstm: MaskedLSTM is torch.nn.LSTM without masks, and the loop spec with them.

- without masks: outputs and every gradient equal nn.LSTM's, over random
  shapes, biases on and off, batch-first or not, with and without a state;
- state dicts and initialisation are nn.LSTM's, both ways;
- with each placement's masks: equal to a direct computation with
  ``kernels.reference.lstm_layer_loop`` (the spec) on the same masks;
- evaluation is deterministic: nn.LSTM, or zoneout's expectation;
- nn.LSTM's own ``dropout`` between layers; a tiny model trains; bad
  arguments give one-line errors; LanguageModel shares the layer code.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import probe.model.language_model
from kernels import RecurrentMasks
from kernels.reference import lstm_layer_loop
from probe.model.masked_lstm import LayerMasks, LSTMMasks, MaskedLSTM, masked_lstm_layer
from probe.model.language_model import LanguageModel, ModelConfig
from probe.placements import RECURRENT_SITES, UNSCALED_SITES, ZONEOUT_SITES, PlacementError, Scope, Site, parse_placement

F64 = torch.float64
TOL = dict(rtol=0, atol=1e-10)

# Every placement with every one of its sites active (emb, which MaskedLSTM refuses, stays 0).
PLACEMENTS = [
    "zaremba:p=0.3",
    "naive:p=0.3,rec=0.4",
    "variational:p=0.3,rec=0.4",
    "semeniuta:p=0.3,rec=0.4",
    "semeniuta:p=0.3,rec=0.4,scope=sequence",
    "zoneout:p=0.3,zc=0.3,zh=0.4",
    "rnndrop:p=0.3,cell=0.3",
    "weight_drop:p=0.3,w=0.4",
]


def randn(*shape, seed, grad=True):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return t.requires_grad_(grad)


def make_inputs(T, B, I, H, L, *, batch_first=False, with_state=True, seed=0):
    x = randn(*((B, T, I) if batch_first else (T, B, I)), seed=seed)
    hx = (randn(L, B, H, seed=seed + 1), randn(L, B, H, seed=seed + 2)) if with_state else None
    return x, hx


def pair(I, H, L, *, seed=0, **kw):
    """An nn.LSTM and a MaskedLSTM (placement none) holding its state dict, both float64."""
    torch.manual_seed(seed)
    ref = nn.LSTM(I, H, L, **kw).to(F64)
    ours = MaskedLSTM(I, H, L, **kw).to(F64)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def outputs_and_grads(module, x, hx, seed=7, **kw):
    """(output, h_n, c_n) and the gradients of a random projection of all three, by leaf name."""
    out, (h_n, c_n) = module(x, hx, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=F64)).sum() for t in (out, h_n, c_n))
    leaves = {"input": x, **({"h_0": hx[0], "c_0": hx[1]} if hx is not None else {}), **dict(module.named_parameters())}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return (out.detach(), h_n.detach(), c_n.detach()), dict(zip(leaves, grads))


def assert_same(a, b, **tol):
    (outs_a, grads_a), (outs_b, grads_b) = a, b
    for name, u, v in zip(("output", "h_n", "c_n"), outs_a, outs_b):
        assert u.shape == v.shape, name
        torch.testing.assert_close(u, v, **(tol or TOL), msg=lambda m, name=name: f"{name}: {m}")
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], **(tol or TOL), msg=lambda m, name=name: f"grad {name}: {m}")


def spec_forward(module: MaskedLSTM, x, hx, masks: LSTMMasks):
    """The direct computation, time-major: each layer by hand, the recurrence by the loop spec."""
    h0, c0 = hx
    h_n, c_n = [], []
    for k in range(module.num_layers):
        if k > 0 and masks.between and masks.between[k - 1] is not None:
            x = x * masks.between[k - 1]
        m = masks.layers[k]
        if m.input is not None:
            x = x * m.input
        gx = x @ getattr(module, f"weight_ih_l{k}").t()
        if module.bias:
            gx = gx + getattr(module, f"bias_ih_l{k}") + getattr(module, f"bias_hh_l{k}")
        w_hh = getattr(module, f"weight_hh_l{k}")
        if m.weight is not None:
            w_hh = w_hh * m.weight
        x, (h, c) = lstm_layer_loop(gx, h0[k], c0[k], w_hh, m.recurrent)
        h_n.append(h)
        c_n.append(c)
    out = x if masks.output is None else x * masks.output
    return out, (torch.stack(h_n), torch.stack(c_n))


class Spec(nn.Module):
    """``spec_forward`` as a module over ``module``'s parameters, batch-first like it."""

    def __init__(self, module, masks):
        super().__init__()
        self.module, self.masks = module, masks

    def forward(self, x, hx):
        bf = self.module.batch_first
        out, state = spec_forward(self.module, x.transpose(0, 1) if bf else x, hx, self.masks)
        return (out.transpose(0, 1) if bf else out), state

    def named_parameters(self, *a, **kw):
        return self.module.named_parameters(*a, **kw)


def no_masks(L):
    return LSTMMasks([LayerMasks(None, None, RecurrentMasks()) for _ in range(L)])


# --- without masks: nn.LSTM ---------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 7), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 6), L=st.integers(1, 3),
    bias=st.booleans(), batch_first=st.booleans(), with_state=st.booleans(), seed=st.integers(0, 2**16),
)
def test_without_masks_outputs_and_every_gradient_are_nn_lstms(T, B, I, H, L, bias, batch_first, with_state, seed):
    ref, ours = pair(I, H, L, seed=seed, bias=bias, batch_first=batch_first)
    x, hx = make_inputs(T, B, I, H, L, batch_first=batch_first, with_state=with_state, seed=seed)
    expected = outputs_and_grads(ref, x, hx)
    assert_same(outputs_and_grads(ours.train(), x, hx), expected)
    assert_same(outputs_and_grads(ours.eval(), x, hx), expected)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_is_nn_lstms(with_state, batch_first):
    T, I, H, L = 5, 3, 4, 2
    ref, ours = pair(I, H, L, batch_first=batch_first)
    x = randn(T, I, seed=3)
    hx = (randn(L, H, seed=4), randn(L, H, seed=5)) if with_state else None
    got, expected = outputs_and_grads(ours, x, hx), outputs_and_grads(ref, x, hx)
    assert got[0][0].shape == (T, H) and got[0][1].shape == (L, H)
    assert_same(got, expected)


def test_a_float32_module_matches_nn_lstm():
    torch.manual_seed(0)
    ref = nn.LSTM(6, 8, 2, batch_first=True)
    ours = MaskedLSTM(6, 8, 2, batch_first=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 9, 6)
    with torch.no_grad():
        (a, (ha, ca)), (b, (hb, cb)) = ours(x), ref(x)
    for u, v in ((a, b), (ha, hb), (ca, cb)):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


# --- parameters: names, shapes, state dicts, initialisation ----------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_state_dicts_round_trip_both_ways(bias):
    torch.manual_seed(0)
    a = nn.LSTM(3, 5, 3, bias=bias)
    m = MaskedLSTM(3, 5, 3, bias=bias)
    # Same names, order and shapes (so optimizer states line up as well).
    assert [(n, p.shape) for n, p in m.named_parameters()] == [(n, p.shape) for n, p in a.named_parameters()]
    assert bias or not any("bias" in n for n in m.state_dict())
    m.load_state_dict(a.state_dict())  # strict
    b = nn.LSTM(3, 5, 3, bias=bias)
    b.load_state_dict(m.state_dict())  # strict
    for name, p in a.state_dict().items():
        assert torch.equal(m.state_dict()[name], p) and torch.equal(b.state_dict()[name], p), name
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])
        torch.testing.assert_close(m(x)[0], a(x)[0], rtol=1e-5, atol=1e-6)


def test_a_mismatched_state_dict_is_refused():
    with pytest.raises(RuntimeError):
        MaskedLSTM(3, 5, 2).load_state_dict(nn.LSTM(3, 5, 2, bias=False).state_dict())


def test_initialisation_is_nn_lstms():
    """Uniform in +-1/sqrt(H), parameter by parameter in nn.LSTM's order: the same seed gives the same weights."""
    torch.manual_seed(11)
    a = nn.LSTM(7, 9, 2)
    torch.manual_seed(11)
    m = MaskedLSTM(7, 9, 2, placement="variational")
    for (name, p), (_, q) in zip(a.named_parameters(), m.named_parameters()):
        assert torch.equal(p, q), name
        assert q.abs().max() <= 9**-0.5 and q.abs().max() > 0.9 * 9**-0.5


def test_device_and_dtype_arguments():
    m = MaskedLSTM(3, 4, 2, device="cpu", dtype=F64)
    assert all(p.dtype == F64 for p in m.parameters())
    out, (h, c) = m(torch.randn(5, 2, 3, dtype=F64))
    assert out.dtype == h.dtype == F64 and out.shape == (5, 2, 4) and h.shape == c.shape == (2, 2, 4)


# --- with masks: the loop spec ----------------------------------------------------------


def site_masks(masks: LSTMMasks, k: int) -> dict:
    lm = masks.layers[k]
    return {Site.INPUT: lm.input, Site.WEIGHT: lm.weight, Site.OUTPUT: masks.output, **dict(zip(RECURRENT_SITES, lm.recurrent))}


def check_masks(placement, masks: LSTMMasks, T, B, I, H, dropout):
    """Each active site has a mask of its scope's shape and its kind's values; every other site none."""
    L = len(masks.layers)
    for k in range(L):
        for site, mask in site_masks(masks, k).items():
            if not placement.active(site):
                assert mask is None, site
                continue
            sm = placement.sites[site]
            D = I if site is Site.INPUT and k == 0 else H
            expected = {Scope.STEP: (T, B, D), Scope.SEQUENCE: (B, D), Scope.BATCH: (4 * H, H)}[sm.scope]
            assert tuple(mask.shape) == expected, site
            binary = site in ZONEOUT_SITES or site in UNSCALED_SITES
            assert set(mask.unique().tolist()) == ({0.0, 1.0} if binary else {0.0, 1 / (1 - sm.rate)}), site
    assert len(masks.between) == L - 1
    for m in masks.between:
        if dropout == 0:
            assert m is None
        else:
            assert m.shape == (T, B, H) and set(m.unique().tolist()) == {0.0, 1 / (1 - dropout)}
            assert not torch.equal(m[0], m[1])  # a fresh mask every step, as nn.LSTM


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("spec", PLACEMENTS)
def test_with_masks_it_is_the_loop_spec(spec, batch_first):
    T, B, I, H, L, dropout = 5, 3, 4, 6, 2, 0.25
    torch.manual_seed(0)
    m = MaskedLSTM(I, H, L, batch_first=batch_first, dropout=dropout, placement=spec).to(F64).train()
    x, hx = make_inputs(T, B, I, H, L, batch_first=batch_first)
    masks = m.sample_masks(T, B, torch.Generator().manual_seed(3))
    check_masks(m.placement, masks, T, B, I, H, dropout)
    got = outputs_and_grads(m, x, hx, masks=masks)
    assert_same(got, outputs_and_grads(Spec(m, masks), x, hx))
    # A training forward draws the same masks from the same generator, once per call.
    drawn = outputs_and_grads(m, x, hx, generator=torch.Generator().manual_seed(3))
    assert_same(drawn, got, rtol=0, atol=0)
    # The masks matter.
    plain, _ = outputs_and_grads(m, x, hx, masks=no_masks(L))
    assert not torch.allclose(plain[0], got[0][0])


@pytest.mark.parametrize("spec", PLACEMENTS)
def test_explicit_masks_are_used_whatever_the_mode(spec):
    m = MaskedLSTM(3, 4, 2, placement=spec).to(F64)
    x, hx = make_inputs(4, 2, 3, 4, 2)
    masks = m.sample_masks(4, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, (ha, ca) = m.train()(x, hx, masks=masks)
        b, (hb, cb) = m.eval()(x, hx, masks=masks)
    assert torch.equal(a, b) and torch.equal(ha, hb) and torch.equal(ca, cb)


def test_training_draws_fresh_masks_each_call_and_from_the_generator():
    m = MaskedLSTM(3, 4, 2, placement="variational").to(F64).train()
    x, hx = make_inputs(6, 2, 3, 4, 2)
    with torch.no_grad():
        a = m(x, hx, generator=torch.Generator().manual_seed(1))[0]
        b = m(x, hx, generator=torch.Generator().manual_seed(1))[0]
        c = m(x, hx, generator=torch.Generator().manual_seed(2))[0]
        torch.manual_seed(5)
        d = m(x, hx)[0]
        e = m(x, hx)[0]  # the global RNG moved on
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(d, e)


def test_weight_drop_never_writes_the_parameter():
    m = MaskedLSTM(3, 4, 2, placement="weight_drop:p=0,w=0.5").to(F64).train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    masks = m.sample_masks(5, 2, torch.Generator().manual_seed(0))
    out, _ = m(make_inputs(5, 2, 3, 4, 2)[0], masks=masks)
    out.sum().backward()
    for k in range(2):
        w = getattr(m, f"weight_hh_l{k}")
        assert torch.equal(w, before[f"weight_hh_l{k}"])
        dropped = masks.layers[k].weight == 0
        assert dropped.any() and not w.grad[dropped].any() and w.grad[~dropped].abs().sum() > 0


# --- evaluation -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", PLACEMENTS)
def test_evaluation_is_deterministic_and_the_no_mask_function(spec):
    """Dropout sites are the identity at evaluation (nn.LSTM's function); zoneout is its expectation."""
    T, B, I, H, L = 5, 3, 4, 6, 2
    ref, _ = pair(I, H, L, dropout=0.25)
    m = MaskedLSTM(I, H, L, dropout=0.25, placement=spec).to(F64)
    m.load_state_dict(ref.state_dict())
    m.eval()
    ref.eval()
    x, hx = make_inputs(T, B, I, H, L)
    a = outputs_and_grads(m, x, hx)
    assert_same(outputs_and_grads(m, x, hx), a, rtol=0, atol=0)
    pl = m.placement
    if pl.name == "zoneout":
        zh, zc = pl.rate(Site.ZONEOUT_H), pl.rate(Site.ZONEOUT_C)
        expectation = RecurrentMasks(
            zoneout_h=torch.full((B, H), zh, dtype=F64), zoneout_c=torch.full((B, H), zc, dtype=F64)
        )
        masks = LSTMMasks([LayerMasks(None, None, expectation) for _ in range(L)])
        assert_same(a, outputs_and_grads(Spec(m, masks), x, hx))
        assert not torch.allclose(a[0][0], ref(x, hx)[0])
    else:
        assert_same(a, outputs_and_grads(ref, x, hx))


# --- nn.LSTM's dropout between layers ---------------------------------------------------------


def test_between_layer_dropout_is_nn_lstms_where_it_is_deterministic():
    """dropout=1 zeroes every layer's input but the first's in training mode: exactly nn.LSTM's training forward."""
    ref, ours = pair(3, 4, 3, dropout=1.0)
    x, hx = make_inputs(5, 2, 3, 4, 3)
    assert_same(outputs_and_grads(ours.train(), x, hx), outputs_and_grads(ref.train(), x, hx))
    assert_same(outputs_and_grads(ours.eval(), x, hx), outputs_and_grads(ref.eval(), x, hx))


def test_between_layer_dropout_spares_the_top_output_and_adds_to_the_placement():
    T, B, I, H, L = 6, 3, 3, 5, 3
    m = MaskedLSTM(I, H, L, dropout=0.5).to(F64).train()
    x, hx = make_inputs(T, B, I, H, L)
    masks = m.sample_masks(T, B, torch.Generator().manual_seed(0))
    check_masks(m.placement, masks, T, B, I, H, 0.5)
    out, (h_n, _) = m(x, hx, masks=masks)
    assert torch.equal(out[-1], h_n[-1])  # no dropout after the last layer, as nn.LSTM
    assert_same(outputs_and_grads(m, x, hx, masks=masks), outputs_and_grads(Spec(m, masks), x, hx))
    assert not torch.allclose(out, m.eval()(x, hx)[0])
    # On top of a placement: both masks reach layer 1's input.
    v = MaskedLSTM(I, H, L, dropout=0.5, placement="variational:p=0.3,rec=0.2").to(F64).train()
    vm = v.sample_masks(T, B, torch.Generator().manual_seed(0))
    check_masks(v.placement, vm, T, B, I, H, 0.5)
    assert_same(outputs_and_grads(v, x, hx, masks=vm), outputs_and_grads(Spec(v, vm), x, hx))


def test_dropout_on_one_layer_warns_like_nn_lstm():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        MaskedLSTM(3, 4, 1, dropout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaskedLSTM(3, 4, 2, dropout=0.2)


# --- a model built from it trains ----------------------------------------------------------


class TinyLM(nn.Module):
    def __init__(self, V, E=8, H=16):
        super().__init__()
        self.embedding = nn.Embedding(V, E)
        self.lstm = MaskedLSTM(E, H, 1, batch_first=True, placement="variational", p=0.1, rec=0.1)
        self.decoder = nn.Linear(H, V)

    def forward(self, ids, generator=None):
        y, _ = self.lstm(self.embedding(ids), generator=generator)
        return self.decoder(y)


def test_a_tiny_model_built_from_it_trains():
    torch.manual_seed(0)
    V = 6
    seq = torch.arange(V).repeat(6)  # 0 1 2 3 4 5 0 1 ...: each token predicts the next
    ids = torch.stack([seq[:24], seq[2:26]])  # two rows, two phases, batch-first
    inputs, targets = ids[:, :-1], ids[:, 1:]
    model = TinyLM(V).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs, g).reshape(-1, V), targets.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0], losses


# --- arguments and errors ---------------------------------------------------------------------


def test_keyword_rates_merge_into_the_spec():
    m = MaskedLSTM(3, 4, placement="variational", rec=0.3, p=0.2)
    assert m.placement == parse_placement("variational:p=0.2,rec=0.3")
    assert MaskedLSTM(3, 4, placement="zoneout:zc=0.1", zh=0.05).placement == parse_placement("zoneout:zc=0.1,zh=0.05")
    assert MaskedLSTM(3, 4, placement="semeniuta", scope="sequence").placement.sites[Site.CELL_UPDATE].scope is Scope.SEQUENCE
    # Keywords override a Placement object's values.
    base = parse_placement("weight_drop:w=0.2")
    assert MaskedLSTM(3, 4, placement=base, w=0.6).placement == parse_placement("weight_drop:w=0.6")
    assert MaskedLSTM(3, 4).placement == parse_placement("none")


def test_positional_arguments_are_nn_lstms():
    m = MaskedLSTM(3, 4, 2, False, True, 0.5)
    assert (m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, m.dropout) == (3, 4, 2, False, True, 0.5)
    assert m.bidirectional is False and m.proj_size == 0
    assert "placement='none'" in repr(m)


@pytest.mark.parametrize(
    "kw,exc,needle",
    [
        (dict(placement="variational:emb=0.1"), ValueError, "'embedding' site"),
        (dict(placement="weight_drop", emb=0.2), ValueError, "'embedding' site"),
        (dict(placement="variational", bogus=0.1), PlacementError, "has no parameter 'bogus'; valid keys: p, rec, emb"),
        (dict(placement="none", p=0.1), PlacementError, "has no parameter 'p'"),
        (dict(placement="variational", p=1.5), PlacementError, "outside [0, 1)"),
        (dict(placement="variational:p=0.2", p=0.3), ValueError, "both in the placement spec"),
        (dict(placement="everywhere"), PlacementError, "unknown placement 'everywhere'"),
        (dict(proj_size=2, backend="compiled", placement="variational"), ValueError, "use backend='auto' or 'spec'"),
        (dict(backend="cuda"), ValueError, "unknown backend 'cuda'; valid backends: auto, spec, compiled, native, triton"),
    ],
)
def test_bad_arguments_give_one_line_errors(kw, exc, needle):
    with pytest.raises(exc) as err:
        MaskedLSTM(**{**dict(input_size=3, hidden_size=4, num_layers=2), **kw})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_masks_give_one_line_errors():
    m = MaskedLSTM(3, 4, 2)
    for masks, needle in ((no_masks(3), "needs 2"), ("masks", "must be an LSTMMasks")):
        with pytest.raises(ValueError) as err:
            m(torch.randn(5, 2, 3), masks=masks)
        assert needle in str(err.value) and "\n" not in str(err.value)


# --- one masked LSTM: LanguageModel shares the layer ------------------------------------------


def test_language_model_runs_the_shared_layer_and_equals_masked_lstm(monkeypatch):
    spec = "variational:p=0.3,rec=0.3"
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=11, emb_size=5, hidden_size=6, num_layers=2, placement=spec)).to(F64)
    m = MaskedLSTM(5, 6, 2, placement=spec).to(F64)
    with torch.no_grad():
        for k, layer in enumerate(lm.layers):
            getattr(m, f"weight_ih_l{k}").copy_(layer.w_ih)
            getattr(m, f"weight_hh_l{k}").copy_(layer.w_hh)
            getattr(m, f"bias_ih_l{k}").copy_(layer.bias)
            getattr(m, f"bias_hh_l{k}").zero_()
    T, B = 6, 3
    lm_masks = lm.sample_masks(T, B, torch.Generator().manual_seed(4))
    m_masks = m.sample_masks(T, B, torch.Generator().manual_seed(4))
    # The same seed draws the same layer masks in both.
    for a, b in zip(lm_masks.layers, m_masks.layers):
        assert torch.equal(a.input, b.input) and all(torch.equal(u, v) for u, v in zip(a.recurrent, b.recurrent) if u is not None)
    ids = torch.randint(11, (T, B), generator=torch.Generator().manual_seed(1))
    calls = []

    def counting(*a, **kw):
        calls.append(1)
        return masked_lstm_layer(*a, **kw)

    monkeypatch.setattr(probe.model.language_model, "masked_lstm_layer", counting)
    with torch.no_grad():
        _, state, hidden = lm(ids, masks=lm_masks, return_hidden=True)
        out, (h_n, c_n) = m(lm.embedding(ids), masks=LSTMMasks(lm_masks.layers, lm_masks.output))
    assert len(calls) == 2  # LanguageModel's layers are the shared function's
    torch.testing.assert_close(out, hidden[-1] * lm_masks.output, **TOL)
    torch.testing.assert_close(h_n, torch.stack([h for h, _ in state]), **TOL)
    torch.testing.assert_close(c_n, torch.stack([c for _, c in state]), **TOL)


# --- backends -----------------------------------------------------------------------------------


def test_the_triton_backend_computes_the_same_function():
    """Triton's kernels (the interpreter on a CPU) on the same masks as the reference."""
    pytest.importorskip("kernels.triton_lstm", reason="triton is not installed")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    T, B, I, H, L = 4, 2, 3, 4, 2
    torch.manual_seed(0)
    ref = MaskedLSTM(I, H, L, placement="zoneout:p=0.2,zc=0.3,zh=0.3", dropout=0.3, backend="compiled").to(device, F64)
    tri = MaskedLSTM(I, H, L, placement="zoneout:p=0.2,zc=0.3,zh=0.3", dropout=0.3, backend="triton").to(device, F64)
    tri.load_state_dict(ref.state_dict())
    masks = ref.sample_masks(T, B, torch.Generator().manual_seed(0), device="cpu")
    masks = LSTMMasks(
        [LayerMasks(lm.input.to(device), None, RecurrentMasks(*(None if u is None else u.to(device) for u in lm.recurrent))) for lm in masks.layers],
        masks.output.to(device), [u.to(device) for u in masks.between],
    )
    x = torch.randn(T, B, I, dtype=F64, device=device, requires_grad=True)
    outs = []
    for mod in (ref, tri):
        out, (h, c) = mod(x, masks=masks)
        (gx,) = torch.autograd.grad((out.sum() + h.sum() + c.sum()), [x])
        outs.append((out, h, c, gx))
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_auto_runs_triton_and_matches_nn_lstm():
    torch.manual_seed(0)
    ref = nn.LSTM(16, 32, 2, batch_first=True).cuda()
    ours = MaskedLSTM(16, 32, 2, batch_first=True).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 12, 16, device="cuda")
    with torch.no_grad():
        (a, (ha, ca)), (b, (hb, cb)) = ours(x), ref(x)
    for u, v in ((a, b), (ha, hb), (ca, cb)):
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-4)
    out, _ = MaskedLSTM(16, 32, 2, placement="variational").cuda().train()(x)
    assert out.shape == (4, 12, 32) and torch.isfinite(out).all()
