"""probe.model.language_model: shapes, Zaremba's initialisation, weight tying, carried state, and where each mask acts.

Mask-site tests pass ``masks=`` explicitly with one site set to a value whose
effect is known exactly (all zeros, all ones) and every other site empty, so
each test isolates one site of the forward pass.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels import RecurrentMasks
from probe.model.language_model import LanguageModel, LayerMasks, ModelConfig, ModelMasks, detach_state
from probe.placements import PLACEMENT_NAMES, PlacementError

V, E, H, L = 17, 6, 5, 2


def make_model(placement="none", *, dtype=torch.float64, seed=0, **kw) -> LanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{**dict(vocab_size=V, emb_size=E, hidden_size=H, num_layers=L, placement=placement), **kw})
    return LanguageModel(config).to(dtype)


def ids_of(T, B, seed=0, vocab=V):
    return torch.randint(vocab, (T, B), generator=torch.Generator().manual_seed(seed))


def no_masks(model: LanguageModel) -> ModelMasks:
    return ModelMasks(None, [LayerMasks(None, None, RecurrentMasks()) for _ in model.layers], None)


def with_recurrent(model: LanguageModel, **fields) -> ModelMasks:
    """Masks holding only the given recurrent-site masks, the same in every layer."""
    return ModelMasks(None, [LayerMasks(None, None, RecurrentMasks(**fields)) for _ in model.layers], None)


def random_state(model, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(B, H, generator=g, dtype=torch.float64), torch.randn(B, H, generator=g, dtype=torch.float64))
        for _ in model.layers
    ]


# --- shapes and construction ------------------------------------------------


@pytest.mark.parametrize("vocab_size", [50, 10_000], ids=["char-level", "word-level"])
def test_forward_shapes(vocab_size):
    model = make_model(vocab_size=vocab_size, dtype=torch.float32)
    T, B = 7, 3
    logits, state, hidden = model(ids_of(T, B, vocab=vocab_size), return_hidden=True)
    assert logits.shape == (T, B, vocab_size)
    assert len(state) == L and all(h.shape == c.shape == (B, H) for h, c in state)
    assert len(hidden) == L and all(x.shape == (T, B, H) for x in hidden)
    # The final state is the last step of each layer's hidden states.
    assert all(torch.equal(h, x[-1]) for (h, _), x in zip(state, hidden))


@pytest.mark.parametrize("spec", ["none", "zoneout:p=0.2,zc=0.3,zh=0.3", "naive:p=0.3,rec=0.3"])
def test_last_only_decodes_the_last_step_alone(spec):
    model = make_model(placement=spec)
    ids = ids_of(6, 3)
    masks = model.sample_masks(6, 3, torch.Generator().manual_seed(0), training=True)
    full, state = model(ids, masks=masks)
    last, state_last = model(ids, masks=masks, last_only=True)
    assert last.shape == (1, 3, full.shape[-1])
    torch.testing.assert_close(last, full[-1:], rtol=0, atol=1e-12)
    assert all(torch.equal(h, u) and torch.equal(c, v) for (h, c), (u, v) in zip(state, state_last))


def test_single_layer_and_single_step():
    model = make_model(num_layers=1)
    logits, state = model(ids_of(1, 1))
    assert logits.shape == (1, 1, V) and len(state) == 1


def test_init_is_uniform_within_init_scale():
    s = 0.05
    model = make_model(init_scale=s, vocab_size=400, emb_size=64, hidden_size=64, dtype=torch.float32)
    for name, p in model.named_parameters():
        assert p.abs().max() <= s, name
    big = torch.cat([p.detach().flatten() for p in model.parameters()])
    # Uniform(-s, s): fills the whole interval, mean 0, variance s^2/3 (n > 100k draws).
    assert big.min() < -0.99 * s and big.max() > 0.99 * s
    assert abs(big.mean().item()) < 0.01 * s
    assert abs(big.var().item() - s**2 / 3) < 0.02 * s**2
    # Biases too (Zaremba: every parameter), not only weights.
    assert model.decoder.bias.abs().max() > 0.5 * s and model.layers[0].bias.abs().max() > 0.5 * s


def test_init_state_is_zeros_of_the_model_dtype():
    state = make_model().init_state(4)
    assert len(state) == L
    for h, c in state:
        assert h.shape == c.shape == (4, H) and h.dtype == torch.float64
        assert not h.any() and not c.any()


def test_weight_tying_shares_one_tensor():
    model = make_model(tie_weights=True, emb_size=H)
    assert model.decoder.weight is model.embedding.weight
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})
    n_untied = sum(p.numel() for p in make_model(tie_weights=False, emb_size=H).parameters())
    assert sum(p.numel() for p in model.parameters()) == n_untied - V * H
    # A gradient step through either use updates the one shared matrix.
    logits, _ = model(ids_of(4, 2))
    logits.sum().backward()
    with torch.no_grad():
        model.decoder.weight.add_(1.0)
    assert torch.equal(model.embedding.weight, model.decoder.weight)


def test_weight_tying_with_different_sizes_is_an_error():
    with pytest.raises(ValueError) as err:
        ModelConfig(vocab_size=V, emb_size=E, hidden_size=H, tie_weights=True)
    assert "emb_size=6" in str(err.value) and "hidden_size=5" in str(err.value)


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_layers=0), "num_layers"),
        (dict(init_scale=0.0), "init_scale"),
        (dict(init_scale=-0.1), "init_scale"),
    ],
)
def test_bad_model_config_is_an_error(kw, needle):
    with pytest.raises(ValueError, match=needle):
        ModelConfig(**{**dict(vocab_size=V), **kw})


def test_bad_placement_fails_at_config_time_listing_placements():
    with pytest.raises(PlacementError) as err:
        ModelConfig(vocab_size=V, placement="everywhere")
    assert all(name in str(err.value) for name in PLACEMENT_NAMES)


@pytest.mark.parametrize("shape", [(12,), (3, 2, 1), ()])
def test_ids_of_the_wrong_rank_are_an_error(shape):
    with pytest.raises(ValueError, match=r"ids must be \(T, B\)"):
        make_model()(torch.zeros(shape, dtype=torch.long))


# --- state across windows -----------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, dict(rtol=1e-12, atol=1e-12)), (torch.float32, dict(rtol=1e-5, atol=1e-5))])
def test_state_carried_between_windows_equals_one_long_forward(dtype, tol):
    model = make_model(dtype=dtype).eval()
    ids = ids_of(13, 3)
    with torch.no_grad():
        whole, (state_whole) = model(ids)
        first, state = model(ids[:5])
        second, state = model(ids[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, **tol)
    for (h_a, c_a), (h_b, c_b) in zip(state, state_whole):
        torch.testing.assert_close(h_a, h_b, **tol)
        torch.testing.assert_close(c_a, c_b, **tol)


def test_windows_without_carried_state_differ():
    """The counterpart of the test above: a fresh state at the window boundary changes the result."""
    model = make_model().eval()
    ids = ids_of(13, 3)
    with torch.no_grad():
        whole, _ = model(ids)
        fresh, _ = model(ids[5:])
    assert not torch.allclose(fresh, whole[5:])


def test_detach_state_keeps_values_and_cuts_the_graph():
    model = make_model()
    first_ids = torch.zeros(6, 2, dtype=torch.long)  # token 0 appears only in the first window
    second_ids = torch.randint(1, V, (6, 2), generator=torch.Generator().manual_seed(0))
    _, state = model(first_ids)
    assert all(h.requires_grad and c.requires_grad for h, c in state)
    cut = detach_state(state)
    for (h, c), (hd, cd) in zip(state, cut):
        assert not hd.requires_grad and not cd.requires_grad and hd.grad_fn is None
        assert torch.equal(h, hd) and torch.equal(c, cd)

    def grad_of_token0(s):
        model.zero_grad()
        logits, _ = model(second_ids, s)
        logits.sum().backward(retain_graph=True)
        return model.embedding.weight.grad[0].abs().sum().item()

    assert grad_of_token0(state) > 0  # without the cut, the loss reaches the first window
    assert grad_of_token0(cut) == 0.0


# --- where the masks act --------------------------------------------------------


def test_zero_output_mask_leaves_only_the_decoder_bias():
    model = make_model("zaremba")
    masks = no_masks(model)
    masks.output = torch.zeros(4, 3, H, dtype=torch.float64)
    logits, _ = model(ids_of(4, 3), masks=masks)
    assert torch.equal(logits, model.decoder.bias.detach().expand(4, 3, V))


def test_output_mask_scales_the_decoder_input():
    model = make_model()
    ids = ids_of(4, 3)
    mask = (torch.rand(3, H, generator=torch.Generator().manual_seed(2)) < 0.5).double() * 2.0
    masks = no_masks(model)
    masks.output = mask
    logits, _ = model(ids, masks=masks)
    _, _, hidden = model(ids, masks=no_masks(model), return_hidden=True)
    expected = torch.nn.functional.linear(hidden[-1] * mask, model.decoder.weight, model.decoder.bias)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


def test_zero_input_mask_on_the_first_layer_makes_logits_independent_of_the_tokens():
    model = make_model("zaremba")
    masks = no_masks(model)
    masks.layers[0].input = torch.zeros(5, 3, E, dtype=torch.float64)
    a, _ = model(ids_of(5, 3, seed=1), masks=masks)
    b, _ = model(ids_of(5, 3, seed=2), masks=masks)
    assert torch.equal(a, b)
    c, _ = model(ids_of(5, 3, seed=1), masks=no_masks(model))
    d, _ = model(ids_of(5, 3, seed=2), masks=no_masks(model))
    assert not torch.allclose(c, d)


def test_zero_input_mask_on_the_second_layer_cuts_it_off_from_the_first():
    model = make_model()
    masks = no_masks(model)
    masks.layers[1].input = torch.zeros(3, H, dtype=torch.float64)
    a, _ = model(ids_of(5, 3, seed=1), masks=masks)
    b, _ = model(ids_of(5, 3, seed=2), masks=masks)
    assert torch.equal(a, b)


def test_zero_embedding_mask_drops_whole_word_types():
    """Tokens whose types are dropped become indistinguishable, wherever they occur."""
    model = make_model()
    masks = no_masks(model)
    masks.embedding = torch.ones(V, dtype=torch.float64)
    masks.embedding[[3, 8]] = 0
    ids = ids_of(6, 4)
    ids[0, 0], ids[2, 1], ids[5, 3] = 3, 8, 3
    swapped = ids.clone()
    swapped[ids == 3], swapped[ids == 8] = 8, 3
    assert not torch.equal(ids, swapped)
    a, _ = model(ids, masks=masks)
    b, _ = model(swapped, masks=masks)
    assert torch.equal(a, b)
    c, _ = model(ids, masks=no_masks(model))
    d, _ = model(swapped, masks=no_masks(model))
    assert not torch.allclose(c, d)


def test_zero_recurrent_mask_makes_gates_independent_of_the_previous_h():
    model = make_model("naive")
    ids, B = ids_of(6, 3), 3
    state = random_state(model, B)
    perturbed = [(h + 1.0, c) for h, c in state]  # same c0, different h0
    zeros = torch.zeros(6, B, H, dtype=torch.float64)
    masks = with_recurrent(model, recurrent=zeros)
    a, _ = model(ids, state, masks=masks)
    b, _ = model(ids, perturbed, masks=masks)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c, _ = model(ids, state, masks=no_masks(model))
    d, _ = model(ids, perturbed, masks=no_masks(model))
    assert not torch.allclose(c, d)


def test_zero_cell_mask_zeroes_every_hidden_state_even_with_a_nonzero_c0():
    model = make_model("rnndrop")
    state = random_state(model, 3)
    _, new_state, hidden = model(ids_of(5, 3), state, masks=with_recurrent(model, cell=torch.zeros(3, H, dtype=torch.float64)), return_hidden=True)
    for x, (h, c) in zip(hidden, new_state):
        assert not x.any() and not h.any() and not c.any()


def test_zero_cell_update_mask_only_decays_the_carried_cell():
    """Semeniuta's site: dropping g_t keeps c_t = f * c_{t-1}, so memory survives (unlike the cell site)."""
    model = make_model("semeniuta")
    zeros = with_recurrent(model, cell_update=torch.zeros(5, 3, H, dtype=torch.float64))
    _, _, from_zero = model(ids_of(5, 3), model.init_state(3), masks=zeros, return_hidden=True)
    assert all(not x.any() for x in from_zero)  # c0 = 0 stays 0, so h = o * tanh(0) = 0
    state = random_state(model, 3)
    _, new_state, from_c0 = model(ids_of(5, 3), state, masks=zeros, return_hidden=True)
    assert all(x.abs().min() > 0 for x in from_c0)
    for (_, c0), (_, c_T) in zip(state, new_state):
        assert bool((c_T.abs() < c0.abs()).all())  # a forget gate in (0, 1) shrinks it each step


