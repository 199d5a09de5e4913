"""Probe information: how many bits about x_{t-k} a linear probe can read from the state at t.

For every layer, and for h_t and (``probe_cell``) c_t, a softmax-regression
probe predicts the class of x_{t-k}, k = 1..K: one class for each of the
``probe_classes`` most frequent training tokens plus one "other" class. The
states come from one pass over the held-out stream (evaluation masks,
carried state). Sampled positions are split in stream order: the first half
trains the probes, the second half scores them, so no position is both.

    probe_bits(k)     = H(Y_k) - CE_k   (bits)   a lower bound on I(state_t; class of x_{t-k})
    probe_accuracy(k) = fraction of scored positions whose class the probe gets right

H(Y_k) is the empirical entropy of the classes on the scoring positions and
CE_k the probe's mean cross-entropy there. Any fixed predictor's
cross-entropy on the scoring set is at least H(Y_k), so a probe shows
positive bits only by reading the state; negative values mean nothing was
found beyond overfitting. The bound never exceeds H(Y_k) (CE >= 0).

Controls, on the same positions and targets:
- ``probe_bits_untrained``: the same probes on a network of the same shape
  initialised with the run's seed (what random recurrent features retain);
- ``probe_bits_baseline``: a bias-only probe (add-one smoothed training
  class frequencies): about 0 bits and never above 0, since no fixed
  distribution beats the scored targets' own empirical entropy.

All probes are fitted together: G feature sets (layers x {h, c} x {trained,
untrained}) of shape (P, H), each times a weight of shape (H, K*C), in one
full-batch L-BFGS run (``probe_steps`` iterations) on the summed, independent
per-lag losses, with L2 weight decay on standardised features. Deterministic.
A larger weight decay tightens the bound at long lags (less overfitting)
and loosens it at short lags (docs/measurements.md), so with several
``probe_weight_decay`` values every probe is fitted on the first two thirds
of the training half, once per value, and each (feature set, lag) keeps the
fit with the lowest cross-entropy on the last third, the bias-only
frequency probe (an infinite weight decay) included; only the kept fit is
scored. The chosen value is reported (``probe_weight_decay``, inf for the
bias-only probe), and the bound is never below the frequency baseline by
more than the noise of that choice.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from probe.model.language_model import LanguageModel

from probe.measure import tidy
from probe.measure.checks import check_lag, check_model, check_stream, cpu_generator, eval_mode
from probe.measure.config import MeasureConfig
from probe.measure.curves import with_summaries
from probe.measure.stream import Layout, stream_states

LN2 = math.log(2.0)
CURVES = ("probe_bits", "probe_bits_cell", "probe_bits_untrained", "probe_bits_cell_untrained")


def class_map(train_counts: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, int]:
    """Token id -> class: the ``n_classes`` most frequent training tokens get 0..N-1, all others N."""
    V = train_counts.numel()
    n = min(n_classes, V)
    top = torch.argsort(train_counts.cpu(), descending=True, stable=True)[:n]
    classes = torch.full((V,), n, dtype=torch.long)
    classes[top] = torch.arange(n)
    return classes, n + 1


def untrained_copy(model: LanguageModel, seed: int) -> LanguageModel:
    """A freshly initialised network of ``model``'s configuration, as ``probe.runs.train`` builds it for ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = LanguageModel(model.config)
    ref = model.decoder.weight
    return fresh.to(device=ref.device, dtype=ref.dtype).eval()


