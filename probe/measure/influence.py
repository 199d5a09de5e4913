"""Counterfactual influence of the token at lag k on the state and prediction at t.

For a window x[t-K..t] the token x_{t-k} is replaced by another token drawn
from the training text's unigram distribution (never the token itself), and
the model reads the original and all K counterfactual copies as one batch:

    influence_kl      KL(p(. | x_{<=t}) || p(. | x'_{<=t}))   (nats, the prediction made at t)
    influence_hidden  ||h_t - h'_t|| / ||h_t||                 (per layer; the top layer is layers-1)

averaged over windows. The KL is computed in float64 from the network's
logits (log-softmax included), so it is >= 0 up to float64 rounding even
where it is far below float32's resolution. ``influence_hidden`` is a
relative distance, dimensionless: the Euclidean distance between the
counterfactual's and the original's hidden state h_t of that layer (the
output at the last step t of the window, after the layer's recurrence and
before any output dropout) divided by the Euclidean norm of the original's
h_t, window by window (the norm clamped at 1e-12), then averaged.

Lag k = 1 is the token before x_t (x_t itself would be lag 0). Windows start
from the state carried over the held-out stream up to t-K-1
(``carry_state=False``: from a zero state).

Two modes, on the same windows and the same replacement tokens:
- ``eval``: evaluation masks (the identity for dropout; zoneout's expectation);
- ``train``: one draw of the placement's training masks per window, shared
  exactly by the original and its K copies, so every difference comes from
  the replaced token: the memory the model has while dropout is active.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pandas as pd

from probe.model.language_model import LanguageModel

from probe.measure import tidy
from probe.measure.checks import check_lag, check_model, check_stream, cpu_generator, eval_mode
from probe.measure.config import MeasureConfig
from probe.measure.curves import with_summaries
from probe.measure.stream import Layout, gather_windows, repeat_masks, repeat_state, start_states

CURVES = ("influence_kl", "influence_hidden")


def sample_replacements(windows: torch.Tensor, unigram: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For windows (K+1, M), a token for every lag 1..K of every window, differing from the original: (K, M).

    Row k-1 replaces window row K-k (the token at t-k). Draws come from the
    unigram distribution; draws equal to the original are redrawn, which
    samples the unigram distribution conditioned on being a different token.
    """
    probs = unigram.double().cpu()
    if int((probs > 0).sum()) < 2:
        raise ValueError("counterfactual tokens need a unigram distribution with at least two tokens of positive count")
    original = windows.cpu().flip(0)[1:]  # row k-1 holds x_{t-k}
    draws = torch.multinomial(probs, original.numel(), replacement=True, generator=generator).view_as(original)
    for _ in range(1000):
        same = draws == original
        if not bool(same.any()):
            return draws
        draws[same] = torch.multinomial(probs, int(same.sum()), replacement=True, generator=generator)
    raise ValueError("could not draw counterfactual tokens different from the originals (is one token ~all the mass?)")


def influence(
    model: LanguageModel,
    stream: torch.Tensor,
    unigram: torch.Tensor,
    config: MeasureConfig = MeasureConfig(),
    ids: dict | None = None,
) -> pd.DataFrame:
    """Influence curves for lags 1..config.max_lag in each of ``config.influence_modes``, with summaries.

    ``unigram``: counts (or probabilities) of each token id in the training text.
    """
    model = check_model(model)
    stream = check_stream(stream, model)
    if unigram.numel() != model.config.vocab_size:
        raise ValueError(
            f"unigram must have one entry per vocabulary id ({model.config.vocab_size}); got {unigram.numel()}"
        )
    K = config.max_lag
    layout = Layout(stream.numel(), config.stream_batch)
    check_lag(K, layout.rows, layout.batch, stream.numel(), 3, "influence")
    # The same windows as gradient_sensitivity when the window counts agree.
    ends = layout.sample(config.influence_windows, K + 1, cpu_generator(config.seed, 1), min_future=1)
    windows = gather_windows(stream, ends, K + 1)  # (K+1, M)
    replacements = sample_replacements(windows, unigram, cpu_generator(config.seed, 2))
    with eval_mode(model):
        init = start_states(model, stream, layout, ends - K, config.carry_state, config.chunk_tokens)
        rows = []
        kl_of = {}
        for mode in config.influence_modes:
            kl, dist = _influence(model, windows, replacements, init, mode == "train", config)
            kl_of[mode] = kl
            rows += [tidy.row("influence_kl", "lag", k, kl[k - 1], mode=mode) for k in range(1, K + 1)]
            for layer in range(dist.shape[0]):
                rows += [
                    tidy.row("influence_hidden", "lag", k, dist[layer, k - 1], layer=layer, mode=mode)
                    for k in range(1, K + 1)
                ]
        if {"eval", "train"} <= set(kl_of):
            rows += _retained(kl_of["train"], kl_of["eval"])
    return with_summaries(tidy.frame(rows, ids), CURVES)


