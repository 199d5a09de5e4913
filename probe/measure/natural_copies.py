"""Natural copies: how much a model gains from a token's previous occurrence d tokens back, on real text.

The natural-text analogue of the planted copies (``probe.measure.synthetic_recall``). Khandelwal et al.
(ACL 2018, "Sharp Nearby, Fuzzy Far Away", Sec. 5) found that LSTM language models copy words seen far
back, most of all rare ones, by removing a target's earlier occurrence and measuring the loss increase.

For target positions u whose token's most recent earlier occurrence x[u-d] lies within the P = ``prefix``
tokens before u, the model reads those P tokens from a fresh state twice: intact, and with only x[u-d]
replaced by the token next to it in training-frequency rank (a token of similar frequency, never the
target itself). The copy gain is log p(x_u | intact) - log p(x_u | replaced), in nats. Targets are drawn
(seeded, independent of the model) up to ``per_bin`` per distance bin; bins are ``[edge_i, edge_i+1)``.

Rows (mode "eval", axis "distance", x = the bin's first d):

    natural_copy_gain(d)          mean copy gain over the bin's targets
    natural_copy_gain_rare(d)     the same over the targets rarer than the median training frequency of
    natural_copy_gain_common(d)   all targets, and over the others
    natural_copy_count(d)         targets scored in the bin
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from probe.model.language_model import LanguageModel

from probe.measure import tidy
from probe.measure.checks import check_model, check_stream, cpu_generator, eval_mode
from probe.measure.stream import gather_windows, prefix_nll


@dataclass(frozen=True)
class NaturalCopyConfig:
    """Distance bins (their first d; the last bin ends at ``prefix``), targets per bin, prefix length."""

    edges: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    prefix: int = 200
    per_bin: int = 100
    chunk_tokens: int = 1 << 14
    seed: int = 0

    def __post_init__(self):
        if not self.edges or list(self.edges) != sorted(set(self.edges)) or self.edges[0] < 1:
            raise ValueError(f"edges must be increasing positive integers; got {self.edges!r}")
        if self.prefix <= self.edges[-1]:
            raise ValueError(f"prefix ({self.prefix}) must be longer than the last bin's first d ({self.edges[-1]})")
        if self.per_bin < 1:
            raise ValueError(f"per_bin must be a positive integer; got {self.per_bin!r}")

    def bins(self) -> list[tuple[int, int]]:
        """[first d, last d] of every bin."""
        ends = [*self.edges[1:], self.prefix + 1]
        return [(lo, hi - 1) for lo, hi in zip(self.edges, ends)]


def previous_occurrence(stream: torch.Tensor) -> torch.Tensor:
    """For every position, the distance back to the previous occurrence of its token (0: none)."""
    last: dict[int, int] = {}
    out = torch.zeros(stream.numel(), dtype=torch.long)
    for i, t in enumerate(stream.tolist()):
        if t in last:
            out[i] = i - last[t]
        last[t] = i
    return out


def similar_frequency(counts: torch.Tensor) -> torch.Tensor:
    """For every token, the token next to it in training-frequency rank (the next rarer one; the most
    frequent's neighbour for the rarest): a stand-in that keeps the context's frequency profile."""
    order = torch.argsort(counts, descending=True, stable=True)
    out = torch.empty_like(order)
    out[order[:-1]] = order[1:]
    out[order[-1]] = order[-2]
    return out


def _targets(dist: torch.Tensor, config: NaturalCopyConfig) -> dict[tuple[int, int], torch.Tensor]:
    """Per distance bin, up to ``per_bin`` target positions u >= prefix (seeded); ``dist``: previous_occurrence."""
    positions = torch.arange(dist.numel())
    g = cpu_generator(config.seed, 13)
    out = {}
    for lo, hi in config.bins():
        found = positions[(positions >= config.prefix) & (dist >= lo) & (dist <= hi)]
        if len(found) > config.per_bin:
            found = found[torch.randperm(len(found), generator=g)[: config.per_bin]].sort().values
        out[(lo, hi)] = found
    return out


def natural_copies(model: LanguageModel, stream: torch.Tensor, counts: torch.Tensor,
                   config: NaturalCopyConfig = NaturalCopyConfig(), ids: dict | None = None) -> pd.DataFrame:
    """Copy gain by distance to the previous occurrence, overall and for rare and common targets.

    ``counts``: training unigram counts (``probe.measure.checks.unigram``), for the frequency ranks."""
    model = check_model(model)
    stream = check_stream(stream, model)
    dist = previous_occurrence(stream.cpu())
    targets = _targets(dist, config)
    if not any(len(t) for t in targets.values()):
        raise ValueError(f"no token of these {stream.numel()} held-out tokens recurs within {config.prefix} tokens "
                         f"after the first {config.prefix}: natural copies need repeated tokens; give more "
                         f"held-out text or a shorter prefix")
    swap = similar_frequency(counts.cpu())
    median = float(counts.median())
    P = config.prefix
    rows = []
    with eval_mode(model):
        for (lo, hi), u in targets.items():
            if not len(u):
                rows.append(tidy.row("natural_copy_count", "distance", lo, 0, mode="eval"))
                continue
            intact = gather_windows(stream, u - 1, P)
            replaced = intact.clone()
            col = torch.arange(len(u))
            row = P - dist[u]  # x[u - d] sits d rows from the end of its window
            gold = stream[u.to(stream.device)]
            replaced[row.to(stream.device), col.to(stream.device)] = swap[gold.cpu()].to(stream.device)
            gain = (prefix_nll(model, replaced, gold, config.chunk_tokens)
                    - prefix_nll(model, intact, gold, config.chunk_tokens))
            rare = counts.cpu()[gold.cpu()].double() < median
            rows.append(tidy.row("natural_copy_gain", "distance", lo, float(gain.mean()), mode="eval"))
            for name, sel in (("rare", rare), ("common", ~rare)):
                value = float(gain[sel].mean()) if bool(sel.any()) else math.nan
                rows.append(tidy.row(f"natural_copy_gain_{name}", "distance", lo, value, mode="eval"))
            rows.append(tidy.row("natural_copy_count", "distance", lo, len(u), mode="eval"))
    return tidy.frame(rows, ids)
