"""probe.data.synthetic: determinism, the closed-form entropy rate, planted recalls, spec strings."""

from __future__ import annotations

import collections
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from probe.data.corpus import CorpusError
from probe.data.registry import load_corpus
from probe.data.synthetic import SyntheticLanguage, make_synthetic_corpus
from probe.data.synthetic_spec import SyntheticSpec, parse_synthetic_spec

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


MARKED = [parse_synthetic_spec("synthetic:vocab=16,lags=3+8+20,cue=0.2,mark=1"),
          parse_synthetic_spec("synthetic:vocab=8,lags=1+2+5,cue=0.5,branching=3,mark=1")]


@pytest.mark.parametrize("spec", [SyntheticSpec(), SMALL, *MARKED], ids=["default", "small", "marked", "marked-small"])
def test_entropy_rate_matches_mean_negative_log_prob(spec):
    language = SyntheticLanguage(spec)
    ids, _ = language.sample(200_000, 123)
    nll = -language.log_prob(ids).numpy()
    assert np.isfinite(nll).all()
    # Tokens are serially dependent (Markov state, cue/copy pairs, pending marks), so the
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


# ---------------------------------------------------------------------- the marked variant (mark=1)

MARKED = SyntheticSpec(
    vocab_size=16, lags=(1, 3, 7), cue_rate=0.3, branching=3, marked=True, n_train=5000, n_valid=500, n_test=500
)
MARKED_TINY = SyntheticSpec(
    vocab_size=3, lags=(1, 2), cue_rate=0.4, branching=2, marked=True, n_train=2, n_valid=2, n_test=2
)


def _marked_ids(spec):
    """(mark id, cue id of each lag) of a marked language."""
    V = spec.vocab_size
    return V, {k: V + 1 + i for i, k in enumerate(spec.lags)}


def test_marked_samples_are_deterministic_for_a_seed():
    language = SyntheticLanguage(MARKED)
    ids_a, lag_a = language.sample(5000, 7)
    ids_b, lag_b = SyntheticLanguage(MARKED).sample(5000, 7)
    assert torch.equal(ids_a, ids_b) and torch.equal(lag_a, lag_b)
    assert not torch.equal(ids_a, language.sample(5000, 8)[0])
    g_a, g_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(language.sample(3000, g_a)[0], language.sample(3000, g_b)[0])
    a, b = make_synthetic_corpus(MARKED), make_synthetic_corpus(MARKED)
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(a, split), getattr(b, split))
        assert torch.equal(a.annotations[f"{split}_lag"], b.annotations[f"{split}_lag"])
    assert not torch.equal(a.valid, a.test)
    assert a.train.numel() == MARKED.n_train and a.valid.numel() == MARKED.n_valid


def test_marked_entropy_rate_differs_from_the_n_back_formula():
    # The closed forms differ, so the test above tells the variants apart.
    spec = parse_synthetic_spec("synthetic:vocab=16,lags=3+8+20,cue=0.2,mark=1")
    marked = SyntheticLanguage(spec).entropy_rate()
    n_back = SyntheticLanguage(replace(spec, marked=False)).entropy_rate()
    assert abs(marked - n_back) > 0.05


def test_marked_log_prob_is_a_normalised_distribution_over_sequences():
    # Every sequence of 5 tokens of a tiny marked language (3 content, <mark>, 2 cues): probabilities sum to 1.
    language = SyntheticLanguage(MARKED_TINY)
    assert language.num_tokens == 6
    sequences = torch.tensor(list(itertools.product(range(language.num_tokens), repeat=5)))
    total = sum(math.exp(language.log_prob(seq).sum().item()) for seq in sequences)
    assert math.isclose(total, 1.0, rel_tol=1e-12)


def test_marked_sample_frequencies_match_log_prob():
    # Sequences of 4 tokens from many independent samples against exp(log_prob): a chi-square test.
    from scipy.stats import chi2

    language = SyntheticLanguage(MARKED_TINY)
    rng = np.random.default_rng(1)
    n = 6000
    counts = collections.Counter(tuple(language.sample(4, rng)[0].tolist()) for _ in range(n))
    probs = {
        seq: math.exp(language.log_prob(torch.tensor(seq)).sum().item())
        for seq in itertools.product(range(language.num_tokens), repeat=4)
    }
    assert all(probs[seq] > 0 for seq in counts)  # nothing sampled is impossible
    big = [seq for seq, p in probs.items() if p * n >= 5]
    observed = np.array([counts[seq] for seq in big] + [n - sum(counts[seq] for seq in big)])
    expected = np.array([probs[seq] * n for seq in big] + [n * (1 - sum(probs[seq] for seq in big))])
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(0.9999, df=len(big))


