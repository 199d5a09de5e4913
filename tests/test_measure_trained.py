"""probe.measure on a tiny model trained for a second or two on a small synthetic corpus.

The model is trained once per module with ``probe.runs.train.train`` (preset
tiny, a few epochs) and shared by every test here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from probe.data.corpus import batchify
from probe.measure import (
    MeasureConfig,
    context_length_curve,
    context_targets,
    gradient_sensitivity,
    influence,
    probe_information,
    run_all,
    validate,
)
from probe.measure import context as context_module
from probe.measure.checks import heldout, unigram
from probe.measure.probe_info import untrained_copy
from probe.measure.stream import Layout, stream_predictions
from probe.model.language_model import LanguageModel
from probe.data.synthetic import load_synthetic
from probe.runs.train import evaluate, train
from probe.runs.config import preset

SPEC = "synthetic:vocab=8,lags=2+4,cue=0.3,branching=2,train=12000,valid=4000,test=500"
RUN = preset("tiny", corpus=SPEC, epochs=10, lr=10.0, batch_size=16, decay_after=8, placement="zaremba:p=0.1")
MEASURE = MeasureConfig(
    max_lag=8, max_tokens=4000, influence_windows=128, gradient_windows=128, probe_positions=2000,
    context_lengths=(1, 2, 5, 10, 20, 50), context_targets=200, position_windows=64,
)
IDS = {"placement": RUN.placement, "seed": RUN.seed, "run_id": RUN.run_id()}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: a second OpenMP thread only adds contention with other processes.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus():
    return load_synthetic(SPEC)


@pytest.fixture(scope="module")
def model(corpus, one_thread):
    result = train(RUN, corpus=corpus, progress=False)
    assert result.status == "finished" and result.valid_ppl < 4.0  # learned something (unigram ppl ~8)
    return result.model.eval()


@pytest.fixture(scope="module")
def table(model, corpus):
    return run_all(model, corpus, MEASURE, IDS)


def stream(corpus):
    return heldout(corpus, MEASURE.split, MEASURE.max_tokens)


def with_placement(model: LanguageModel, placement: str) -> LanguageModel:
    """The same weights under another placement (parameters do not depend on the placement)."""
    other = LanguageModel(replace(model.config, placement=placement))
    other.load_state_dict(model.state_dict())
    return other.eval()


def lag_values(df, measure, mode="eval", layer=-1):
    sel = (df["measure"] == measure) & (df["mode"] == mode) & (df["layer"] == layer) & (df["x_name"] == "lag")
    return df[sel].sort_values("x")["value"].to_numpy()


def test_run_all_returns_one_tidy_table_with_every_measure(table, model):
    validate(table)
    expected = {
        "influence_kl", "influence_hidden", "influence_kl_eval_half_life", "influence_kl_train_decay_rate",
        "probe_bits", "probe_bits_cell", "probe_bits_untrained", "probe_bits_baseline", "probe_accuracy",
        "probe_target_entropy", "probe_bits_eval_half_life", "gradient_norm", "gradient_norm_eval_half_life",
        "context_ppl", "context_nll", "full_context_ppl", "effective_context", "position_ppl",
        "recall_accuracy", "recall_accuracy_best", "recall_accuracy_chance", "recall_count",
    }
    assert expected <= set(table["measure"])
    assert (table["run_id"] == IDS["run_id"]).all() and (table["seed"] == RUN.seed).all()
    # One row per measure x layer x mode x x-value.
    assert not table.duplicated(["measure", "layer", "mode", "x_name", "x"]).any()
    layers = set(table[table["measure"] == "influence_hidden"]["layer"])
    assert layers == set(range(model.config.num_layers))
    assert sorted(lag_values(table, "influence_kl").shape) == [MEASURE.max_lag]


def test_all_measures_are_deterministic_for_a_seed(table, model, corpus):
    again = run_all(model, corpus, MEASURE, IDS)
    pd.testing.assert_frame_equal(table, again)
    other_seed = run_all(model, corpus, replace(MEASURE, seed=1, measures=("influence",)), IDS)
    assert not lag_values(other_seed, "influence_kl") == pytest.approx(lag_values(table, "influence_kl"))


def test_probe_bits_never_exceed_the_target_entropy(table):
    entropy = lag_values(table, "probe_target_entropy", mode="")
    probes = table[table["measure"].str.startswith("probe_bits") & (table["x_name"] == "lag")]
    assert len(probes) > 0
    for _, row in probes.iterrows():
        assert row["value"] <= entropy[int(row["x"]) - 1] + 1e-9
    # The trained model's state tells apart the last tokens far better than chance.
    assert lag_values(table, "probe_bits", layer=0)[0] > 0.5 * entropy[0]


def test_frequency_baseline_gives_about_zero_bits(table):
    bits = lag_values(table, "probe_bits_baseline", mode="")
    # A fixed distribution never beats the empirical entropy of the scored targets (Gibbs' inequality).
    assert (bits <= 1e-9).all() and (bits > -0.05).all()


def test_untrained_control_is_the_runs_own_initialisation(model, corpus):
    initial = train(RUN, corpus=corpus, progress=False, stop_after_epoch=0).model
    control = untrained_copy(model, RUN.seed)
    for (name, a), (_, b) in zip(initial.state_dict().items(), control.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(control.layers[0].w_hh, model.layers[0].w_hh)


def test_untrained_control_is_probed_on_the_same_targets_and_differs(table):
    for layer in (0, 1):
        trained = lag_values(table, "probe_bits", layer=layer)
        untrained = lag_values(table, "probe_bits_untrained", layer=layer)
        assert trained.shape == untrained.shape == (MEASURE.max_lag,)
        assert abs(trained - untrained).max() > 0.05


def test_training_mode_without_masks_is_evaluation_mode(model, corpus):
    df = influence(with_placement(model, "none"), stream(corpus), unigram(corpus.train, 10), MEASURE)
    assert lag_values(df, "influence_kl", "train").tolist() == lag_values(df, "influence_kl", "eval").tolist()


def test_placements_share_eval_influence_and_differ_in_training_mode(model, corpus):
    counts = unigram(corpus.train, 10)
    curves = {p: influence(with_placement(model, p), stream(corpus), counts, MEASURE) for p in ("zaremba", "naive")}
    assert lag_values(curves["naive"], "influence_kl") == pytest.approx(lag_values(curves["zaremba"], "influence_kl"))
    for df in curves.values():
        assert not lag_values(df, "influence_kl", "train") == pytest.approx(lag_values(df, "influence_kl"))


def test_context_length_one_is_the_single_previous_token_perplexity(model, corpus):
    s = stream(corpus)
    df = context_length_curve(model, s, MEASURE)
    targets = torch.tensor(df.attrs["target_positions"])
    with torch.no_grad():  # each target from a zero state, reading only the token before it
        logits, _ = model(s[targets - 1].unsqueeze(0))
    nll = -F.log_softmax(logits[0], dim=-1).gather(1, s[targets].unsqueeze(1)).mean()
    (ppl,) = df[(df["measure"] == "context_ppl") & (df["x"] == 1)]["value"]
    assert ppl == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_context_curve_scores_identical_targets_for_every_length_and_model(model, corpus, monkeypatch):
    s = stream(corpus)
    expected = context_targets(s.numel(), MEASURE)
    seen = []
    original = context_module.window_nll

    def recording(m, st, targets, L, chunk):
        seen.append((L, targets.clone()))
        return original(m, st, targets, L, chunk)

    monkeypatch.setattr(context_module, "window_nll", recording)
    for net in (model, untrained_copy(model, 123)):
        df = context_length_curve(net, s, MEASURE)
        assert df.attrs["target_positions"] == expected.tolist()
    assert [L for L, _ in seen] == list(MEASURE.context_lengths) * 2
    assert all(torch.equal(t, expected) for _, t in seen)
    # Every target has the longest context inside its stream's history.
    assert (Layout(s.numel(), MEASURE.stream_batch).history(expected) >= max(MEASURE.context_lengths)).all()


def test_full_context_pass_matches_probe_train_evaluate(model, corpus):
    s = stream(corpus)
    layout = Layout(s.numel(), MEASURE.stream_batch)
    nll, _ = stream_predictions(model, s, layout, MEASURE.chunk_tokens)
    reference = evaluate(model, batchify(s, MEASURE.stream_batch), bptt=35)
    assert float(nll.nanmean()) == pytest.approx(reference, rel=1e-5)


def test_effective_context_is_the_first_length_within_tolerance_of_full_context(table):
    ppl = table[table["measure"] == "context_ppl"].sort_values("x")
    (full,) = table[table["measure"] == "full_context_ppl"]["value"]
    (effective,) = table[table["measure"] == "effective_context"]["value"]
    within = ppl[ppl["value"] <= (1 + MEASURE.effective_tolerance) * full]["x"]
    assert effective == within.min()
    position = table[table["measure"] == "position_ppl"].sort_values("x")["value"].to_numpy()
    assert position[0] > 1.5 * position[-1]  # the first prediction after a reset is the worst


def test_recall_accuracy_is_reported_beside_best_and_chance(table):
    acc = lag_values(table, "recall_accuracy")
    best = lag_values(table, "recall_accuracy_best", mode="")
    chance = lag_values(table, "recall_accuracy_chance", mode="")
    assert acc.shape == best.shape == chance.shape == (2,)  # lags 2 and 4 are planted
    assert (best == 1.0).all() and ((0 < chance) & (chance < 1)).all()
    assert acc[0] > chance[0] + 0.2  # the trained model recalls the lag-2 copies


def test_gradient_measure_restores_the_mode_and_leaves_parameter_grads_alone(model, corpus):
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.train()
    try:
        df = gradient_sensitivity(model, stream(corpus), MEASURE)
        assert model.training
        for p, g in zip(model.parameters(), before):
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    finally:
        model.eval()
    g = lag_values(df, "gradient_norm")
    assert (g > 0).all() and g[0] > g[-1]


def test_probe_controls_can_be_switched_off(model, corpus):
    config = replace(MEASURE, probe_cell=False, probe_untrained=False, max_lag=3)
    df = probe_information(model, stream(corpus), unigram(corpus.train, 10), config, IDS)
    assert not df["measure"].str.contains("cell|untrained").any()
    assert set(df[df["measure"] == "probe_bits"]["layer"]) == {0, 1}


def test_copy_log_probability_lies_between_chance_and_its_best(table):
    gain = lag_values(table, "copy_logprob")
    best = lag_values(table, "copy_logprob_best", mode="")
    assert gain.shape == best.shape == (2,)
    assert (gain <= best + 1e-9).all()
    assert gain[0] > 0.3 * best[0]  # the lag-2 copies are recalled well above the frequency baseline


def test_the_marked_source_influences_its_copy_and_a_memoryless_model_ignores_it(table, model, corpus):
    from probe.measure import cue_ids
    from probe.measure.synthetic_recall import recall_accuracy

    assert lag_values(table, "source_influence")[0] > 0.1  # nats: replacing the source moves the copy's prediction
    blind = with_placement(model, "none")
    with torch.no_grad():
        for layer in blind.layers:  # gates from the bias alone: every prediction is the same distribution
            layer.w_ih.zero_()
            layer.w_hh.zero_()
    lags = corpus.annotations[f"{MEASURE.split}_lag"][: MEASURE.max_tokens]
    df = recall_accuracy(blind, stream(corpus), lags, MEASURE, cue_ids=cue_ids(corpus))
    assert lag_values(df, "source_influence") == pytest.approx([0.0, 0.0], abs=1e-12)


def test_the_source_of_a_copy_is_lag_non_cue_tokens_back():
    from probe.measure.synthetic_recall import source_positions

    # w0 <mark> w3 w1 w2 <lag3> w3: the copy at 6 (lag 3) comes from 2; cues are ids 8 and 9.
    stream = torch.tensor([0, 8, 3, 1, 2, 9, 3])
    lags = torch.tensor([0, 0, 0, 0, 0, 0, 3])
    assert source_positions(stream, torch.tensor([6]), lags, torch.tensor([8, 9])).tolist() == [2]


def test_probe_weight_decay_is_chosen_per_lag_so_the_bound_stays_near_or_above_the_baseline(table):
    bits = lag_values(table, "probe_bits", layer=1)
    baseline = lag_values(table, "probe_bits_baseline", mode="")
    chosen = lag_values(table, "probe_weight_decay", layer=1)
    assert set(chosen) <= set(MEASURE.probe_weight_decays) | {math.inf}
    assert (bits >= baseline - 0.05).all(), (bits, baseline)  # never far below what frequencies alone give


def test_pure_noise_features_take_the_bias_only_probe():
    from probe.measure.probe_info import frequency_baseline, selected_probes

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1200, 16, generator=g)
    y = torch.randint(0, 4, (3, 1200), generator=g)  # classes independent of the features
    ce, _, chosen = selected_probes(x[:, :600], y[:, :600], x[:, 600:], y[:, 600:], 4, 30, (1e-3, 1e-1))
    assert torch.isinf(chosen).all(), chosen  # no fitted probe beats the frequencies on held-out positions
    base, _ = frequency_baseline(y[:, :400], y[:, 600:], 4)
    torch.testing.assert_close(ce[0], base)
