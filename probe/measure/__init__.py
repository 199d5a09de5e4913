"""Measurements of memory in a trained language model; every one returns a tidy table (``tidy``).

Information decay at lags 1..K (``influence``, ``probe_info``, ``gradient``,
each with half-lives and decay rates from ``curves``), perplexity over
sequence length (``context``), recall of planted copies on the
synthetic corpus (``synthetic_recall``), and memory on natural text: context
perturbation beyond distance d (``perturbation``) and natural copies
(``natural_copies``), run when ``MeasureConfig.perturbation`` / ``.natural_copies`` are set. ``run_all`` runs every measurement
that applies to a corpus and stacks the tables. Definitions, the table
format and timings: docs/measurements.md.

    from probe.measure import MeasureConfig, run_all
    df = run_all(model, corpus, MeasureConfig(max_lag=20), ids={"placement": "zaremba", "seed": 0, "run_id": rid})
"""

from __future__ import annotations

import pandas as pd
import torch

from probe.data.corpus import Corpus
from probe.model.language_model import LanguageModel

from probe.measure import tidy
from probe.measure.checks import check_model, heldout, unigram
from probe.measure.config import CONFIGURED, MEASURES, MeasureConfig
from probe.measure.natural_copies import NaturalCopyConfig, natural_copies
from probe.measure.perturbation import PerturbationConfig, context_perturbation
from probe.measure.context import context_length_curve, context_targets, position_curve
from probe.measure.curves import decay_rate, half_life
from probe.measure.gradient import gradient_sensitivity
from probe.measure.influence import influence
from probe.measure.probe_info import probe_information
from probe.measure.synthetic_recall import recall_accuracy
from probe.measure.tidy import COLUMNS, validate

__all__ = [
    "COLUMNS", "MEASURES", "MeasureConfig", "NaturalCopyConfig", "PerturbationConfig", "context_length_curve",
    "context_perturbation", "natural_copies", "context_targets", "decay_rate",
    "gradient_sensitivity", "half_life", "influence", "measures_for", "position_curve", "probe_information",
    "recall_accuracy", "run_all", "validate",
]


def measures_for(corpus: Corpus, config: MeasureConfig) -> tuple[str, ...]:
    """The measurements ``run_all`` runs: ``config.measures``, or every one that applies to the corpus."""
    has_lags = f"{config.split}_lag" in corpus.annotations
    if config.measures is None:
        return tuple(m for m in MEASURES if (m != "recall" or has_lags)
                     and (m not in CONFIGURED or getattr(config, m) is not None))
    if "recall" in config.measures and not has_lags:
        raise ValueError(
            f"measure 'recall' needs lag annotations ({config.split}_lag), which only synthetic corpora have; "
            f"corpus {corpus.name!r} has {sorted(corpus.annotations) or 'none'}"
        )
    return config.measures


def run_all(
    model: LanguageModel, corpus: Corpus, config: MeasureConfig = MeasureConfig(), ids: dict | None = None
) -> pd.DataFrame:
    """Every applicable measurement of ``model`` on ``corpus``'s held-out split, as one tidy table.

    ``ids``: run identifiers added as columns (placement, seed, run_id, and
    any others). Without a placement, the model's placement spec is used.
    """
    model = check_model(model)
    stream = heldout(corpus, config.split, config.max_tokens)
    counts = unigram(corpus.train, model.config.vocab_size)
    ids = {"placement": model.placement.spec, **(ids or {})}
    steps = {
        "influence": lambda: influence(model, stream, counts, config, ids),
        "probe": lambda: probe_information(model, stream, counts, config, ids),
        "gradient": lambda: gradient_sensitivity(model, stream, config, ids),
        "context": lambda: context_length_curve(model, stream, config, ids),
        "position": lambda: position_curve(model, stream, config, ids),
        "recall": lambda: recall_accuracy(
            model, stream, heldout_lags(corpus, config), config, ids, cue_ids=cue_ids(corpus)
        ),
        "perturbation": lambda: context_perturbation(model, stream, config.perturbation, ids),
        "natural_copies": lambda: natural_copies(model, stream, counts, config.natural_copies, ids),
    }
    return tidy.concat(steps[m]() for m in measures_for(corpus, config))


def heldout_lags(corpus: Corpus, config: MeasureConfig):
    """The lag annotations aligned with ``heldout(corpus, config.split, config.max_tokens)``."""
    lags = corpus.annotations[f"{config.split}_lag"]
    return lags if config.max_tokens is None else lags[: config.max_tokens]


def cue_ids(corpus: Corpus) -> torch.Tensor:
    """The ids of the synthetic corpus's ``<mark>`` and ``<lagk>`` cues (probe.data.synthetic)."""
    return torch.tensor([i for i, t in enumerate(corpus.vocab.itos) if t == "<mark>" or t.startswith("<lag")],
                        dtype=torch.long)
