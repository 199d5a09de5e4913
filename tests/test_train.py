"""probe.runs.train: learning, determinism, bit-identical resumption, divergence, run folders, schedules,
optimizers, model selection, presets, CLI.

Runs use the ``tiny`` preset on small synthetic corpora so the whole file
takes seconds; module-scoped fixtures share the runs several tests read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from probe.data.corpus import batchify
from probe.data.registry import load_corpus
from probe.model.language_model import LanguageModel
from probe.placements import PLACEMENT_NAMES, Scope, Site, parse_placement
from probe.runs.config import RunConfig, best_epoch, learning_rates, preset, selected_epoch
from probe.runs.train import evaluate, train

CORPUS = "synthetic:train=20000,valid=4000,test=4000"
SMALL_CORPUS = "synthetic:train=5000,valid=1000,test=1000"
RUN_FILES = ("config.json", "metrics.json", "checkpoint.pt", "result.json")
# Fields of a metrics row that are measurements of the machine, not of the run.
TIMING = ("seconds", "words_per_sec")


def metrics(epochs: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in epochs]


def assert_same_parameters_as_state(model, state: dict):
    a = model.state_dict()
    assert a.keys() == state.keys()
    for name in a:
        assert torch.equal(a[name], state[name]), name


def assert_same_parameters(model_a, model_b):
    a, b = model_a.state_dict(), model_b.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(CORPUS)


@pytest.fixture(scope="module")
def small_corpus():
    return load_corpus(SMALL_CORPUS)


# Two epochs with the learning rate halved in the second, and dropout masks
# drawn every step: resumption must restore the weights, the schedule and the
# mask generator (and Adam's moments and step counts).
RESUME_CONFIGS = {
    "zaremba": preset("tiny", corpus=SMALL_CORPUS, epochs=2, decay_after=1, seed=3),
    "weight_drop": preset("tiny", corpus=SMALL_CORPUS, placement="weight_drop:emb=0.1", epochs=2, decay_after=1, seed=3),
    "adam": preset("tiny", corpus=SMALL_CORPUS, optimizer="adam", lr=0.01, epochs=2, decay_after=1, seed=3),
}

# 800 training tokens and Adam at a high constant rate: the model memorises
# them and validation perplexity bottoms out at epoch 6, then rises (train ppl
# ~4, valid ppl 21 at epoch 6 and 28 at epoch 8 with this seed).
OVERFIT = preset("tiny", corpus=SMALL_CORPUS, placement="none", optimizer="adam", lr=0.03, train_tokens=800,
                 batch_size=4, epochs=8, decay_after=8)


@pytest.fixture(scope="module", params=list(RESUME_CONFIGS))
def uninterrupted(request, small_corpus, tmp_path_factory):
    config = RESUME_CONFIGS[request.param]
    run_dir = tmp_path_factory.mktemp(f"uninterrupted-{request.param}") / config.run_id()
    return train(config, run_dir, corpus=small_corpus, progress=False)


# --- learning ---------------------------------------------------------------


def unigram_perplexity(corpus) -> float:
    """Perplexity of the valid split under the unigram distribution of the training split."""
    counts = torch.bincount(corpus.train, minlength=len(corpus.vocab)).double() + 1.0  # add-one: no zero mass
    log_p = (counts / counts.sum()).log()
    return math.exp(-log_p[corpus.valid].mean().item())


def test_tiny_model_learns_well_below_unigram_perplexity(corpus):
    unigram = unigram_perplexity(corpus)
    best = math.exp(corpus.entropy_rate)  # the true process's perplexity: no model can do better
    assert unigram > 10 * best  # the corpus has structure beyond token frequencies to learn
    config = preset("tiny", corpus=CORPUS)
    result = train(config, corpus=corpus, progress=False)
    assert result.status == "finished"
    assert result.valid_ppl < 0.5 * unigram, (result.valid_ppl, unigram)
    assert result.test_ppl < 0.5 * unigram
    assert result.valid_ppl > 0.9 * best  # better than the true process would mean a leak
    assert result.epochs[-1]["valid_ppl"] < result.epochs[0]["valid_ppl"]


def test_evaluation_perplexity_of_an_untrained_model_is_near_uniform(small_corpus):
    """One epoch at a vanishing learning rate: perplexity stays at the vocabulary size."""
    config = preset("tiny", corpus=SMALL_CORPUS, epochs=1, lr=1e-12)
    result = train(config, corpus=small_corpus, progress=False)
    V = len(small_corpus.vocab)
    assert 0.8 * V < result.valid_ppl < 1.2 * V


# --- determinism and resumption -------------------------------------------------


def test_same_seed_gives_identical_metrics(uninterrupted, small_corpus):
    again = train(uninterrupted.config, corpus=small_corpus, progress=False)
    assert again.status == uninterrupted.status == "finished"
    assert metrics(again.epochs) == metrics(uninterrupted.epochs)
    assert again.valid_ppl == uninterrupted.valid_ppl and again.test_ppl == uninterrupted.test_ppl
    assert_same_parameters(again.model, uninterrupted.model)


def test_a_different_seed_gives_different_metrics(uninterrupted, small_corpus):
    other = train(dataclasses.replace(uninterrupted.config, seed=4), corpus=small_corpus, progress=False)
    assert metrics(other.epochs) != metrics(uninterrupted.epochs)


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(uninterrupted, small_corpus, tmp_path):
    config = uninterrupted.config
    run_dir = tmp_path / config.run_id()
    stopped = train(config, run_dir, corpus=small_corpus, progress=False, stop_after_epoch=1)
    assert stopped.status == "interrupted" and len(stopped.epochs) == 1
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 1
    if config.optimizer == "adam":  # the moments to resume from are in the checkpoint
        assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["optimizer"]["state"]
    resumed = train(config, run_dir, corpus=small_corpus, progress=False)
    assert resumed.status == "finished"
    assert [e["lr"] for e in resumed.epochs] == [config.lr, config.lr / config.lr_decay]  # decays in epoch 2
    assert metrics(resumed.epochs) == metrics(uninterrupted.epochs)
    assert resumed.valid_ppl == uninterrupted.valid_ppl and resumed.test_ppl == uninterrupted.test_ppl
    assert_same_parameters(resumed.model, uninterrupted.model)
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["status"] == "finished" and saved["test_ppl"] == uninterrupted.test_ppl


def test_a_finished_run_folder_returns_its_result_without_training_again(uninterrupted, small_corpus):
    again = train(uninterrupted.config, uninterrupted.run_dir, corpus=small_corpus, progress=False)
    assert again.status == "finished"
    assert again.epochs == uninterrupted.epochs  # read back from the checkpoint, timings included
    assert again.test_ppl == uninterrupted.test_ppl
    assert_same_parameters(again.model, uninterrupted.model)


# --- run folders ----------------------------------------------------------------


def test_run_folder_holds_config_metrics_checkpoint_and_result(uninterrupted):
    run_dir = Path(uninterrupted.run_dir)
    config = uninterrupted.config
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no debris
    saved_config = json.loads((run_dir / "config.json").read_text())
    assert saved_config.pop("run_id") == config.run_id()
    assert RunConfig(**saved_config) == config
    assert json.loads((run_dir / "metrics.json").read_text()) == uninterrupted.epochs
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "finished" and result["run_id"] == config.run_id()
    assert result["valid_ppl"] == uninterrupted.valid_ppl and result["test_ppl"] == uninterrupted.test_ppl
    for key in ("best_epoch", "selected_epoch", "final_valid_ppl", "final_test_ppl"):
        assert result[key] == getattr(uninterrupted, key), key
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == config.epochs
    assert checkpoint["best"]["epoch"] == uninterrupted.best_epoch == uninterrupted.selected_epoch
    # The returned model is the selected (best) epoch's; "model" is the last epoch's, to resume from.
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(checkpoint["best"]["model"][name], tensor), name
    if uninterrupted.selected_epoch == config.epochs:
        assert_same_parameters_as_state(uninterrupted.model, checkpoint["model"])


def test_reusing_a_run_folder_with_another_config_raises(uninterrupted, small_corpus):
    run_dir = Path(uninterrupted.run_dir)
    before = {name: (run_dir / name).read_bytes() for name in RUN_FILES}
    other = dataclasses.replace(uninterrupted.config, lr=0.5)
    assert other.run_id() != uninterrupted.config.run_id()
    with pytest.raises(ValueError, match="different configuration"):
        train(other, run_dir, corpus=small_corpus, progress=False)
    assert {name: (run_dir / name).read_bytes() for name in RUN_FILES} == before


def test_run_id_is_a_stable_hash_of_the_whole_config():
    a = preset("tiny")
    assert a.run_id() == preset("tiny").run_id()
    assert len({a.run_id(), dataclasses.replace(a, seed=1).run_id(), dataclasses.replace(a, placement="naive").run_id()}) == 3


# --- divergence -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(init_scale=1e38),  # float32 overflow: the first loss is NaN
        dict(lr=1e6, clip=1e9),  # the loss stays finite but its perplexity overflows a float
    ],
    ids=["nan-loss", "overflowing-loss"],
)
def test_a_diverging_run_ends_with_status_diverged(overrides, small_corpus, tmp_path):
    config = preset("tiny", corpus=SMALL_CORPUS, epochs=2, **overrides)
    run_dir = tmp_path / config.run_id()
    result = train(config, run_dir, corpus=small_corpus, progress=False)
    assert result.status == "diverged"
    assert result.epochs[-1]["train_ppl"] == math.inf
    assert math.isnan(result.test_ppl)
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["status"] == "diverged" and saved["epochs"][-1]["train_ppl"] == math.inf
    assert saved["selected_epoch"] is None and result.selected_epoch is None
    assert math.isnan(result.final_test_ppl) and math.isnan(result.valid_ppl)


def test_the_nan_setting_really_produces_a_nan_loss(small_corpus):
    """Guards the test above: init_scale=1e38 must give a non-finite loss, not just a bad one."""
    config = preset("tiny", corpus=SMALL_CORPUS, init_scale=1e38)
    torch.manual_seed(0)
    model = LanguageModel(config.model_config(len(small_corpus.vocab)))
    data = batchify(small_corpus.train, config.batch_size)
    logits, _ = model(data[: config.bptt], generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(logits.flatten(0, 1), data[1 : config.bptt + 1].flatten())
    assert not torch.isfinite(loss)


# --- model selection -------------------------------------------------------------


def test_best_epoch_is_the_first_lowest_validation_perplexity_and_never_nan():
    history = [{"epoch": i + 1, "valid_ppl": v} for i, v in enumerate([9.0, 7.0, math.nan, 7.0, 8.0])]
    assert best_epoch(history) == 2
    assert best_epoch([]) is None and best_epoch([{"epoch": 1, "valid_ppl": math.nan}]) is None
    assert best_epoch([{"epoch": 1, "valid_ppl": math.inf}]) == 1  # finite loss, overflowing perplexity
    assert selected_epoch(preset("tiny"), history) == 2
    assert selected_epoch(preset("tiny", select="final"), history) == 5


def ppl_of_state(state: dict, config: RunConfig, corpus, split: str) -> float:
    model = LanguageModel(config.model_config(len(corpus.vocab)))
    model.load_state_dict(state)
    return math.exp(evaluate(model, batchify(getattr(corpus, split), config.batch_size), config.bptt))


@pytest.fixture(scope="module")
def overfit(small_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("overfit") / OVERFIT.run_id()
    return train(OVERFIT, run_dir, corpus=small_corpus, progress=False)


def test_the_overfitting_run_gets_worse_after_its_best_epoch(overfit):
    """Guards the selection tests: their run must have a best epoch before its last."""
    valid = [e["valid_ppl"] for e in overfit.epochs]
    assert overfit.status == "finished" and len(valid) == OVERFIT.epochs
    assert overfit.best_epoch == valid.index(min(valid)) + 1 < OVERFIT.epochs
    assert valid[-1] > 1.1 * min(valid)


def test_select_best_reports_and_returns_the_best_epochs_model(overfit, small_corpus):
    run_dir = Path(overfit.run_dir)
    best = overfit.best_epoch
    assert overfit.selected_epoch == best
    assert overfit.valid_ppl == overfit.epochs[best - 1]["valid_ppl"]
    assert overfit.final_valid_ppl == overfit.epochs[-1]["valid_ppl"] > overfit.valid_ppl
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == OVERFIT.epochs and checkpoint["best"]["epoch"] == best
    assert_same_parameters_as_state(overfit.model, checkpoint["best"]["model"])
    # The reported perplexities are those of the best checkpoint's model; the final ones of the last model.
    assert overfit.test_ppl == pytest.approx(ppl_of_state(checkpoint["best"]["model"], OVERFIT, small_corpus, "test"))
    assert overfit.valid_ppl == pytest.approx(ppl_of_state(checkpoint["best"]["model"], OVERFIT, small_corpus, "valid"))
    assert overfit.final_test_ppl == pytest.approx(ppl_of_state(checkpoint["model"], OVERFIT, small_corpus, "test"))
    assert overfit.test_ppl != pytest.approx(overfit.final_test_ppl)
    saved = json.loads((run_dir / "result.json").read_text())
    assert (saved["best_epoch"], saved["selected_epoch"]) == (best, best)
    assert (saved["valid_ppl"], saved["test_ppl"]) == (overfit.valid_ppl, overfit.test_ppl)
    assert (saved["final_valid_ppl"], saved["final_test_ppl"]) == (overfit.final_valid_ppl, overfit.final_test_ppl)


def test_a_finished_run_folder_returns_the_selected_model_not_the_final_one(overfit, small_corpus):
    """What probe.runs.grid does when a run is trained but its measurement is missing."""
    again = train(OVERFIT, overfit.run_dir, corpus=small_corpus, progress=False)
    assert again.epochs == overfit.epochs  # not trained again
    assert (again.selected_epoch, again.test_ppl, again.final_test_ppl) == (
        overfit.selected_epoch, overfit.test_ppl, overfit.final_test_ppl)
    assert_same_parameters(again.model, overfit.model)


def test_select_final_reports_the_last_epoch(overfit, small_corpus, tmp_path):
    config = dataclasses.replace(OVERFIT, select="final")
    run_dir = tmp_path / config.run_id()
    final = train(config, run_dir, corpus=small_corpus, progress=False)
    assert metrics(final.epochs) == metrics(overfit.epochs)  # selection does not change training
    assert final.best_epoch == overfit.best_epoch and final.selected_epoch == config.epochs
    assert final.valid_ppl == final.final_valid_ppl == final.epochs[-1]["valid_ppl"]
    assert final.test_ppl == final.final_test_ppl == overfit.final_test_ppl
    assert_same_parameters_as_state(final.model, torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"])
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["selected_epoch"] == config.epochs and saved["test_ppl"] == saved["final_test_ppl"]


# --- schedule and presets ------------------------------------------------------


def test_plateau_schedule_divides_after_every_epoch_that_did_not_improve():
    config = preset("tiny", schedule="plateau", lr=8.0, lr_decay=4.0, decay_after=0)  # decay_after: not used
    assert learning_rates(config, []) == [8.0]
    history = [10.0, 9.0, 9.5, 8.0, 8.0, 7.0, math.nan]  # misses after epochs 3, 5 (a tie) and 7 (nan)
    assert learning_rates(config, history) == [8.0, 8.0, 8.0, 2.0, 2.0, 0.5, 0.5, 0.125]
    assert learning_rates(config, [math.inf, math.inf]) == [8.0, 8.0, 2.0]  # the first epoch always improves


def test_fixed_schedule_ignores_the_validation_history():
    config = preset("small")
    assert learning_rates(config, [5.0] * 6) == [config.lr_at(e) for e in range(1, 8)]
    assert learning_rates(config, [5.0] * 6) == learning_rates(config, [5.0, 4.0, 3.0, 2.0, 1.0, 0.5])


def test_adam_trains_at_the_schedules_rate(small_corpus):
    """Same first epoch; a second at half the rate (decay_after=1) must train differently than at the full one."""
    decayed = RESUME_CONFIGS["adam"]
    held = dataclasses.replace(decayed, decay_after=2)
    a, b = (train(c, corpus=small_corpus, progress=False) for c in (decayed, held))
    assert [e["lr"] for e in a.epochs] == [0.01, 0.005] and [e["lr"] for e in b.epochs] == [0.01, 0.01]
    assert metrics(a.epochs)[0] == metrics(b.epochs)[0]
    assert a.epochs[1]["train_ppl"] != b.epochs[1]["train_ppl"]


def test_a_plateau_run_trains_at_the_rates_its_history_implies(small_corpus):
    config = dataclasses.replace(OVERFIT, schedule="plateau")
    result = train(config, corpus=small_corpus, progress=False)
    lrs = [e["lr"] for e in result.epochs]
    assert lrs == learning_rates(config, [e["valid_ppl"] for e in result.epochs[:-1]])
    assert lrs[0] == config.lr and min(lrs) < config.lr  # it did anneal (the run overfits)


def test_lr_schedule_follows_zaremba():
    small = preset("small")
    assert [small.lr_at(e) for e in range(1, 7)] == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25]
    medium = preset("medium")
    assert medium.lr_at(6) == 1.0
    assert medium.lr_at(7) == pytest.approx(1 / 1.2) and medium.lr_at(8) == pytest.approx(1 / 1.2**2)
    large = preset("large")
    assert large.lr_at(14) == 1.0 and large.lr_at(15) == pytest.approx(1 / 1.15)
    assert large.lr_at(55) == pytest.approx(1 / 1.15**41)


# Zaremba, Sutskever & Vinyals 2014, Table 1: layers x units, dropout, init, decay, decay after, epochs, clip, BPTT.
ZAREMBA_TABLE = {
    "small": (2, 200, 0.0, 0.1, 2.0, 4, 13, 5.0, 20),
    "medium": (2, 650, 0.5, 0.05, 1.2, 6, 39, 5.0, 35),
    "large": (2, 1500, 0.65, 0.04, 1.15, 14, 55, 10.0, 35),
}


@pytest.mark.parametrize("name", list(ZAREMBA_TABLE))
def test_presets_match_the_zaremba_table(name):
    layers, units, dropout, init, decay, decay_after, epochs, clip, bptt = ZAREMBA_TABLE[name]
    config = preset(name)
    assert (config.num_layers, config.hidden_size, config.emb_size) == (layers, units, units)
    assert (config.init_scale, config.lr_decay, config.decay_after) == (init, decay, decay_after)
    assert (config.epochs, config.clip, config.bptt) == (epochs, clip, bptt)
    assert (config.batch_size, config.lr) == (20, 1.0)  # batch 20, plain SGD at learning rate 1
    assert (config.optimizer, config.schedule, config.select) == ("sgd", "fixed", "best")
    placement = parse_placement(config.placement)
    # Dropout only on each layer's input and the top output, fresh mask every step.
    for site in (Site.INPUT, Site.OUTPUT):
        assert placement.rate(site) == dropout
        if dropout:
            assert placement.sites[site].scope is Scope.STEP
    active = {s for s in Site if placement.active(s)}
    assert active == ({Site.INPUT, Site.OUTPUT} if dropout else set())


def test_preset_overrides_and_unknown_names():
    assert preset("small", epochs=2).epochs == 2
    with pytest.raises(ValueError, match="valid presets: .*small.*medium.*large"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown RunConfig fields"):
        preset("small", epochz=2)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (dict(epochs=0), "epochs"),
        (dict(lr=0.0), "lr"),
        (dict(clip=-1.0), "clip"),
        (dict(dtype="float16"), "float32"),
        (dict(placement="everywhere"), "valid names"),
        (dict(optimizer="rmsprop"), "unknown optimizer 'rmsprop'; valid: sgd, adam"),
        (dict(schedule="cosine"), "unknown schedule 'cosine'; valid: fixed, plateau"),
        (dict(select="last"), "unknown select 'last'; valid: best, final"),
    ],
)
def test_bad_run_config_is_an_error(overrides, needle):
    with pytest.raises(ValueError, match=needle) as info:
        preset("tiny", **overrides)
    assert "\n" not in str(info.value)


# --- command line ---------------------------------------------------------------


def run_cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "probe.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_help_lists_every_option(tmp_path):
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for flag in ("--preset", "--corpus", "--placement", "--epochs", "--lr-decay", "--decay-after", "--bptt",
                 "--init-scale", "--runs-dir", "--no-progress", "--tie-weights", "--seed", "--optimizer",
                 "--schedule", "--select"):
        assert flag in out.stdout, flag


def test_cli_trains_a_run_into_its_folder(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli("--preset", "tiny", "--corpus", SMALL_CORPUS, "--epochs", "1", "--runs-dir", str(runs),
                  "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_id = preset("tiny", corpus=SMALL_CORPUS, epochs=1).run_id()
    assert [p.name for p in runs.iterdir()] == [run_id]
    for name in RUN_FILES:
        assert (runs / run_id / name).is_file(), name
    assert json.loads((runs / run_id / "result.json").read_text())["status"] == "finished"
    assert "epoch   1  lr 10" in out.stderr and "words/s" in out.stderr  # each epoch as it ends
    assert out.stdout.startswith("finished: epoch 1 selected (--select best; best epoch 1 of 1)")
    assert "reusing the finished run" not in out.stderr
    again = run_cli("--preset", "tiny", "--corpus", SMALL_CORPUS, "--epochs", "1", "--runs-dir", str(runs),
                    "--no-progress", cwd=tmp_path)
    assert again.returncode == 0 and f"reusing the finished run in {runs / run_id}" in again.stderr
    assert again.stdout == out.stdout  # the same result, reloaded, not retrained


def test_cli_bad_optimizer_exits_2_with_a_one_line_message(tmp_path):
    out = run_cli("--optimizer", "rmsprop", "--corpus", SMALL_CORPUS, "--runs-dir", str(tmp_path / "runs"),
                  "--no-progress", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == "error: unknown optimizer 'rmsprop'; valid: sgd, adam\n"


@pytest.mark.parametrize(
    "placement,needles",
    [
        ("everywhere", ["unknown placement 'everywhere'", *PLACEMENT_NAMES]),
        ("variational:p=1.0", ["outside [0, 1)"]),
        ("zoneout:zq=0.1", ["no parameter 'zq'", "valid keys: p, zc, zh"]),
    ],
)
def test_cli_bad_placement_exits_2_with_a_clear_message(placement, needles, tmp_path):
    out = run_cli("--placement", placement, "--corpus", SMALL_CORPUS, "--runs-dir", str(tmp_path / "runs"),
                  "--no-progress", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ")
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)
    assert not (tmp_path / "runs").exists()