# Where the eval-mode influence is below this share of its lag-1 value (or 1e-6 nats), the
# ratio divides noise by noise: those lags are left out (NaN).
_RETAINED_FLOOR = 0.01


def _retained(kl_train, kl_eval) -> list[dict]:
    """Fraction of a model's own eval-mode influence that survives its training masks, per lag.

    The training-mode curve alone mixes two things: how much memory the
    trained weights have, and how much of it the masks erase. Dividing by the
    same model's eval-mode curve keeps only the second (1 = no amnesia). A lag where either influence is
    below the floor is left out (NaN): there the ratio divides noise by noise and swings far past 1.
    """
    floor = max(1e-6, _RETAINED_FLOOR * float(kl_eval[0]))
    return [
        tidy.row("influence_kl_retained", "lag", k, (t / e) if min(t, e) > floor else float("nan"), mode="train")
        for k, (t, e) in enumerate(zip(kl_train.tolist(), kl_eval.tolist()), start=1)
    ]


@torch.no_grad()
def _influence(model, windows, replacements, init, training: bool, config: MeasureConfig):
    """Mean KL (K,) and mean relative hidden distance (layers, K) over windows."""
    T, M = windows.shape
    K = T - 1
    copies = K + 1
    device = windows.device
    mask_gen = torch.Generator(device=device)
    mask_gen.manual_seed(config.seed * 1_000_003 + 3)
    per_chunk = max(1, config.chunk_tokens // (T * copies))
    kl_sum = torch.zeros(K, dtype=torch.float64, device=device)
    dist_sum = torch.zeros(len(model.layers), K, dtype=torch.float64, device=device)
    lag_rows = K - torch.arange(1, K + 1, device=device)  # the window row of lag k is K - k
    for lo in range(0, M, per_chunk):
        hi = min(lo + per_chunk, M)
        m = hi - lo
        # Batch row j*(K+1) is window j's original; row j*(K+1) + k replaces its lag-k token.
        batch = windows[:, lo:hi].repeat_interleave(copies, dim=1).view(T, m, copies).clone()
        batch[lag_rows, :, torch.arange(1, copies, device=device)] = replacements[:, lo:hi].to(device)
        batch = batch.view(T, m * copies)
        state = [(h[lo:hi], c[lo:hi]) for h, c in init]
        masks = model.sample_masks(T, m, mask_gen, training=training)
        logits, _, hidden = model(
            batch, repeat_state(state, copies), masks=repeat_masks(masks, copies), return_hidden=True,
            last_only=True,
        )
        # In float64 from the logits on: float32 log-softmax rounds each log-probability by ~1e-7, and
        # the sum p * (log p - log p') of a KL of 1e-9 or less then comes out negative. Casting the
        # float32 logits is exact, so the KL is that of the network's own predictions, >= 0 up to
        # float64 rounding.
        logp = F.log_softmax(logits[-1].double(), dim=-1).view(m, copies, -1)
        orig, cf = logp[:, :1], logp[:, 1:]
        kl = (orig.exp() * (orig - cf)).sum(-1)  # (m, K)
        kl_sum += kl.sum(0)
        for layer, hs in enumerate(hidden):
            h = hs[-1].double().view(m, copies, -1)
            norm = h[:, :1].norm(dim=-1).clamp_min(1e-12)
            dist_sum[layer] += ((h[:, 1:] - h[:, :1]).norm(dim=-1) / norm).sum(0)
    return (kl_sum / M).cpu().numpy(), (dist_sum / M).cpu().numpy()
