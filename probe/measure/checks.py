"""Input checks shared by the measurements: clear errors at the boundary, never deep inside."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from probe.data.corpus import Corpus
from probe.model.language_model import LanguageModel


def check_model(model) -> LanguageModel:
    """``model`` itself, or a ValueError saying it is not a ``probe.model.language_model.LanguageModel``."""
    if not isinstance(model, LanguageModel):
        raise ValueError(
            f"measurements need a probe.model.language_model.LanguageModel (embedding -> masked LSTM layers -> decoder, "
            f"with sample_masks and forward(..., masks=, return_hidden=)); got {type(model).__name__}"
        )
    return model


def check_stream(stream, model: LanguageModel, what: str = "held-out stream") -> torch.Tensor:
    """A non-empty 1-D long tensor of ids in the model's vocabulary, on the model's device."""
    if not isinstance(stream, torch.Tensor):
        raise ValueError(f"the {what} must be a 1-D tensor of token ids; got {type(stream).__name__}")
    if stream.dim() != 1:
        raise ValueError(f"the {what} must be a 1-D tensor of token ids; got shape {tuple(stream.shape)}")
    if stream.numel() == 0:
        raise ValueError(f"the {what} is empty; measurements need held-out text (e.g. corpus.valid)")
    if stream.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"the {what} must hold integer token ids; got dtype {stream.dtype}")
    V = model.config.vocab_size
    lo, hi = int(stream.min()), int(stream.max())
    if lo < 0 or hi >= V:
        raise ValueError(f"the {what} holds ids in [{lo}, {hi}] but the model's vocabulary is [0, {V})")
    return stream.long().to(model.decoder.weight.device)


def heldout(corpus: Corpus, split: str, max_tokens: int | None) -> torch.Tensor:
    """The first ``max_tokens`` ids of a corpus split, with a clear error for a missing or empty one."""
    if not isinstance(corpus, Corpus):
        raise ValueError(f"expected a probe.data.corpus.Corpus; got {type(corpus).__name__}")
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be one of train, valid, test; got {split!r}")
    ids = getattr(corpus, split)
    if ids.numel() == 0:
        raise ValueError(f"the {split} split of corpus {corpus.name!r} is empty; choose another split")
    return ids if max_tokens is None else ids[:max_tokens]


def unigram(train_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Unigram counts of the training text (float64, length ``vocab_size``)."""
    if train_ids.numel() == 0:
        raise ValueError("the training text is empty; the unigram distribution needs training tokens")
    return torch.bincount(train_ids.reshape(-1).cpu(), minlength=vocab_size)[:vocab_size].double()


def check_lag(max_lag: int, rows: int, stream_batch: int, n_tokens: int, extra: int, what: str) -> None:
    """Each of the ``stream_batch`` columns of ``rows`` tokens must fit a window of max_lag + extra tokens."""
    if max_lag < 1:
        raise ValueError(f"max_lag must be >= 1; got {max_lag}")
    if rows < max_lag + extra:
        raise ValueError(
            f"{what}: lags up to max_lag={max_lag} need at least {max_lag + extra} tokens per stream, but "
            f"{n_tokens} held-out tokens in stream_batch={stream_batch} streams give {rows} each; "
            f"use max_lag <= {max(rows - extra, 0)}, a smaller stream_batch, or more held-out text"
        )


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Evaluation mode for the block, then the model's own mode again."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def cpu_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one kind of draw; ``stream`` keeps kinds of draws apart under one seed."""
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + stream)
    return g