def entropy_bits(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Empirical entropy (bits) of each row of integer labels y (K, P)."""
    counts = F.one_hot(y, n_classes).sum(1).double()
    p = counts / counts.sum(1, keepdim=True)
    return -(p * torch.log2(p.clamp_min(1e-300))).sum(1)


def fit_probes(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_score: torch.Tensor,
    y_score: torch.Tensor,
    n_classes: int,
    steps: int,
    weight_decay: float | torch.Tensor,
    also: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Fit a softmax probe for every feature set g and lag k; score it on held-out positions.

    x_train (G, P1, H) and x_score (G, P2, H) are G feature sets (layers, h or
    c) of the same positions; y_train (K, P1) and y_score (K, P2) the classes
    at each lag. All G*K problems are independent; their summed loss is
    minimised in one deterministic full-batch L-BFGS run. Returns the scoring
    cross-entropy (nats) and accuracy, each (G, K). ``weight_decay``: one value, or one per problem (G, K).
    ``also``: a second scoring set (x, y), whose cross-entropy and accuracy follow the first's.
    """
    x_train, x_score = x_train.float(), x_score.float()
    mu, sd = x_train.mean(1, keepdim=True), x_train.std(1, keepdim=True)
    sd = torch.where(sd > 1e-8, sd, torch.ones_like(sd))  # a constant feature stays 0
    x_train, x_score = (x_train - mu) / sd, (x_score - mu) / sd
    sets = [(x_score, y_score)] + ([((also[0].float() - mu) / sd, also[1])] if also is not None else [])
    G, P1, H = x_train.shape
    K, C = y_train.shape[0], n_classes
    decay = torch.as_tensor(weight_decay, dtype=torch.float32, device=x_train.device)
    if decay.dim():  # (G, K) -> one value per weight column of its problem, (G, 1, K*C)
        decay = decay.repeat_interleave(C, dim=1).unsqueeze(1)
    W = torch.zeros(G, H, K * C, device=x_train.device, requires_grad=True)
    b = torch.zeros(G, 1, K * C, device=x_train.device, requires_grad=True)

    def logits(x):  # (G, P, H) -> (G, P, K, C)
        return torch.baddbmm(b, x, W).view(G, x.shape[1], K, C)

    target = y_train.t().unsqueeze(0).expand(G, P1, K).unsqueeze(-1)  # (G, P1, K, 1)
    minus_one = torch.full(target.shape, -1.0, device=x_train.device)
    x_t = x_train.transpose(1, 2).contiguous()

    @torch.no_grad()
    def closure():
        # Loss and gradient written out (d CE / d logits = softmax - onehot): the
        # (G, P, K, C) logits dominate the cost, and this touches them about
        # half as often as autograd would.
        log_p = torch.log_softmax(logits(x_train), dim=-1)
        loss = -log_p.gather(-1, target).sum() / P1 + 0.5 * (decay * W.pow(2)).sum()
        d_logits = log_p.exp_().scatter_add_(-1, target, minus_one).view(G, P1, K * C)
        W.grad = torch.bmm(x_t, d_logits).div_(P1).add_(decay * W)
        b.grad = d_logits.sum(1, keepdim=True).div_(P1)
        return loss

    opt = torch.optim.LBFGS(
        [W, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )
    opt.step(closure)
    out = []
    with torch.no_grad():
        for xs, ys in sets:
            z = logits(xs)  # (G, P2, K, C)
            y = ys.t().unsqueeze(0).expand(G, -1, -1)  # (G, P2, K)
            ce = F.cross_entropy(z.permute(0, 3, 1, 2), y, reduction="none").mean(1)
            acc = (z.argmax(-1) == y).float().mean(1)
            out += [ce.double().cpu(), acc.double().cpu()]
    return tuple(out)


def selected_probes(x_train, y_train, x_score, y_score, n_classes: int, steps: int, candidates: tuple[float, ...]):
    """Scoring cross-entropy, accuracy and chosen weight decay (each (G, K)) of the probes.

    One candidate: fitted on the whole training half. Several: fitted on its first two thirds once per
    candidate, and each (feature set, lag) keeps the fit, or the bias-only frequency probe (decay inf),
    with the lowest cross-entropy on its last third.
    """
    G, K = x_train.shape[0], y_train.shape[0]
    if len(candidates) == 1:
        ce, acc = fit_probes(x_train, y_train, x_score, y_score, n_classes, steps, float(candidates[0]))
        return ce, acc, torch.full((G, K), float(candidates[0]), dtype=torch.float64)
    cut = (2 * x_train.shape[1]) // 3
    # One L-BFGS run per candidate: problems whose decays differ by orders of magnitude, minimised jointly,
    # leave the weakly regularised ones short of their optimum in the same number of steps.
    fits = [fit_probes(x_train[:, :cut], y_train[:, :cut], x_train[:, cut:], y_train[:, cut:], n_classes, steps,
                       float(d), also=(x_score, y_score)) for d in candidates]
    ce_sel, ce, acc = (torch.stack([f[i] for f in fits]) for i in (0, 2, 3))  # (D, G, K)
    base_sel, _ = frequency_baseline(y_train[:, :cut], y_train[:, cut:], n_classes)
    base, base_acc = frequency_baseline(y_train[:, :cut], y_score, n_classes)
    ce_sel = torch.cat([ce_sel, base_sel.expand(1, G, K)])
    ce = torch.cat([ce, base.expand(1, G, K)])
    acc = torch.cat([acc, base_acc.expand(1, G, K)])
    values = torch.tensor([*candidates, math.inf], dtype=torch.float64)
    best = ce_sel.argmin(0, keepdim=True)  # (1, G, K)
    return ce.gather(0, best)[0], acc.gather(0, best)[0], values[best[0]]


def frequency_baseline(y_train: torch.Tensor, y_score: torch.Tensor, n_classes: int):
    """Cross-entropy (nats) and accuracy of add-one smoothed training class frequencies, per lag."""
    counts = F.one_hot(y_train, n_classes).sum(1).double() + 1.0  # (K, C)
    logq = torch.log(counts / counts.sum(1, keepdim=True))
    ce = -logq.gather(1, y_score).mean(1)
    acc = (y_score == counts.argmax(1, keepdim=True)).double().mean(1)
    return ce.cpu(), acc.cpu()


def probe_information(
    model: LanguageModel,
    stream: torch.Tensor,
    train_counts: torch.Tensor,
    config: MeasureConfig = MeasureConfig(),
    ids: dict | None = None,
    *,
    untrained_seed: int | None = None,
) -> pd.DataFrame:
    """Probe bits and accuracy for lags 1..config.max_lag per layer, with controls and summaries.

    ``train_counts``: unigram counts of the training text (picks the probe classes).
    ``untrained_seed``: seed of the untrained control network; default ``ids["seed"]``
    when given (the run's seed, so the control is the run's own initialisation), else ``config.seed``.
    """
    model = check_model(model)
    stream = check_stream(stream, model)
    if train_counts.numel() != model.config.vocab_size:
        raise ValueError(
            f"train_counts must have one entry per vocabulary id ({model.config.vocab_size}); "
            f"got {train_counts.numel()}"
        )
    K = config.max_lag
    layout = Layout(stream.numel(), config.stream_batch)
    check_lag(K, layout.rows, layout.batch, stream.numel(), 1, "probe information")
    positions = layout.sample(config.probe_positions, K, cpu_generator(config.seed, 5))
    n_train = positions.numel() // 2
    if n_train < 1 or positions.numel() - n_train < 1:
        raise ValueError(
            f"probe information needs at least 2 positions with {K} tokens of history; got {positions.numel()}"
        )
    classes, C = class_map(train_counts, config.probe_classes)
    lags = torch.arange(1, K + 1)
    y = classes[stream.cpu()[positions.unsqueeze(0) - lags.unsqueeze(1)]].to(model.decoder.weight.device)  # (K, P)
    y_train, y_score = y[:, :n_train], y[:, n_train:]
    h_y = entropy_bits(y_score, C).cpu()

    rows = [tidy.row("probe_target_entropy", "lag", k, h_y[k - 1]) for k in lags.tolist()]
    ce0, acc0 = frequency_baseline(y_train, y_score, C)
    rows += _lag_rows("probe_bits_baseline", h_y - ce0 / LN2, -1, "")
    rows += _lag_rows("probe_accuracy_baseline", acc0, -1, "")

    if untrained_seed is None:
        untrained_seed = int(ids["seed"]) if ids and int(ids.get("seed", -1)) >= 0 else config.seed
    networks = [("", model)]
    if config.probe_untrained:
        networks.append(("_untrained", untrained_copy(model, untrained_seed)))
    names, features = [], []
    for suffix, net in networks:
        with eval_mode(net):
            states = stream_states(net, stream, layout, positions, config.chunk_tokens)
        for layer, (h, c) in enumerate(states):
            names.append(("", suffix, layer))
            features.append(h)
            if config.probe_cell:
                names.append(("_cell", suffix, layer))
                features.append(c)
    x = torch.stack(features)  # (G, P, H)
    ce, acc, decay = selected_probes(x[:, :n_train], y_train, x[:, n_train:], y_score, C, config.probe_steps,
                                     config.probe_weight_decays)
    for g, (kind, suffix, layer) in enumerate(names):
        rows += _lag_rows(f"probe_bits{kind}{suffix}", h_y - ce[g] / LN2, layer, "eval")
        rows += _lag_rows(f"probe_accuracy{kind}{suffix}", acc[g], layer, "eval")
        if kind == "" and suffix == "":
            rows += _lag_rows("probe_weight_decay", decay[g].double(), layer, "eval")
    return with_summaries(tidy.frame(rows, ids), CURVES)


def _lag_rows(measure: str, values: torch.Tensor, layer: int, mode: str) -> list[dict]:
    values = values.tolist()
    return [tidy.row(measure, "lag", k, float(v), layer=layer, mode=mode) for k, v in enumerate(values, start=1)]