def test_zoneout_h_of_ones_holds_every_layers_h0():
    model = make_model("zoneout")
    state = random_state(model, 3)
    masks = with_recurrent(model, zoneout_h=torch.ones(5, 3, H, dtype=torch.float64))
    _, new_state, hidden = model(ids_of(5, 3), state, masks=masks, return_hidden=True)
    for (h0, _), x, (h_T, _) in zip(state, hidden, new_state):
        assert torch.equal(x, h0.expand(5, 3, H)) and torch.equal(h_T, h0)


def test_zoneout_c_of_ones_holds_every_layers_c0():
    model = make_model("zoneout")
    state = random_state(model, 3)
    masks = with_recurrent(model, zoneout_c=torch.ones(3, H, dtype=torch.float64))
    _, new_state, _ = model(ids_of(5, 3), state, masks=masks, return_hidden=True)
    for (_, c0), (_, c_T) in zip(state, new_state):
        assert torch.equal(c_T, c0)


def test_weight_mask_is_applied_functionally():
    """DropConnect multiplies W_hh inside the forward pass and never writes the parameter."""
    model = make_model("weight_drop:w=0.5").train()
    before = [layer.w_hh.detach().clone() for layer in model.layers]
    masks = model.sample_masks(5, 3, torch.Generator().manual_seed(0))
    masks.embedding, masks.output = None, None
    for layer in masks.layers:
        layer.input = None
    ids = ids_of(5, 3)
    logits, _ = model(ids, masks=masks)
    logits.sum().backward()
    for layer, w, m in zip(model.layers, before, masks.layers):
        assert torch.equal(layer.w_hh, w)
        assert (m.weight == 0).any()
        # The gradient reaches W_hh only through the kept connections.
        assert not layer.w_hh.grad[m.weight == 0].any() and layer.w_hh.grad[m.weight > 0].abs().sum() > 0
    # The same as a model without dropout whose W_hh is W_hh * mask.
    plain = make_model()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer, m in zip(plain.layers, masks.layers):
            layer.w_hh.mul_(m.weight)
        expected, _ = plain(ids)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-12, atol=1e-12)


