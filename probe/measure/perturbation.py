"""Context perturbation beyond distance d: how far back a model uses what it read, on natural text.

Khandelwal, He, Qi & Jurafsky, "Sharp Nearby, Fuzzy Far Away: How Neural Language Models Use Context"
(ACL 2018): the model reads a long prefix of fixed length P from a fresh state and predicts the token
after it; every token farther than d back is perturbed while the nearest d stay intact, and the loss
increase over the intact prefix says whether anything beyond d was used. Unlike truncation
(``probe.measure.context``), the model always reads P tokens, so "uses no context beyond d" is not
confounded with "has a state that never saw the start of a text".

Perturbations of the tokens x[u-P .. u-d-1] (the target is x[u]; seeded, never depending on the model):

- ``shuffle``: the same tokens in a random order (word order beyond d destroyed, the bag of words kept);
- ``replace``: the tokens at the same positions of another window of the stream (everything beyond d
  replaced by other text of the same length).

Rows (x = d, the number of nearest tokens left intact, axis "distance"; mode "eval"):

    shuffled_nll_increase(d), replaced_nll_increase(d)
        mean NLL (perturbed) - mean NLL (intact), nats
    perturbation_intact_nll
        mean NLL of the targets after the intact prefix
    shuffled_effective_context, replaced_effective_context
        the smallest measured d from which on every measured change is at most ``tolerance`` times the
        intact NLL in size; inf where even the largest d's is not (context beyond the measured range is used)

The effective context reads the size of the change, not its sign: a perturbation that lowers the loss
(an overconfident model's prediction softened by noise) still shows that the perturbed tokens are read.
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

KINDS = ("shuffle", "replace")
PREFIX = {"shuffle": "shuffled", "replace": "replaced"}  # measure names: <prefix>_nll_increase, ...


@dataclass(frozen=True)
class PerturbationConfig:
    """What the perturbation measure reads: d values, prefix length, targets, kinds and tolerance."""

    distances: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200)
    prefix: int | None = None  # P, the tokens read before each target; None: max(distances) + 50
    targets: int = 200  # target positions, identical for every d and kind
    kinds: tuple[str, ...] = KINDS
    tolerance: float = 0.01  # effective context: the increase is at most this share of the intact NLL
    chunk_tokens: int = 1 << 14
    seed: int = 0

    def __post_init__(self):
        if not self.distances or any(int(d) < 1 for d in self.distances):
            raise ValueError(f"distances must be positive integers; got {self.distances!r}")
        if self.prefix is not None and self.prefix <= max(self.distances):
            raise ValueError(f"prefix ({self.prefix}) must be longer than the largest distance "
                             f"({max(self.distances)}), or the largest d perturbs nothing")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"unknown perturbation kinds {unknown or self.kinds!r}; valid: {', '.join(KINDS)}")
        if self.targets < 1:
            raise ValueError(f"targets must be a positive integer; got {self.targets!r}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must lie in [0, 1); got {self.tolerance!r}")

    @property
    def prefix_length(self) -> int:
        return self.prefix if self.prefix is not None else max(self.distances) + 50


def check_fits(n_tokens: int, config: PerturbationConfig) -> None:
    """One line before anything trains when the stream is too short for the largest d (and its prefix)."""
    P = config.prefix_length
    if n_tokens < 2 * (P + 1):
        largest = max(1, n_tokens // 2 - 51)
        raise ValueError(f"context perturbation reads a prefix of {P} tokens (largest d = {max(config.distances)}) "
                         f"before each target and another window to replace it from, which needs at least "
                         f"{2 * (P + 1)} held-out tokens; this stream has {n_tokens}, which allows a largest d of "
                         f"about {largest}")


def _sample(n_tokens: int, config: PerturbationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Target positions u (with P tokens before them) and, per target, another window's end for replace."""
    P = config.prefix_length
    g = cpu_generator(config.seed, 11)
    targets = torch.randint(P, n_tokens, (config.targets,), generator=g)
    donors = torch.randint(P, n_tokens, (config.targets,), generator=g)
    # A donor window must not overlap its target's prefix: shift it by half the stream where it does.
    clash = (donors - targets).abs() <= P
    donors[clash] = (donors[clash] + n_tokens // 2 - P) % (n_tokens - P) + P
    return targets, donors


def perturb(prefixes: torch.Tensor, donors: torch.Tensor, d: int, kind: str, generator: torch.Generator):
    """``prefixes`` (P, M) with every row farther than d from the end perturbed; the last d rows intact."""
    P = prefixes.shape[0]
    far = P - d
    out = prefixes.clone()
    if far <= 0:
        return out
    if kind == "replace":
        out[:far] = donors[:far]
    else:
        order = torch.argsort(torch.rand(far, prefixes.shape[1], generator=generator), dim=0)
        out[:far] = prefixes[:far].gather(0, order.to(prefixes.device))
    return out


def context_perturbation(model: LanguageModel, stream: torch.Tensor, config: PerturbationConfig = PerturbationConfig(),
                         ids: dict | None = None) -> pd.DataFrame:
    """The loss increase from perturbing everything farther than d back, per d and kind; see the module."""
    model = check_model(model)
    stream = check_stream(stream, model)
    check_fits(stream.numel(), config)
    P = config.prefix_length
    targets, donor_ends = _sample(stream.numel(), config)
    prefixes = gather_windows(stream, targets - 1, P)
    donors = gather_windows(stream, donor_ends - 1, P)
    gold = stream[targets.to(stream.device)]
    rows = []
    with eval_mode(model):
        intact = float(prefix_nll(model, prefixes, gold, config.chunk_tokens).mean())
        rows.append(tidy.scalar("perturbation_intact_nll", intact, mode="eval"))
        for k, kind in enumerate(config.kinds):
            g = cpu_generator(config.seed, 12 + k)
            increases = {}
            for d in sorted(config.distances):
                nll = prefix_nll(model, perturb(prefixes, donors, d, kind, g), gold, config.chunk_tokens)
                increases[d] = float(nll.mean()) - intact
                rows.append(tidy.row(f"{PREFIX[kind]}_nll_increase", "distance", d, increases[d], mode="eval"))
            effective = effective_context(increases, config.tolerance * intact)
            rows.append(tidy.scalar(f"{PREFIX[kind]}_effective_context", effective, mode="eval"))
    return tidy.frame(rows, ids)


def effective_context(increases: dict[int, float], tolerance: float) -> float:
    """The smallest d from which on every measured change is at most ``tolerance`` in size; inf if the
    largest d's is above it (a noisy dip below the tolerance at a small d does not count)."""
    effective = math.inf
    for d in sorted(increases, reverse=True):
        if abs(increases[d]) > tolerance:
            break
        effective = float(d)
    return effective
