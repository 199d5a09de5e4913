"""Synthetic ground truth: does the model recall the planted long-range copies?

On a ``probe.data.synthetic`` corpus every forced token is an exact copy of the
token ``lag`` non-cue positions earlier (``corpus.annotations["<split>_lag"]``
holds the lag of each forced token, 0 elsewhere), announced by a cue token.
Given the whole history it is certain, so the best achievable accuracy is
1.0. The model reads the held-out stream with carried state (evaluation
masks); its argmax prediction at each forced position is right or wrong.

    recall_accuracy(lag)         fraction of forced tokens predicted exactly
    recall_accuracy_best(lag)    1.0 (a forced token is determined by the history)
    recall_accuracy_chance(lag)  accuracy of always guessing the most common forced token at that lag
    recall_count(lag)            forced tokens scored

A forced token is scored only if its source lies in the history of its
column: the source is at most 2*lag positions back (between them lie lag-1
non-cue tokens, each preceded by at most one cue, plus this token's cue), so
forced tokens with fewer than 2*lag tokens of history are left out.
"""

from __future__ import annotations

import pandas as pd
import torch

from probe.model.language_model import LanguageModel

from probe.measure import tidy
from probe.measure.checks import check_model, check_stream, eval_mode
from probe.measure.config import MeasureConfig
from probe.measure.stream import Layout, stream_predictions


def recall_accuracy(
    model: LanguageModel,
    stream: torch.Tensor,
    lags: torch.Tensor,
    config: MeasureConfig = MeasureConfig(),
    ids: dict | None = None,
) -> pd.DataFrame:
    """Accuracy on forced tokens by lag; ``lags`` is the per-token lag annotation aligned with ``stream``."""
    model = check_model(model)
    stream = check_stream(stream, model)
    if not isinstance(lags, torch.Tensor) or lags.shape != stream.shape:
        shape = tuple(lags.shape) if isinstance(lags, torch.Tensor) else type(lags).__name__
        raise ValueError(f"lag annotations must be a tensor aligned with the stream {tuple(stream.shape)}; got {shape}")
    layout = Layout(stream.numel(), config.stream_batch)
    n = layout.rows * layout.batch
    with eval_mode(model):
        _, argmax = stream_predictions(model, stream, layout, config.chunk_tokens)
    lags = lags[:n].cpu()
    truth, argmax = stream[:n].cpu(), argmax.cpu()
    history = layout.history(torch.arange(n))
    rows = []
    for k in sorted(set(lags[lags > 0].tolist())):
        sel = (lags == k) & (history >= 2 * k)
        count = int(sel.sum())
        if count == 0:
            continue
        forced = truth[sel]
        acc = float((argmax[sel] == forced).double().mean())
        chance = float(torch.bincount(forced).max()) / count
        rows.append(tidy.row("recall_accuracy", "lag", k, acc, mode="eval"))
        # The references do not involve the model, hence no mode.
        rows.append(tidy.row("recall_accuracy_best", "lag", k, 1.0))
        rows.append(tidy.row("recall_accuracy_chance", "lag", k, chance))
        rows.append(tidy.row("recall_count", "lag", k, count))
    if not rows:
        raise ValueError(
            "no forced (lag > 0) token with its source inside the history of its stream; the stream has no "
            "planted recalls, or its streams are too short (use a smaller stream_batch or more text)"
        )
    return tidy.frame(rows, ids)
