"""probe.synthetic: determinism, the closed-form entropy rate, planted recalls, spec strings."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from probe.data import CorpusError, load_corpus
from probe.synthetic import (
    SyntheticLanguage,
    SyntheticSpec,
    make_synthetic_corpus,
    parse_synthetic_spec,
)

SMALL = SyntheticSpec(
    vocab_size=16, lags=(1, 3, 7), cue_rate=0.3, branching=3, n_train=5000, n_valid=500, n_test=500
)


def test_samples_are_deterministic_for_a_seed():
    language = SyntheticLanguage(SyntheticSpec())
    ids_a, lag_a = language.sample(5000, 7)
    ids_b, lag_b = SyntheticLanguage(SyntheticSpec()).sample(5000, 7)
    assert torch.equal(ids_a, ids_b) and torch.equal(lag_a, lag_b)
    assert not torch.equal(ids_a, language.sample(5000, 8)[0])
    # A different spec seed is a different language.
    other = SyntheticLanguage(SyntheticSpec(seed=1))
    assert not np.array_equal(other.transition, language.transition)


def test_make_synthetic_corpus_is_deterministic_and_splits_differ():
    a, b = make_synthetic_corpus(SMALL), make_synthetic_corpus(SMALL)
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(a, split), getattr(b, split))
    assert not torch.equal(a.valid, a.test)
    assert a.train.numel() == SMALL.n_train and a.valid.numel() == SMALL.n_valid


def test_transition_matrix_is_stochastic_with_exact_stationary_distribution():
    language = SyntheticLanguage(SyntheticSpec())
    P, pi = language.transition, language.stationary
    assert np.allclose(P.sum(axis=1), 1.0)
    assert ((P > 0).sum(axis=1) == 4).all()
    assert np.allclose(pi @ P, pi, atol=1e-14) and math.isclose(pi.sum(), 1.0)


@pytest.mark.parametrize("spec", [SyntheticSpec(), SMALL], ids=["default", "small"])
def test_entropy_rate_matches_mean_negative_log_prob(spec):
    language = SyntheticLanguage(spec)
    ids, _ = language.sample(200_000, 123)
    nll = -language.log_prob(ids).numpy()
    assert np.isfinite(nll).all()
    # Tokens are serially dependent (Markov state, cue/copy pairs), so the
    # standard error comes from means of 100 blocks of 2000 tokens (batch
    # means), which stay valid under short-range dependence.
    block_means = nll.reshape(100, -1).mean(axis=1)
    se = block_means.std(ddof=1) / math.sqrt(block_means.size)
    assert abs(nll.mean() - language.entropy_rate()) < 4 * se + 1e-3


def test_log_prob_is_a_normalised_distribution_over_sequences():
    # Sum of P(sequence) over every sequence of length 5 of a tiny language is 1:
    # checks log_prob exactly, including warm-up, cues, forced copies and impossibilities.
    spec = SyntheticSpec(vocab_size=3, lags=(1, 2), cue_rate=0.3, branching=2, n_train=2, n_valid=2, n_test=2)
    language = SyntheticLanguage(spec)
    sequences = torch.tensor(list(itertools.product(range(language.num_tokens), repeat=5)))
    total = sum(math.exp(language.log_prob(seq).sum().item()) for seq in sequences)
    assert math.isclose(total, 1.0, rel_tol=1e-12)


def test_every_forced_token_copies_the_token_k_non_cue_positions_earlier():
    language = SyntheticLanguage(SMALL)
    ids, lag = language.sample(20_000, 3)
    V = SMALL.vocab_size
    noncue = (ids < V).numpy()
    stream = ids.numpy()[noncue]  # the non-cue tokens, in order
    index_in_stream = np.cumsum(noncue) - 1
    forced = np.flatnonzero(lag.numpy())
    assert forced.size > 1000
    for t in forced:
        k = int(lag[t])
        assert ids[t - 1] == V + SMALL.lags.index(k)  # preceded by its cue
        assert stream[index_in_stream[t] - k] == ids[t]


def test_lag_annotations_mark_exactly_the_tokens_after_cues():
    corpus = make_synthetic_corpus(SMALL)
    V = SMALL.vocab_size
    for split in ("train", "valid", "test"):
        ids, lag = getattr(corpus, split), corpus.annotations[f"{split}_lag"]
        assert lag.shape == ids.shape
        after_cue = torch.zeros_like(ids, dtype=torch.bool)
        after_cue[1:] = ids[:-1] >= V
        assert torch.equal(lag > 0, after_cue)
        cue_lag = torch.tensor(SMALL.lags)[ids[:-1][after_cue[1:]] - V]
        assert torch.equal(lag[after_cue], cue_lag)


def test_no_cue_before_max_lag_non_cue_tokens():
    ids, _ = SyntheticLanguage(SyntheticSpec()).sample(5000, 0)
    assert (ids[:100] < 64).all()


def test_log_prob_rejects_a_wrong_copy():
    language = SyntheticLanguage(SMALL)
    ids, lag = language.sample(2000, 5)
    t = int(torch.nonzero(lag)[0])
    ids[t] = (ids[t] + 1) % SMALL.vocab_size
    logp = language.log_prob(ids)
    assert logp[t] == -math.inf and torch.isfinite(logp[:t]).all()


def test_vocab_strings_name_content_and_cue_tokens():
    corpus = make_synthetic_corpus(SMALL)
    assert corpus.vocab.itos[:2] == ("w0", "w1")
    assert corpus.vocab.itos[-3:] == ("<lag1>", "<lag3>", "<lag7>")
    assert corpus.level == "word" and corpus.split == "canonical"


def test_parse_synthetic_spec_reads_keys_and_round_trips():
    spec = parse_synthetic_spec("synthetic:vocab=32,lags=5+20+50,cue=0.2,train=50000")
    assert spec == SyntheticSpec(vocab_size=32, lags=(5, 20, 50), cue_rate=0.2, n_train=50_000)
    assert parse_synthetic_spec(spec.to_string()) == spec
    assert parse_synthetic_spec("synthetic") == SyntheticSpec()
    assert SyntheticSpec().to_string() == "synthetic"


@pytest.mark.parametrize(
    "text, match",
    [
        ("synthetic:vocabulary=32", "unknown synthetic key 'vocabulary'.*valid keys: vocab, lags, cue"),
        ("synthetic:cue=lots", "'cue' must be a number.*valid keys"),
        ("synthetic:lags=5+x", "integers joined by \\+.*valid keys"),
        ("synthetic:vocab", "needs a value.*valid keys"),
        ("synthetic:cue=1.5", "cue must be in \\[0, 1\\)"),
        ("synthetic:lags=5+5", "lags must be distinct"),
        ("synthetic:vocab=8,branching=9", "branching must be in \\[1, vocab\\]"),
        ("markov:vocab=8", "starts with 'synthetic'"),
    ],
)
def test_bad_spec_strings_are_explained(text, match):
    with pytest.raises(CorpusError, match=match):
        parse_synthetic_spec(text)


def test_load_corpus_delegates_synthetic_names():
    corpus = load_corpus("synthetic:vocab=16,train=3000,valid=300,test=300")
    assert len(corpus.vocab) == 16 + 6
    assert corpus.train.numel() == 3000 and corpus.files == {}
    assert corpus.entropy_rate == pytest.approx(
        SyntheticLanguage(parse_synthetic_spec("synthetic:vocab=16")).entropy_rate()
    )
    assert "generated in-process" in corpus.split_note and "vocab=16" in corpus.split_note
    assert corpus.label == corpus.name == "synthetic:vocab=16,train=3000,valid=300,test=300"
    assert set(corpus.annotations) == {"train_lag", "valid_lag", "test_lag"}


def test_load_corpus_seed_overrides_and_conflicts_are_errors():
    base = "synthetic:train=1000,valid=100,test=100"
    assert load_corpus(base, seed=3).name == base + ",seed=3"
    assert not torch.equal(load_corpus(base, seed=3).train, load_corpus(base).train)
    with pytest.raises(CorpusError, match="seed"):
        load_corpus(base + ",seed=2", seed=3)


def test_default_corpus_generates_quickly():
    import time

    start = time.perf_counter()
    corpus = load_corpus("synthetic")
    assert time.perf_counter() - start < 2.0
    assert corpus.train.numel() == 200_000
    assert 0 < corpus.entropy_rate < math.log(len(corpus.vocab))