def test_weight_mask_is_drawn_in_training_forward_without_touching_the_parameter():
    model = make_model("weight_drop:w=0.5").train()
    before = [layer.w_hh.detach().clone() for layer in model.layers]
    with torch.no_grad():
        a, _ = model(ids_of(5, 3), generator=torch.Generator().manual_seed(0))
        b, _ = model(ids_of(5, 3), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    assert all(torch.equal(layer.w_hh, w) for layer, w in zip(model.layers, before))


@pytest.mark.parametrize("name", PLACEMENT_NAMES)
def test_explicit_masks_give_the_same_result_in_train_and_eval_mode(name):
    spec = {"variational": "variational:emb=0.2", "weight_drop": "weight_drop:emb=0.1"}.get(name, name)
    model = make_model(spec)
    masks = model.sample_masks(5, 3, torch.Generator().manual_seed(0), training=True)
    ids = ids_of(5, 3)
    with torch.no_grad():
        trained, train_state = model.train()(ids, masks=masks)
        evaluated, eval_state = model.eval()(ids, masks=masks)
    assert torch.equal(trained, evaluated)
    assert all(torch.equal(a, b) for sa, sb in zip(train_state, eval_state) for a, b in zip(sa, sb))


def test_training_forward_draws_masks_from_the_generator():
    model = make_model("variational").train()
    ids = ids_of(5, 3)
    with torch.no_grad():
        a, _ = model(ids, generator=torch.Generator().manual_seed(4))
        b, _ = model(ids, generator=torch.Generator().manual_seed(4))
        c, _ = model(ids, generator=torch.Generator().manual_seed(5))
        explicit, _ = model(ids, masks=model.sample_masks(5, 3, torch.Generator().manual_seed(4)))
    assert torch.equal(a, b) and torch.equal(a, explicit)
    assert not torch.equal(a, c)


def test_model_config_is_frozen():
    config = ModelConfig(vocab_size=V)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 3


def test_forget_bias_shifts_only_the_forget_gate_biases():
    from probe.model.language_model import LanguageModel, ModelConfig

    def model(forget_bias):
        torch.manual_seed(3)
        return LanguageModel(ModelConfig(vocab_size=11, emb_size=6, hidden_size=5, num_layers=2, init_scale=0.1,
                                         placement="none", forget_bias=forget_bias))

    plain, shifted = model(0.0), model(1.0)
    for a, b in zip(plain.layers, shifted.layers):
        H = 5
        assert torch.allclose(b.bias[H:2 * H] - a.bias[H:2 * H], torch.ones(H))
        assert torch.equal(torch.cat([a.bias[:H], a.bias[2 * H:]]), torch.cat([b.bias[:H], b.bias[2 * H:]]))
        assert torch.equal(a.w_hh, b.w_hh) and torch.equal(a.w_ih, b.w_ih)
