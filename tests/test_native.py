"""The native path: layers without recurrent masks on torch's fused LSTM compute the reference's function.

Forward and every gradient are compared with the reference backend in
float64 (tight) and float32 (oneDNN's own rounding), for random shapes, and
for whole models under the placements whose layers are mask-free
(none, zaremba, weight_drop), in training mode with their masks drawn.
"""

from __future__ import annotations

import pytest
import torch

import kernels.layer
from kernels import RecurrentMasks, lstm_layer, lstm_layer_from_input
from probe.model.language_model import LanguageModel, ModelConfig

TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def layer_inputs(T, B, I, H, dtype, seed, bias=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    return r(T, B, I), r(4 * H, I), (r(4 * H) if bias else None), r(B, H), r(B, H), r(4 * H, H)


def run_and_grad(backend, inputs):
    x, w_ih, bias, h0, c0, w_hh = inputs
    hs, (h, c) = lstm_layer_from_input(x, w_ih, bias, h0, c0, w_hh, backend=backend)
    g = torch.Generator().manual_seed(99)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (hs, h, c)]
    loss = sum((t * w).sum() for t, w in zip((hs, h, c), weights))
    wrt = [t for t in inputs if t is not None]
    return [hs, h, c, *torch.autograd.grad(loss, wrt)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(6))
def test_native_layer_equals_the_reference_forward_and_gradients(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    T, B, I, H = (int(torch.randint(1, hi, (1,), generator=g)) for hi in (12, 6, 9, 9))
    inputs = layer_inputs(T, B, I, H, dtype, seed, bias=seed % 3 != 0)
    native, ref = run_and_grad("native", inputs), run_and_grad("reference", inputs)
    for a, b in zip(native, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype])


def test_auto_takes_the_native_path_exactly_when_no_mask_is_on_the_recurrence(monkeypatch):
    calls = []
    real = kernels.layer.lstm_layer_native
    monkeypatch.setattr(kernels.layer, "lstm_layer_native", lambda *a: calls.append(1) or real(*a))
    x, w_ih, bias, h0, c0, w_hh = layer_inputs(4, 2, 3, 5, torch.float32, 0)
    lstm_layer_from_input(x, w_ih, bias, h0, c0, w_hh)
    assert calls == [1]
    mask = torch.ones(2, 5)
    for name in RecurrentMasks._fields:
        lstm_layer_from_input(x, w_ih, bias, h0, c0, w_hh, **{name: mask})
    assert calls == [1]


def test_native_is_refused_where_it_cannot_run():
    x, w_ih, bias, h0, c0, w_hh = layer_inputs(4, 2, 3, 5, torch.float32, 0)
    with pytest.raises(ValueError, match="without recurrent masks; this one has recurrent"):
        lstm_layer_from_input(x, w_ih, bias, h0, c0, w_hh, recurrent=torch.ones(2, 5), backend="native")
    with pytest.raises(ValueError, match="needs the layer's input x"):
        lstm_layer(torch.zeros(4, 2, 20), h0, c0, w_hh, backend="native")
    half = [t.detach().bfloat16() if t is not None else None for t in (x, w_ih, bias, h0, c0, w_hh)]
    with pytest.raises(ValueError, match="does not run torch.bfloat16 on cpu"):
        lstm_layer_from_input(*half, backend="native")


@pytest.mark.parametrize("placement", ["none", "zaremba:p=0.3", "weight_drop:p=0.3,w=0.3"])
def test_models_of_mask_free_placements_train_the_same_on_both_paths(placement, monkeypatch):
    """One training step's loss and every parameter gradient, masks drawn from one seed on both paths."""
    calls = []
    real = kernels.layer.lstm_layer_native
    monkeypatch.setattr(kernels.layer, "lstm_layer_native", lambda *a: calls.append(1) or real(*a))
    results = []
    for backend in ("auto", "reference"):
        torch.manual_seed(0)
        model = LanguageModel(ModelConfig(vocab_size=13, emb_size=6, hidden_size=7, num_layers=2,
                                          placement=placement, backend=backend)).double()
        ids = torch.randint(13, (9, 4), generator=torch.Generator().manual_seed(1))
        logits, _ = model(ids, generator=torch.Generator().manual_seed(2))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 0).flatten())
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert len(calls) == 2  # both layers of the "auto" model ran natively
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-12, atol=1e-12)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-10, atol=1e-12, msg=name)


def test_a_masked_placement_still_runs_the_masked_recurrence(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels.layer, "lstm_layer_native", lambda *a: calls.append(1))
    model = LanguageModel(ModelConfig(vocab_size=13, emb_size=6, hidden_size=7, num_layers=2,
                                      placement="variational:p=0.3,rec=0.3"))
    model(torch.randint(13, (5, 2)), generator=torch.Generator().manual_seed(0))
    assert calls == []
