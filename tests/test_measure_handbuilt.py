"""probe.measure on hand-wired one-layer networks whose memory is known exactly.

- A delay line (shift register): hidden unit j holds sign(x_{t-j}) at full
  strength, for j up to H-1 >= K. Every lag 1..K is remembered equally, so
  influence and probe bits must be flat in k, and the probe must read each
  remembered binary token almost perfectly (about 1 bit). The memory runs
  through the recurrent connection h_{t-1} -> g, so a per-step recurrent
  mask (naive dropout) erases a token with probability p at every step it
  moves, while Zaremba's masks never touch it in transit.
- An integrator: the input gate is open, W_hh = 0 and the cell adds a small
  token vector every step. With the forget gate saturated open (bias +20,
  sigmoid = 1 in float32) every past token moves c_t by the same kind of
  amount, however old: influence and gradient are flat in k. With the forget
  gate shut (bias -20) h_t depends on x_t alone: everything is ~0 for k >= 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from probe.data.corpus import batchify
from probe.measure import (
    MeasureConfig,
    context_length_curve,
    gradient_sensitivity,
    influence,
    probe_information,
)
from probe.measure.influence import _influence
from probe.measure.stream import Layout, gather_windows, repeat_masks, stream_states
from probe.model.language_model import LanguageModel, ModelConfig

SATURATE = 20.0  # sigmoid(20) rounds to 1 and sigmoid(-20) is ~2e-9 in float32
K = 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: a second OpenMP thread only adds contention with other processes.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _blank(vocab, emb, hidden, placement="none") -> LanguageModel:
    config = ModelConfig(vocab_size=vocab, emb_size=emb, hidden_size=hidden, num_layers=1, placement=placement)
    model = LanguageModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def _gates(H):
    return (slice(k * H, (k + 1) * H) for k in range(4))  # PyTorch's order: i, f, g, o


def delay_line(lags: int = K, placement: str = "none") -> LanguageModel:
    """Two tokens embedded as -1 / +1; unit 0 writes the current token, unit j copies unit j-1."""
    H = lags + 2
    model = _blank(2, 1, H, placement)
    layer = model.layers[0]
    i, f, g, o = _gates(H)
    with torch.no_grad():
        model.embedding.weight[:, 0] = torch.tensor([-1.0, 1.0])
        layer.bias[i], layer.bias[f], layer.bias[o] = SATURATE, -SATURATE, SATURATE  # c_t = g_t, h_t = tanh(c_t)
        layer.w_ih[g.start, 0] = 4.0  # g_0 = tanh(+-4) = +-1
        for j in range(1, H):
            layer.w_hh[g.start + j, j - 1] = 5.0  # g_j = tanh(5 * +-0.76) = +-1: a stable shift
        model.decoder.weight[1] = 1.0  # the logit of token 1 sums every unit
    return model.eval()


def integrator(forget_bias: float, vocab: int = 8, hidden: int = 8, scale: float = 0.05) -> LanguageModel:
    """c_t = sigmoid(forget_bias) * c_{t-1} + tanh(scale * e(x_t)); random embeddings and decoder."""
    model = _blank(vocab, hidden, hidden)
    layer = model.layers[0]
    i, f, g, o = _gates(hidden)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.randn(vocab, hidden, generator=gen))
        layer.bias[i], layer.bias[f], layer.bias[o] = SATURATE, forget_bias, SATURATE
        layer.w_ih[g] = scale * torch.eye(hidden)
        model.decoder.weight.copy_(torch.randn(vocab, hidden, generator=gen))
    return model.eval()


def tokens(vocab: int, n: int = 4000) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(1))


def curve(df, measure, mode="eval", layer=None):
    sel = (df["measure"] == measure) & (df["mode"] == mode) & (df["x_name"] == "lag")
    if layer is not None:
        sel &= df["layer"] == layer
    return df[sel].sort_values("x")["value"].to_numpy()


def scalar(df, measure, mode="eval"):
    (value,) = df[(df["measure"] == measure) & (df["mode"] == mode)]["value"]
    return value


DELAY_CONFIG = MeasureConfig(max_lag=K, influence_windows=400, stream_batch=8, probe_positions=2000)
INTEGRATOR_CONFIG = MeasureConfig(max_lag=K, influence_windows=400, gradient_windows=400, stream_batch=64,
                                  probe_positions=2000, context_lengths=(1, 2, 5, 10), context_targets=300)


def test_delay_line_influence_is_flat_in_lag():
    df = influence(delay_line(), tokens(2), torch.ones(2), DELAY_CONFIG)
    # One of H units flips sign: ||h - h'|| / ||h|| = 2 / sqrt(H), exactly, at every lag.
    assert curve(df, "influence_hidden", layer=0) == pytest.approx([2 / math.sqrt(K + 2)] * K, rel=1e-4)
    kl = curve(df, "influence_kl")
    assert kl.min() > 0.1 and kl.max() / kl.min() < 1.15
    assert scalar(df, "influence_hidden_eval_half_life") == math.inf
    assert abs(scalar(df, "influence_kl_eval_decay_rate")) < 0.03


def test_delay_line_probe_reads_every_remembered_token_at_every_lag():
    df = probe_information(delay_line(), tokens(2), torch.ones(2), DELAY_CONFIG)
    entropy = curve(df, "probe_target_entropy", mode="")
    for measure in ("probe_bits", "probe_bits_cell"):
        bits = curve(df, measure, layer=0)
        assert (bits > 0.97 * entropy).all() and (bits <= entropy).all()
        assert scalar(df, f"{measure}_eval_half_life") == math.inf
    assert (curve(df, "probe_accuracy", layer=0) == 1.0).all()
    # A random network of the same shape keeps less, and less with every lag.
    untrained = curve(df, "probe_bits_untrained", layer=0)
    assert (untrained < curve(df, "probe_bits", layer=0) - 0.1).all() and untrained[-1] < untrained[0]
    assert abs(curve(df, "probe_bits_baseline", mode="")).max() < 0.02


def test_naive_recurrent_masks_erase_the_delay_line_while_zaremba_masks_do_not():
    stream = tokens(2)
    naive = influence(delay_line(placement="naive"), stream, torch.ones(2), DELAY_CONFIG)
    zaremba = influence(delay_line(placement="zaremba"), stream, torch.ones(2), DELAY_CONFIG)
    for measure in ("influence_hidden", "influence_kl"):
        kwargs = {"layer": 0} if measure == "influence_hidden" else {}
        eval_curve = curve(naive, measure, **kwargs)
        assert eval_curve == pytest.approx(curve(zaremba, measure, **kwargs))  # same weights, masks off
        naive_train = curve(naive, measure, "train", **kwargs)
        zaremba_train = curve(zaremba, measure, "train", **kwargs)
        long = slice(3, None)  # lags 4..K
        assert (naive_train[long] < 0.5 * eval_curve[long]).all()
        assert (naive_train[long] < 0.5 * zaremba_train[long]).all()
        # Input dropout hides a token from both copies with the same probability at any lag: flat.
        assert zaremba_train.max() / zaremba_train.min() < 1.5
    assert scalar(naive, "influence_hidden_train_decay_rate", "train") > 0.5
    assert abs(scalar(zaremba, "influence_hidden_train_decay_rate", "train")) < 0.1


def test_retained_influence_is_the_share_of_eval_influence_left_under_training_masks():
    stream = tokens(2)
    naive = influence(delay_line(placement="naive"), stream, torch.ones(2), DELAY_CONFIG)
    none = influence(delay_line(placement="none"), stream, torch.ones(2), DELAY_CONFIG)
    ratio = curve(naive, "influence_kl_retained", "train")
    assert ratio == pytest.approx(curve(naive, "influence_kl", "train") / curve(naive, "influence_kl"))
    assert (ratio[3:] < 0.5).all()  # the delay line's memory runs through h: naive masks erase it
    assert curve(none, "influence_kl_retained", "train") == pytest.approx(1.0)  # no masks, nothing lost


def test_train_mode_masks_are_identical_for_original_and_counterfactual_copies():
    # Replacing every token by itself must change nothing, under any masks, iff the copies share masks.
    model = delay_line(placement="naive")
    stream = tokens(2)
    ends = torch.arange(K + 1, 200)
    windows = gather_windows(stream, ends, K + 1)
    same = windows.flip(0)[1:].clone()
    init = model.init_state(ends.numel())
    kl, dist = _influence(model, windows, same, init, True, DELAY_CONFIG)
    assert (kl == 0).all() and (dist == 0).all()
    masks = repeat_masks(model.sample_masks(K + 1, 3, torch.Generator().manual_seed(0)), K + 1)
    rec = masks.layers[0].recurrent.recurrent  # (T, 3 * (K+1), H)
    for w in range(3):
        block = rec[:, w * (K + 1) : (w + 1) * (K + 1)]
        assert torch.equal(block, block[:, :1].expand_as(block))


def test_integrator_with_open_forget_gate_remembers_every_lag_equally():
    model = integrator(SATURATE)
    stream = tokens(8)
    df = influence(model, stream, torch.ones(8), INTEGRATOR_CONFIG)
    for measure in ("influence_kl", "influence_hidden"):
        values = curve(df, measure)
        assert values.min() > 0 and values.max() / values.min() < 1.2
    grad = gradient_sensitivity(model, stream, INTEGRATOR_CONFIG)
    g = curve(grad, "gradient_norm")
    assert g.min() > 0.01 and g.max() / g.min() < 1.01  # d c_t / d e_{t-k} does not depend on k
    assert scalar(grad, "gradient_norm_eval_half_life") == math.inf


def test_integrator_with_shut_forget_gate_forgets_everything_before_t():
    model = integrator(-SATURATE)
    stream = tokens(8)
    df = influence(model, stream, torch.ones(8), INTEGRATOR_CONFIG)
    for mode in ("eval", "train"):
        assert curve(df, "influence_kl", mode).max() < 1e-8
        assert curve(df, "influence_hidden", mode, layer=0).max() < 1e-6
    assert curve(gradient_sensitivity(model, stream, INTEGRATOR_CONFIG), "gradient_norm").max() < 1e-6
    probe = probe_information(model, stream, torch.ones(8), INTEGRATOR_CONFIG)
    assert abs(curve(probe, "probe_bits", layer=0)).max() < 0.1  # tokens are independent: nothing to read
    # Only the last token matters, so every context length is as good as the whole stream.
    ctx = context_length_curve(model, stream, INTEGRATOR_CONFIG)
    ppl = ctx[ctx["measure"] == "context_ppl"]["value"].to_numpy()
    assert ppl == pytest.approx([scalar(ctx, "full_context_ppl")] * len(ppl), rel=1e-5)
    assert scalar(ctx, "effective_context") == 1.0


@pytest.mark.parametrize("placement", ["none", "zoneout", "naive"])
def test_stream_states_match_stepping_the_model_one_token_at_a_time(placement):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=12, emb_size=8, hidden_size=16, num_layers=2, placement=placement, init_scale=0.5)
    model = LanguageModel(config).eval()
    stream = torch.randint(0, 12, (400,), generator=torch.Generator().manual_seed(2))
    layout = Layout(400, 4)
    positions = torch.tensor([0, 5, 99, 100, 150, 250, 399])
    got = stream_states(model, stream, layout, positions, chunk_tokens=64)  # several chunks
    data, state = batchify(stream, 4), model.init_state(4)
    with torch.no_grad():
        for t in range(layout.rows):
            _, state = model(data[t : t + 1], state, masks=model.sample_masks(1, 4, training=False))
            for j, p in enumerate(positions.tolist()):
                if p % layout.rows == t:
                    for (h, c), (h_ref, c_ref) in zip(got, state):
                        torch.testing.assert_close(h[j], h_ref[p // layout.rows])
                        torch.testing.assert_close(c[j], c_ref[p // layout.rows])


def forgetful(dtype=torch.float32) -> LanguageModel:
    """A random 2-layer network whose forget gates sit near 0.12: influence falls ~5x per lag."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, emb_size=16, hidden_size=32, num_layers=2, init_scale=0.3)
    model = LanguageModel(config)
    with torch.no_grad():
        for layer in model.layers:
            layer.bias[32:64] -= 2.0
    return model.to(dtype).eval()


