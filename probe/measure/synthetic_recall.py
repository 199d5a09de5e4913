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
    copy_logprob(lag)            mean log p(copy) above the forced tokens' own frequencies at that lag
                                 (nats; 0 is a model that knows only which tokens get copied, and
                                 copy_logprob_best, the entropy of those frequencies, a perfect one)
    source_influence(lag)        counterfactual influence of the marked source on the copy's prediction:
                                 mean KL(p || p') in nats at the copy, p' with every source replaced by
                                 another content token (``cue_ids`` given; drawn by ``config.seed``)

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
from probe.measure.stream import Layout, stream_log_probs


def recall_accuracy(
    model: LanguageModel,
    stream: torch.Tensor,
    lags: torch.Tensor,
    config: MeasureConfig = MeasureConfig(),
    ids: dict | None = None,
    cue_ids: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Recall of the planted copies by lag: accuracy, log-probability above chance and, when ``cue_ids``
    (the ids of ``<mark>`` and the cues) are given, the marked source's influence on the copy.
    ``lags`` is the per-token lag annotation aligned with ``stream``."""
    model = check_model(model)
    stream = check_stream(stream, model)
    if not isinstance(lags, torch.Tensor) or lags.shape != stream.shape:
        shape = tuple(lags.shape) if isinstance(lags, torch.Tensor) else type(lags).__name__
        raise ValueError(f"lag annotations must be a tensor aligned with the stream {tuple(stream.shape)}; got {shape}")
    layout = Layout(stream.numel(), config.stream_batch)
    n = layout.rows * layout.batch
    lags = lags[:n].cpu()
    truth = stream[:n].cpu()
    history = layout.history(torch.arange(n))
    scored = (lags > 0) & (history >= 2 * lags)
    positions = torch.nonzero(scored).squeeze(1)
    with eval_mode(model):
        logp = stream_log_probs(model, stream, layout, positions, config.chunk_tokens)
        cf = None
        if cue_ids is not None and positions.numel():
            counterfactual = _replace_sources(truth, positions, lags, cue_ids.cpu(), model.config.vocab_size,
                                              torch.Generator().manual_seed(config.seed))
            cf = stream_log_probs(model, counterfactual.to(stream.device), layout, positions, config.chunk_tokens)
    forced_all = truth[positions]
    rows = []
    for k in sorted(set(lags[positions].tolist())):
        sel = lags[positions] == k
        count = int(sel.sum())
        forced = forced_all[sel]
        lp = logp[sel]
        acc = float((lp.argmax(-1) == forced).double().mean())
        freq = torch.bincount(forced).double() / count
        chance = float(freq.max())
        baseline = torch.log(freq[forced])  # log q(copy): the forced tokens' own frequencies
        gain = float((lp.gather(1, forced.unsqueeze(1)).squeeze(1) - baseline).mean())
        rows.append(tidy.row("recall_accuracy", "lag", k, acc, mode="eval"))
        rows.append(tidy.row("copy_logprob", "lag", k, gain, mode="eval"))
        if cf is not None:
            kl = (lp.exp() * (lp - cf[sel])).sum(-1).clamp_min(0.0)
            rows.append(tidy.row("source_influence", "lag", k, float(kl.mean()), mode="eval"))
        # The references do not involve the model, hence no mode.
        rows.append(tidy.row("recall_accuracy_best", "lag", k, 1.0))
        rows.append(tidy.row("recall_accuracy_chance", "lag", k, chance))
        rows.append(tidy.row("copy_logprob_best", "lag", k, float(-baseline.mean())))
        rows.append(tidy.row("recall_count", "lag", k, count))
    if not rows:
        raise ValueError(
            "no forced (lag > 0) token with its source inside the history of its stream; the stream has no "
            "planted recalls, or its streams are too short (use a smaller stream_batch or more text)"
        )
    return tidy.frame(rows, ids)


def source_positions(stream: torch.Tensor, positions: torch.Tensor, lags: torch.Tensor,
                     cue_ids: torch.Tensor) -> torch.Tensor:
    """The source of each copy: the token ``lag`` non-cue positions before it (non-cue: every token but
    ``<mark>`` and the cues)."""
    noncue = ~torch.isin(stream, cue_ids)
    where = torch.nonzero(noncue).squeeze(1)  # stream positions of the non-cue tokens, in order
    index = torch.cumsum(noncue.long(), 0) - 1  # each position's index among them
    return where[index[positions] - lags[positions]]


def _replace_sources(stream, positions, lags, cue_ids, vocab_size, generator) -> torch.Tensor:
    """``stream`` with the source of every scored copy replaced by a different content token."""
    sources = source_positions(stream, positions, lags, cue_ids)
    content = torch.tensor([i for i in range(vocab_size) if i not in set(cue_ids.tolist())])
    out = stream.clone()
    # A uniform draw among the other content tokens: indices at or above the original's move up by one.
    original = torch.searchsorted(content, stream[sources])
    draw = torch.randint(len(content) - 1, (sources.numel(),), generator=generator)
    out[sources] = content[draw + (draw >= original).long()]
    return out
