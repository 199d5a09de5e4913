"""Corpus types and batching: ``Vocab``, ``Corpus``, ``batchify`` and BPTT windows.

Conventions follow pytorch/examples ``word_language_model``: word-level text is
split on whitespace with ``<eos>`` appended at every line end, ids are given in
order of first appearance, and ``batchify`` cuts the token stream into B
contiguous streams (here shaped (N, B), time-major, as the kernels expect).

Where corpora come from is elsewhere: the registry of named datasets and
``load_corpus`` in probe.data.registry, the generated corpus in probe.data.synthetic,
corpora from the user's own text files in probe.data.text. This module
imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping, Sequence

import torch

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")


class CorpusError(ValueError):
    """A corpus cannot be loaded as asked; the message says why and what to do about it."""


# --------------------------------------------------------------------------- vocabulary


class Vocab:
    """Token strings <-> ids, immutable once built.

    Encoding a token outside the vocabulary gives ``<unk>`` when the vocabulary
    has it (PTB, WikiText-2) and is an error otherwise (characters, synthetic).
    """

    def __init__(self, itos: Iterable[str]):
        itos = tuple(itos)
        stoi: dict[str, int] = {}
        for i, token in enumerate(itos):
            if token in stoi:
                raise CorpusError(f"vocabulary lists {token!r} twice (ids {stoi[token]} and {i})")
            stoi[token] = i
        self._itos = itos
        self._stoi = stoi
        self._frozen = True

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError("Vocab is immutable")
        super().__setattr__(name, value)

    @classmethod
    def build(cls, *streams: Iterable[str]) -> "Vocab":
        """Types of the streams in order of first appearance (pytorch/examples' Dictionary)."""
        seen: dict[str, None] = {}
        for stream in streams:
            seen.update(dict.fromkeys(stream))
        return cls(seen)

    @property
    def itos(self) -> tuple[str, ...]:
        return self._itos

    @property
    def stoi(self) -> Mapping[str, int]:
        return MappingProxyType(self._stoi)

    @property
    def unk_id(self) -> int | None:
        return self._stoi.get(UNK)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._itos == other._itos

    def __hash__(self) -> int:
        return hash(self._itos)

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self._itos[:5]))
        return f"Vocab({len(self)} types: {head}{', ...' if len(self) > 5 else ''})"

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        """Ids of ``tokens`` as a 1-D long tensor."""
        stoi, unk = self._stoi, self.unk_id
        if unk is not None:
            ids = [stoi.get(t, unk) for t in tokens]
        else:
            try:
                ids = [stoi[t] for t in tokens]
            except KeyError:
                unknown = sorted({t for t in tokens if t not in stoi})
                raise CorpusError(
                    f"{len(unknown)} token type(s) are not in the vocabulary and it has no {UNK}: "
                    f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
                ) from None
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """Token strings of ``ids``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return [self._itos[i] for i in ids]


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True, eq=False)  # eq=False: tensors do not compare to a bool
class Corpus:
    """A tokenised corpus: vocabulary plus train/valid/test id streams (1-D long tensors).

    ``split`` is "canonical" or "substitute"; ``split_note`` says in words which
    text backs each split (reports print it). ``entropy_rate`` (nats/token) is
    known only for synthetic corpora; ``annotations`` holds per-token side data
    (synthetic: ``<split>_lag``); ``files`` names the file behind each split.

    Corpora from the user's own text (probe.data.text) also fill ``sources``
    (each file read -> its sha256) and ``unknown_counts`` (per evaluation split,
    how many tokens did not occur in the training text and became ``<unk>``);
    both stay empty for registry and synthetic corpora.
    """

    name: str
    level: str
    vocab: Vocab
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    split: str
    split_note: str
    entropy_rate: float | None = None
    annotations: Mapping[str, torch.Tensor] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    unknown_counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Name for reports, e.g. "ptb (substitute split)"."""
        return self.name if self.split == "canonical" else f"{self.name} ({self.split} split)"


# --------------------------------------------------------------------------- batching


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D token stream into ``batch_size`` contiguous streams, shaped (N, B).

    Column b is tokens [b*N, (b+1)*N) of the stream; the trailing len % B tokens
    are dropped (pytorch/examples' convention, time-major here).
    """
    if ids.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token stream; got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(
            f"batchify needs at least batch_size*2 = {batch_size * 2} tokens (an input and a target per "
            f"stream); got {ids.numel()}"
        )
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()


def num_windows(data: torch.Tensor, bptt: int) -> int:
    """How many windows ``bptt_windows(data, bptt)`` yields."""
    _check_windows(data, bptt)
    return -(-(data.shape[0] - 1) // bptt)


def bptt_windows(data: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (x, y) windows of batchified ``data`` (N, B): x (T, B) and y = x shifted by one step.

    T = bptt except for the last window, which takes what is left (at least 1).
    """
    _check_windows(data, bptt)
    last = data.shape[0] - 1  # the final row is only ever a target
    for start in range(0, last, bptt):
        stop = min(start + bptt, last)
        yield data[start:stop], data[start + 1 : stop + 1]


def _check_windows(data: torch.Tensor, bptt: int) -> None:
    if data.dim() != 2 or data.shape[0] < 2:
        raise ValueError(f"expected batchified data (N >= 2, B); got shape {tuple(data.shape)}")
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1; got {bptt}")