FAR = 24  # by lag ~15 the KL of this network is at float32 rounding level


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_counterfactual_kl_far_back_is_never_negative(dtype):
    # float32 log-softmax gave about -1e-9 at such lags; in float64 a KL is >= 0 up to float64 rounding.
    config = MeasureConfig(max_lag=FAR, influence_windows=64, stream_batch=8, influence_modes=("eval",))
    stream = torch.randint(0, 20, (4000,), generator=torch.Generator().manual_seed(1))
    kl = curve(influence(forgetful(dtype), stream, torch.ones(20), config), "influence_kl")
    assert kl.shape == (FAR,)
    assert kl[0] > 1e-7 and kl[-1] < 1e-13  # the curve reaches the noise floor
    assert (kl >= -1e-15).all(), kl


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_counterfactual_kl_is_the_float64_kl_of_the_networks_predictions(dtype):
    model = forgetful(dtype)
    stream = torch.randint(0, 20, (400,), generator=torch.Generator().manual_seed(2))
    ends = torch.arange(FAR, 400, 37)
    windows = gather_windows(stream, ends, FAR + 1)
    replacements = (windows.flip(0)[1:] + 1 + torch.arange(FAR).unsqueeze(1) % 5) % 20  # never the original
    init = model.init_state(ends.numel())
    kl, _ = _influence(model, windows, replacements, init, False, MeasureConfig(max_lag=FAR))
    # Directly: each lag's counterfactual windows in a batch of their own, the KL in float64 throughout.
    eval_masks = model.sample_masks(FAR + 1, ends.numel(), training=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(windows, init, masks=eval_masks)[0][-1].double(), -1)
        expected = []
        for k in range(1, FAR + 1):
            cf = windows.clone()
            cf[FAR - k] = replacements[k - 1]
            logq = torch.log_softmax(model(cf, init, masks=eval_masks)[0][-1].double(), -1)
            expected.append(float((logp.exp() * (logp - logq)).sum(-1).mean()))
    assert str(kl.dtype) == "float64"
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    atol = 1e-15 if dtype == torch.float64 else 1e-13  # float32 logits of other batch shapes round differently
    assert kl == pytest.approx(expected, rel=rtol, abs=atol)
    assert (kl >= -1e-15).all()


