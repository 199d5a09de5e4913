"""probe.measure: bad input is a ValueError that says what was wrong and what is valid."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from probe.data.corpus import Corpus, Vocab
from probe.measure import (
    MeasureConfig,
    context_length_curve,
    gradient_sensitivity,
    influence,
    position_curve,
    probe_information,
    recall_accuracy,
    run_all,
)
from probe.model.language_model import LanguageModel, ModelConfig

V = 6
CONFIG = MeasureConfig(max_lag=4, stream_batch=2, context_lengths=(1, 2, 5), influence_windows=8,
                       gradient_windows=8, probe_positions=40, context_targets=8, position_windows=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=V, emb_size=4, hidden_size=4, num_layers=1)).eval()


def stream(n=200):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(0))


def counts():
    return torch.ones(V)


def corpus(valid=None, annotations=None):
    ids = stream()
    return Corpus("toy", "word", Vocab([f"w{i}" for i in range(V)]), ids, ids if valid is None else valid, ids,
                  "canonical", "toy corpus", annotations=annotations or {})


ALL = {
    "influence": lambda m, s, c=CONFIG: influence(m, s, counts(), c),
    "probe": lambda m, s, c=CONFIG: probe_information(m, s, counts(), c),
    "gradient": lambda m, s, c=CONFIG: gradient_sensitivity(m, s, c),
    "context": lambda m, s, c=CONFIG: context_length_curve(m, s, c),
    "position": lambda m, s, c=CONFIG: position_curve(m, s, c),
    "recall": lambda m, s, c=CONFIG: recall_accuracy(m, s, torch.zeros_like(s), c),
}


@pytest.mark.parametrize("name", ALL)
def test_a_model_of_the_wrong_kind_is_rejected(name):
    with pytest.raises(ValueError, match="probe.model.language_model.LanguageModel.*got Linear"):
        ALL[name](nn.Linear(3, 3), stream())


def test_run_all_rejects_a_model_of_the_wrong_kind():
    with pytest.raises(ValueError, match="LanguageModel"):
        run_all(nn.LSTM(3, 3), corpus(), CONFIG)


@pytest.mark.parametrize("name", ALL)
def test_an_empty_stream_is_rejected(name, model):
    with pytest.raises(ValueError, match="empty"):
        ALL[name](model, torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("name", ALL)
def test_ids_outside_the_vocabulary_are_rejected(name, model):
    with pytest.raises(ValueError, match=r"vocabulary is \[0, 6\)"):
        ALL[name](model, stream() + V)


@pytest.mark.parametrize("bad", [torch.zeros(10, 2, dtype=torch.long), torch.zeros(10), [1, 2, 3]])
def test_a_stream_that_is_not_1d_token_ids_is_rejected(bad, model):
    with pytest.raises(ValueError, match="token ids"):
        influence(model, bad, counts(), CONFIG)


@pytest.mark.parametrize("name", ["influence", "probe", "gradient"])
def test_lags_beyond_the_text_are_rejected_with_the_largest_valid_lag(name, model):
    # 200 tokens in 2 streams: 100 per stream.
    with pytest.raises(ValueError, match=r"max_lag=150 .* 100 each; use max_lag <= 9\d"):
        ALL[name](model, stream(), dataclasses.replace(CONFIG, max_lag=150))


def test_contexts_longer_than_the_text_are_rejected(model):
    with pytest.raises(ValueError, match="context lengths up to 500"):
        context_length_curve(model, stream(), dataclasses.replace(CONFIG, context_lengths=(1, 500)))
    with pytest.raises(ValueError, match="position_length=500"):
        position_curve(model, stream(), dataclasses.replace(CONFIG, position_max=500))


def test_a_stream_too_short_for_its_streams_is_rejected(model):
    with pytest.raises(ValueError, match="too short for stream_batch=2"):
        influence(model, stream(3), counts(), CONFIG)


def test_an_empty_corpus_split_is_rejected(model):
    with pytest.raises(ValueError, match="valid split of corpus 'toy' is empty"):
        run_all(model, corpus(valid=torch.zeros(0, dtype=torch.long)), CONFIG)


def test_recall_without_lag_annotations_is_rejected(model):
    with pytest.raises(ValueError, match="only synthetic corpora"):
        run_all(model, corpus(), dataclasses.replace(CONFIG, measures=("recall",)))
    with pytest.raises(ValueError, match="aligned with the stream"):
        recall_accuracy(model, stream(), torch.zeros(5, dtype=torch.long), CONFIG)
    with pytest.raises(ValueError, match="no forced"):
        recall_accuracy(model, stream(), torch.zeros(200, dtype=torch.long), CONFIG)


def test_unigram_counts_of_the_wrong_size_are_rejected(model):
    with pytest.raises(ValueError, match="one entry per vocabulary id"):
        influence(model, stream(), torch.ones(V + 1), CONFIG)
    with pytest.raises(ValueError, match="one entry per vocabulary id"):
        probe_information(model, stream(), torch.ones(V - 1), CONFIG)


def test_run_all_without_recall_annotations_runs_everything_else(model):
    df = run_all(model, corpus(), CONFIG, {"seed": 4})
    assert "recall_accuracy" not in set(df["measure"]) and "influence_kl" in set(df["measure"])
    assert (df["placement"] == "none").all() and (df["seed"] == 4).all()


def test_a_natural_text_measure_asked_for_without_its_configuration_is_one_line():
    from probe.measure import MeasureConfig

    with pytest.raises(ValueError, match=r"measures \['perturbation'\] need their configuration"):
        MeasureConfig(measures=("context", "perturbation"))


def test_natural_text_measures_that_are_off_leave_a_measurement_id_unchanged():
    import hashlib
    import json

    from probe.measure import MeasureConfig, PerturbationConfig
    from probe.runs.cells import Cell
    from probe.runs.config import RunConfig

    run = RunConfig(corpus="synthetic:vocab=8,train=2000,valid=500,test=500")
    base = MeasureConfig(max_lag=5)
    fields = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("perturbation", "natural_copies")}
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]  # the id before they existed
    assert Cell(run, base).measure_id() == before
    assert Cell(run, dataclasses.replace(base, perturbation=PerturbationConfig())).measure_id() != before
