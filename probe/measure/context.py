"""Perplexity over sequence length: context-length curve, effective context, position curve.

Context-length curve (Khandelwal et al. 2018, "Sharp Nearby, Fuzzy Far Away"):
every target x_u is scored from a fresh (zero) state after reading only its
last L tokens x[u-L..u-1], for each L in ``context_lengths``. The targets are
sampled once per (held-out stream, config): with a seeded generator that
never sees the model, among positions with at least max(L) tokens of history,
so every L and every model is scored on the same tokens. Rows:

    context_nll / context_ppl(L)   mean NLL (nats) and exp(mean NLL)
    full_context_nll / _ppl        the same targets with the state carried over the whole stream
    effective_context              smallest L with ppl(L) <= (1 + tol) * full ppl (NaN if none)

Position curve: windows read from a fresh state; the prediction after p
tokens is binned by p in powers of two (1, 2-3, 4-7, ...; x = the bin's first
position; the last bin ends at ``position_length``):

    position_nll / position_ppl(p)
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from probe.model.language_model import LanguageModel

from probe.measure import tidy
from probe.measure.checks import check_model, check_stream, cpu_generator, eval_mode
from probe.measure.config import MeasureConfig
from probe.measure.stream import Layout, eval_masks, gather_windows, prefix_nll, stream_predictions


def context_targets(n_tokens: int, config: MeasureConfig) -> torch.Tensor:
    """The target positions of the context-length curve: a function of the stream length and config only."""
    layout = Layout(n_tokens, config.stream_batch)
    L = max(config.context_lengths)
    if layout.rows <= L:
        raise ValueError(
            f"context lengths up to {L} need streams of more than {L} tokens, but {n_tokens} held-out tokens in "
            f"stream_batch={config.stream_batch} streams give {layout.rows} each; use shorter context_lengths, "
            "a smaller stream_batch, or more held-out text"
        )
    return layout.sample(config.context_targets, L, cpu_generator(config.seed, 6))


def window_nll(model: LanguageModel, stream: torch.Tensor, targets: torch.Tensor, L: int, chunk_tokens: int):
    """-log p(x_u | x[u-L..u-1]) from a zero state for every target u (float64, nats)."""
    if bool((targets < L).any()):
        raise ValueError(f"every target needs {L} tokens before it in the stream")
    return prefix_nll(model, gather_windows(stream, targets - 1, L), stream[targets.to(stream.device)], chunk_tokens)


def context_length_curve(
    model: LanguageModel, stream: torch.Tensor, config: MeasureConfig = MeasureConfig(), ids: dict | None = None
) -> pd.DataFrame:
    """Context-length curve, full-context perplexity and effective context on the same targets.

    The target positions are in ``df.attrs["target_positions"]`` (also ``context_targets``).
    """
    model = check_model(model)
    stream = check_stream(stream, model)
    targets = context_targets(stream.numel(), config)
    layout = Layout(stream.numel(), config.stream_batch)
    rows = []
    with eval_mode(model):
        full = stream_predictions(model, stream, layout, config.chunk_tokens)[0][targets.to(stream.device)].cpu()
        full_nll = float(full.mean())
        effective = math.nan
        for L in config.context_lengths:
            nll = float(window_nll(model, stream, targets, L, config.chunk_tokens).mean())
            rows.append(tidy.row("context_nll", "context_length", L, nll, mode="eval"))
            rows.append(tidy.row("context_ppl", "context_length", L, _ppl(nll), mode="eval"))
            if math.isnan(effective) and _ppl(nll) <= (1 + config.effective_tolerance) * _ppl(full_nll):
                effective = float(L)
    rows.append(tidy.scalar("full_context_nll", full_nll, mode="eval"))
    rows.append(tidy.scalar("full_context_ppl", _ppl(full_nll), mode="eval"))
    rows.append(tidy.scalar("effective_context", effective, mode="eval"))
    df = tidy.frame(rows, ids)
    df.attrs["target_positions"] = targets.tolist()
    return df


def position_bins(n: int) -> list[tuple[int, int]]:
    """[(first, last)] positions of the bins 1, 2-3, 4-7, ... covering 1..n."""
    bins, lo = [], 1
    while lo <= n:
        bins.append((lo, min(2 * lo - 1, n)))
        lo *= 2
    return bins


@torch.no_grad()
def position_curve(
    model: LanguageModel, stream: torch.Tensor, config: MeasureConfig = MeasureConfig(), ids: dict | None = None
) -> pd.DataFrame:
    """Perplexity by position since a state reset, in logarithmic bins."""
    model = check_model(model)
    stream = check_stream(stream, model)
    P = config.position_length
    layout = Layout(stream.numel(), config.stream_batch)
    if layout.rows <= P:
        raise ValueError(
            f"position_length={P} needs streams of more than {P} tokens, but {stream.numel()} held-out tokens in "
            f"stream_batch={config.stream_batch} streams give {layout.rows} each; use a smaller position_max, "
            "a smaller stream_batch, or more held-out text"
        )
    # A window of P + 1 tokens: the model reads the first P, each step predicting the next.
    ends = layout.sample(config.position_windows, P, cpu_generator(config.seed, 7))
    windows = gather_windows(stream, ends, P + 1)
    nll = []
    per_chunk = max(1, config.chunk_tokens // P)
    with eval_mode(model):
        for lo in range(0, windows.shape[1], per_chunk):
            w = windows[:, lo : lo + per_chunk]
            logits, _ = model(w[:-1], masks=eval_masks(model, P, w.shape[1]))
            logp = F.log_softmax(logits.float(), dim=-1)
            nll.append(-logp.gather(-1, w[1:].unsqueeze(-1)).squeeze(-1).double())
    nll = torch.cat(nll, dim=1).cpu()  # (P, M): row p-1 is the prediction after p tokens
    rows = []
    for first, last in position_bins(P):
        mean = float(nll[first - 1 : last].mean())
        rows.append(tidy.row("position_nll", "position", first, mean, mode="eval"))
        rows.append(tidy.row("position_ppl", "position", first, _ppl(mean), mode="eval"))
    return tidy.frame(rows, ids)


def _ppl(nll: float) -> float:
    return math.exp(nll) if nll < 700 else math.inf