def test_marked_copies_follow_their_cue_and_sources_follow_a_mark():
    spec = MARKED
    language = SyntheticLanguage(spec)
    ids, lag = language.sample(20_000, 3)
    mark, cue_of = _marked_ids(spec)
    ids_np, lag_np = ids.numpy(), lag.numpy()
    noncue = ids_np < spec.vocab_size  # <mark> and the cues are not counted
    stream = ids_np[noncue]
    index_in_stream = np.cumsum(noncue) - 1
    noncue_positions = np.flatnonzero(noncue)
    copies = np.flatnonzero(lag_np)
    assert copies.size > 1000
    assert set(lag_np[copies].tolist()) == set(spec.lags)
    for t in copies:
        k = int(lag_np[t])
        assert ids_np[t - 1] == cue_of[k]  # preceded by its cue
        source = noncue_positions[index_in_stream[t] - k]
        assert ids_np[t] == ids_np[source]  # the token K non-cue positions back
        assert ids_np[source - 1] == mark  # every source comes right after <mark>
        assert t - source == k + 1  # source, K-1 chain draws, cue, copy
        assert not (ids_np[source:t] == mark).any()  # no new mark while one is pending
    # Every cue is followed by an annotated copy, every mark by a recall (unless the sample ends first).
    cues = np.flatnonzero(ids_np > mark)
    cues = cues[cues + 1 < ids_np.size]
    assert (lag_np[cues + 1] > 0).all()
    marks = np.flatnonzero(ids_np == mark)
    assert marks.size == copies.size + int(marks[-1] > copies[-1])
    # K is uniform over the lags.
    share = np.bincount(lag_np[copies])[list(spec.lags)] / copies.size
    assert np.allclose(share, 1 / len(spec.lags), atol=0.05)


def test_marked_lag_annotations_in_the_corpus():
    corpus = make_synthetic_corpus(MARKED)
    mark, _ = _marked_ids(MARKED)
    for split in ("train", "valid", "test"):
        ids, lag = getattr(corpus, split), corpus.annotations[f"{split}_lag"]
        assert lag.shape == ids.shape
        after_cue = torch.zeros_like(ids, dtype=torch.bool)
        after_cue[1:] = ids[:-1] > mark
        assert torch.equal(lag > 0, after_cue)
        cue_lag = torch.tensor(MARKED.lags)[ids[:-1][after_cue[1:]] - mark - 1]
        assert torch.equal(lag[after_cue], cue_lag)
    assert "marked recalls" in corpus.split_note and "mark=1" in corpus.split_note
    assert "n-back recalls" in make_synthetic_corpus(SMALL).split_note


def _first_recall(ids, lag):
    """(mark, source, cue, copy) positions of the first complete recall of a marked sample."""
    copy = int(torch.nonzero(lag)[0])
    cue = copy - 1
    source = copy - int(lag[copy]) - 1
    return source - 1, source, cue, copy


def test_marked_log_prob_rejects_a_wrong_copy():
    language = SyntheticLanguage(MARKED)
    ids, lag = language.sample(2000, 5)
    _, _, _, copy = _first_recall(ids, lag)
    ids[copy] = (ids[copy] + 1) % MARKED.vocab_size
    logp = language.log_prob(ids)
    assert logp[copy] == -math.inf and torch.isfinite(logp[:copy]).all()


def test_marked_log_prob_rejects_a_mark_while_pending():
    language = SyntheticLanguage(MARKED)
    ids, lag = language.sample(2000, 5)
    mark, _ = _marked_ids(MARKED)
    copy = int(torch.nonzero(lag == 7)[0])  # a long recall: chain draws between source and cue
    source = copy - 8
    for t in (source + 1, copy - 1, copy):  # between source and cue, at the cue, at the copy
        bad = ids.clone()
        bad[t] = mark
        logp = language.log_prob(bad)
        assert logp[t] == -math.inf and torch.isfinite(logp[:t]).all()
    bad = ids.clone()
    bad[source] = mark  # a mark right after a mark
    assert language.log_prob(bad)[source] == -math.inf