def majority_stream(window: int, n: int = 4000, flip: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Binary tokens where x_t is the majority of the ``window`` tokens before it (odd window), flipped with
    probability ``flip``: a delay line of that many units predicts it from exactly those tokens."""
    g = torch.Generator().manual_seed(seed)
    x = [int(v) for v in torch.randint(0, 2, (window,), generator=g)]
    noise = torch.rand(n, generator=g)
    for t in range(window, n):
        majority = int(sum(2 * v - 1 for v in x[t - window:t]) > 0)
        x.append(majority if noise[t] >= flip else 1 - majority)
    return torch.tensor(x)


@pytest.mark.parametrize("kind", ["shuffle", "replace"])
def test_a_model_that_reads_exactly_the_last_k_tokens_has_a_perturbation_effective_context_of_k(kind):
    from probe.measure.perturbation import PerturbationConfig, context_perturbation

    model = delay_line(lags=5)  # 7 units: the prediction sums the signs of exactly the last 7 tokens
    k = 7
    config = PerturbationConfig(distances=tuple(range(1, 13)), prefix=30, targets=400, kinds=(kind,))
    df = context_perturbation(model, majority_stream(k), config)
    name = {"shuffle": "shuffled", "replace": "replaced"}[kind]
    curve = df[df["measure"] == f"{name}_nll_increase"].set_index("x")["value"]
    assert (curve.loc[k:] == 0).all()  # nothing farther than k back is read: bit-identical predictions
    effective = df.loc[df["measure"] == f"{name}_effective_context", "value"].item()
    if kind == "replace":  # other text in place of everything beyond d: every token within k is missed
        intact = df.loc[df["measure"] == "perturbation_intact_nll", "value"].item()
        assert (curve.loc[: k - 1].abs() > 0.01 * intact).all() and curve.loc[1] > 0.5
        assert effective == k
    else:  # shuffling keeps the bag of words, which a majority vote mostly needs: it can only show less
        assert 1 <= effective <= k


def test_perturbation_refuses_a_stream_too_short_for_its_largest_distance_in_one_line():
    from probe.measure.perturbation import PerturbationConfig, context_perturbation

    with pytest.raises(ValueError, match="allows a largest d of about") as e:
        context_perturbation(delay_line(lags=5), majority_stream(7, n=300), PerturbationConfig())
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="prefix .* must be longer than the largest distance"):
        PerturbationConfig(distances=(10, 50), prefix=40)


def test_perturbation_effective_context_ignores_a_noisy_dip_and_is_inf_beyond_the_range():
    from probe.measure.perturbation import effective_context

    assert effective_context({1: 0.5, 2: 0.0, 5: 0.2, 10: 0.0, 20: 0.0}, 0.01) == 10
    assert effective_context({1: 0.5, 5: -0.2, 10: 0.0}, 0.01) == 10  # a lower loss still shows use
    assert effective_context({1: 0.5, 200: 0.2}, 0.01) == math.inf
    assert effective_context({1: 0.0, 2: 0.0}, 0.01) == 1


def test_a_model_that_reads_only_the_last_token_gains_from_a_natural_copy_only_at_distance_one():
    from probe.measure.natural_copies import NaturalCopyConfig, natural_copies

    model = integrator(forget_bias=-SATURATE)  # forget gate shut: the prediction after x_{u-1} is a function of it
    stream = tokens(8, 3000)
    config = NaturalCopyConfig(edges=(1, 2, 5, 10), prefix=20, per_bin=200)
    df = natural_copies(model, stream, torch.bincount(stream, minlength=8).double(), config)
    gain = df[df["measure"] == "natural_copy_gain"].set_index("x")["value"]
    assert gain.loc[1] != 0  # the previous occurrence is the token just read: replacing it changes the prediction
    assert (gain.loc[2:] == 0).all()  # farther back it is never read: bit-identical predictions
    counts = df[df["measure"] == "natural_copy_count"].set_index("x")["value"]
    assert (counts > 0).all() and counts.max() <= 200


def test_the_delay_line_gains_from_copies_within_its_window_and_never_beyond():
    from probe.measure.natural_copies import NaturalCopyConfig, natural_copies

    stream = majority_stream(7, n=6000)
    config = NaturalCopyConfig(edges=(1, 2, 4, 8, 12), prefix=30, per_bin=300)
    df = natural_copies(delay_line(lags=5), stream, torch.bincount(stream, minlength=2).double(), config)
    gain = df[df["measure"] == "natural_copy_gain"].set_index("x")["value"]
    assert (gain.loc[:4] != 0).all() and (gain.loc[8:] == 0).all()  # 7 tokens read: d in 8.. never matters


def test_natural_copies_need_repeated_tokens_and_say_so_in_one_line():
    from probe.measure.natural_copies import NaturalCopyConfig, natural_copies, previous_occurrence, similar_frequency

    assert previous_occurrence(torch.tensor([3, 1, 3, 3, 2, 1])).tolist() == [0, 0, 2, 1, 0, 4]
    assert similar_frequency(torch.tensor([5.0, 9.0, 1.0])).tolist() == [2, 0, 0]  # ranks 1, 0, 2
    model = integrator(forget_bias=-SATURATE)
    distinct = torch.arange(8).repeat(5)  # every token recurs exactly 8 back
    with pytest.raises(ValueError, match="no token .* recurs within 6 tokens") as e:
        natural_copies(model, distinct, torch.ones(8), NaturalCopyConfig(edges=(1, 2), prefix=6))
    assert "\n" not in str(e.value)