def test_marked_log_prob_rejects_a_wrong_lag_cue_and_a_missing_cue():
    language = SyntheticLanguage(MARKED)
    ids, lag = language.sample(2000, 5)
    _, cue_of = _marked_ids(MARKED)
    copy = int(torch.nonzero(lag == 3)[0])
    cue = copy - 1
    for k in (1, 7):  # the cue of another lag, at the position of the <lag3> cue
        bad = ids.clone()
        bad[cue] = cue_of[k]
        logp = language.log_prob(bad)
        assert logp[cue] == -math.inf and torch.isfinite(logp[:cue]).all()
    # A cue at a free position (the position right after a copy is always free).
    free = copy + 1
    bad = ids.clone()
    bad[free] = cue_of[3]
    assert language.log_prob(bad)[free] == -math.inf
    # At the largest lag the cue is certain: content there is impossible.
    long_copy = int(torch.nonzero(lag == 7)[0])
    bad = ids.clone()
    bad[long_copy - 1] = 0
    logp = language.log_prob(bad)
    assert logp[long_copy - 1] == -math.inf and torch.isfinite(logp[: long_copy - 1]).all()
    # A valid recall's cue has probability 1/|{k in lags: k >= K}| (hazard): lag 3 of 1+3+7 -> 1/2.
    assert language.log_prob(ids)[cue] == pytest.approx(math.log(1 / 2))


def test_marked_vocab_strings_and_sizes():
    language = SyntheticLanguage(MARKED)
    assert language.num_tokens == 16 + 1 + 3
    assert language.itos()[15:] == ["w15", "<mark>", "<lag1>", "<lag3>", "<lag7>"]
    assert SyntheticLanguage(SMALL).num_tokens == 16 + 3  # n-back: no <mark>
    corpus = load_corpus("synthetic:vocab=16,mark=1,train=3000,valid=300,test=300")
    assert len(corpus.vocab) == 16 + 1 + 6
    assert corpus.entropy_rate == pytest.approx(
        SyntheticLanguage(parse_synthetic_spec("synthetic:vocab=16,mark=1")).entropy_rate()
    )


def test_mark_key_round_trips():
    spec = parse_synthetic_spec("synthetic:vocab=16,lags=3+8+20,cue=0.2,mark=1")
    assert spec == SyntheticSpec(vocab_size=16, lags=(3, 8, 20), cue_rate=0.2, marked=True)
    assert spec.to_string() == "synthetic:vocab=16,lags=3+8+20,cue=0.2,mark=1"
    assert parse_synthetic_spec(spec.to_string()) == spec
    assert parse_synthetic_spec("synthetic:mark=true") == parse_synthetic_spec("synthetic:mark=True") == replace(
        SyntheticSpec(), marked=True
    )
    assert parse_synthetic_spec("synthetic:mark=0") == parse_synthetic_spec("synthetic:mark=false") == SyntheticSpec()
    assert parse_synthetic_spec("synthetic:mark=0").to_string() == "synthetic"  # the default is omitted
    assert SyntheticSpec(marked=1).marked is True


@pytest.mark.parametrize(
    "text, match",
    [
        ("synthetic:mark=2", "'mark' must be 0 or 1.*valid keys: vocab, lags, cue, mark, branching"),
        ("synthetic:mark=yes", "'mark' must be 0 or 1.*valid keys"),
        ("synthetic:mark", "needs a value.*valid keys"),
        ("synthetic:marked=1", "unknown synthetic key 'marked'.*valid keys: .*mark"),
        ("synthetic:mark=1,cue=0", "cue must be in \\(0, 1\\) with mark=1"),
        ("synthetic:mark=1,cue=1", "cue must be in \\(0, 1\\) with mark=1"),
    ],
)
def test_bad_mark_spec_strings_are_explained(text, match):
    with pytest.raises(CorpusError, match=match):
        parse_synthetic_spec(text)
