"""Passes over a held-out stream shared by the measurements.

The stream is cut into ``batch`` columns as ``probe.data.corpus.batchify`` does
(column b holds tokens [b*rows, (b+1)*rows)), and every column starts from a
zero state, as in ``probe.runs.train.evaluate``. A position's *history* is how many
tokens precede it in its column. Positions are always indices into the 1-D
stream, so every measurement speaks of the same tokens.

Two stateful passes (evaluation masks, carried state):
- ``stream_predictions``: -log p(x_u | history) and the argmax prediction for
  every target position u, with the fast whole-sequence recurrence;
- ``stream_states``: (h_p, c_p) of every layer after reading x_p, for chosen
  positions. The recurrence returns cell states only at the end of a call,
  so ``layer_cells`` recomputes them from the hidden states it returned.

Helpers for window batches: ``gather_windows`` (time-major windows ending at
given positions), ``start_states`` (the carried state a window starts from),
``repeat_state`` / ``repeat_masks`` (one state and one mask draw per window,
shared by all of its copies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probe.data.corpus import batchify
from probe.model.language_model import LanguageModel, LayerMasks, ModelMasks, State
from kernels import linear
from kernels.reference import lstm_step


@dataclass(frozen=True)
class Layout:
    """``n_tokens`` cut into ``batch`` columns of ``rows`` tokens; the remainder is dropped."""

    n_tokens: int
    batch: int

    def __post_init__(self):
        if self.batch < 1:
            raise ValueError(f"stream_batch must be >= 1; got {self.batch}")
        if self.n_tokens < 2 * self.batch:
            raise ValueError(
                f"a held-out stream of {self.n_tokens} tokens is too short for stream_batch={self.batch} "
                f"(each stream needs at least 2 tokens); use more text or a smaller stream_batch"
            )

    @property
    def rows(self) -> int:
        return self.n_tokens // self.batch

    def history(self, positions: torch.Tensor) -> torch.Tensor:
        """Tokens before each position in its column."""
        return positions % self.rows

    def candidates(self, min_history: int, min_future: int = 0) -> torch.Tensor:
        """Positions with at least ``min_history`` tokens before and ``min_future`` after them in their column."""
        rows = torch.arange(min_history, self.rows - min_future)
        return (torch.arange(self.batch).unsqueeze(1) * self.rows + rows).reshape(-1)

    def sample(self, n: int, min_history: int, generator: torch.Generator, min_future: int = 0) -> torch.Tensor:
        """Up to ``n`` distinct candidate positions, drawn by ``generator``, in stream order."""
        pool = self.candidates(min_history, min_future)
        if pool.numel() == 0:
            raise ValueError(
                f"no position of the held-out stream has {min_history} tokens of history and {min_future} after "
                f"it in its stream ({self.batch} streams of {self.rows} tokens); use more held-out text, "
                "a smaller stream_batch, or shorter lags/contexts"
            )
        if pool.numel() > n:
            pool = pool[torch.randperm(pool.numel(), generator=generator)[:n]]
        return pool.sort().values


def gather_windows(stream: torch.Tensor, ends: torch.Tensor, length: int) -> torch.Tensor:
    """Windows stream[e - length + 1 .. e] for every end e, shaped (length, len(ends)), time-major."""
    offsets = torch.arange(length - 1, -1, -1, device=ends.device)
    return stream[ends.to(stream.device).unsqueeze(0) - offsets.to(stream.device).unsqueeze(1)]


@torch.no_grad()
def prefix_nll(model: LanguageModel, prefixes: torch.Tensor, targets: torch.Tensor, chunk_tokens: int):
    """-log p(target | prefix) after reading each column of ``prefixes`` (P, M) from a zero state with
    evaluation masks, per column (float64, nats, on the CPU)."""
    P = prefixes.shape[0]
    out = []
    per_chunk = max(1, chunk_tokens // P)
    for lo in range(0, prefixes.shape[1], per_chunk):
        x = prefixes[:, lo : lo + per_chunk]
        logits, _ = model(x, masks=eval_masks(model, P, x.shape[1]), last_only=True)
        logp = F.log_softmax(logits[-1].float(), dim=-1)
        out.append(-logp.gather(-1, targets[lo : lo + per_chunk].unsqueeze(-1)).squeeze(-1).double())
    return torch.cat(out).cpu()


def eval_masks(model: LanguageModel, T: int, B: int) -> ModelMasks:
    """Evaluation masks, explicit so that no pass depends on the module's train/eval flag."""
    return model.sample_masks(T, B, None, training=False)


@torch.no_grad()
def stream_predictions(
    model: LanguageModel, stream: torch.Tensor, layout: Layout, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, argmax) per target position, with carried state; NaN and -1 where a column starts.

    nll[u] = -log p(x_u | the tokens before u in its column) in nats (float64).
    """
    data = batchify(stream[: layout.rows * layout.batch], layout.batch)  # (rows, B)
    rows, B = data.shape
    nll = torch.full((rows, B), float("nan"), dtype=torch.float64, device=data.device)
    argmax = torch.full((rows, B), -1, dtype=torch.long, device=data.device)
    steps = max(1, chunk_tokens // B)
    state = model.init_state(B)
    for start in range(0, rows - 1, steps):
        stop = min(start + steps, rows - 1)
        x, y = data[start:stop], data[start + 1 : stop + 1]
        logits, state = model(x, state, masks=eval_masks(model, stop - start, B))
        logp = F.log_softmax(logits.float(), dim=-1)
        nll[start + 1 : stop + 1] = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).double()
        argmax[start + 1 : stop + 1] = logp.argmax(-1)
    # Column-major flattening turns (row, column) back into stream positions.
    return nll.t().reshape(-1), argmax.t().reshape(-1)


@torch.no_grad()
def stream_log_probs(
    model: LanguageModel, stream: torch.Tensor, layout: Layout, positions: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """(len(positions), V) float64: log p(. | the tokens before u in its column) for each position u, with
    carried state and evaluation masks; each position needs at least one token before it in its column."""
    data = batchify(stream[: layout.rows * layout.batch], layout.batch)
    positions = positions.cpu()
    rows_of, cols_of = positions % layout.rows, positions // layout.rows
    if positions.numel() and int(rows_of.min()) < 1:
        raise ValueError("stream_log_probs needs positions with at least one token of history in their column")
    out = torch.zeros(positions.numel(), model.config.vocab_size, dtype=torch.float64)
    if positions.numel() == 0:
        return out
    last = int(rows_of.max())  # the input row whose output predicts the last position
    steps = max(1, chunk_tokens // layout.batch)
    state = model.init_state(layout.batch)
    for start in range(0, last, steps):
        stop = min(start + steps, last)
        logits, state = model(data[start:stop], state, masks=eval_masks(model, stop - start, layout.batch))
        inside = (rows_of - 1 >= start) & (rows_of - 1 < stop)
        if inside.any():
            logp = F.log_softmax(logits.double(), dim=-1)
            out[inside] = logp[rows_of[inside] - 1 - start, cols_of[inside]].cpu()
    return out


@torch.no_grad()
def stream_states(
    model: LanguageModel, stream: torch.Tensor, layout: Layout, positions: torch.Tensor, chunk_tokens: int = 1 << 14
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(h, c)] per layer, each (len(positions), H): the state after reading x_p, with carried state.

    The model runs over the columns in chunks (the fast whole-sequence path);
    ``layer_cells`` then recovers every step's cell state from the hidden
    states the model returned.
    """
    data = batchify(stream[: layout.rows * layout.batch], layout.batch)
    positions = positions.cpu()
    rows_of, cols_of = positions % layout.rows, positions // layout.rows
    H, P = model.config.hidden_size, positions.numel()
    ref = model.decoder.weight
    out = [(ref.new_zeros(P, H), ref.new_zeros(P, H)) for _ in model.layers]
    if P == 0:
        return out
    last = int(rows_of.max()) + 1
    steps = max(1, chunk_tokens // layout.batch)
    state = model.init_state(layout.batch)
    for start in range(0, last, steps):
        stop = min(start + steps, last)
        x = data[start:stop]
        masks = eval_masks(model, stop - start, layout.batch)
        _, new_state, hidden = model(x, state, masks=masks, return_hidden=True)
        cells = layer_cells(model, x, state, hidden, masks)
        sel = (rows_of >= start) & (rows_of < stop)
        idx = sel.nonzero().squeeze(1)
        t, b = (rows_of[idx] - start).to(ref.device), cols_of[idx].to(ref.device)
        idx = idx.to(ref.device)
        for (h_out, c_out), hs, cs in zip(out, hidden, cells):
            h_out[idx] = hs[t, b]
            c_out[idx] = cs[t, b]
        state = new_state
    return out


def layer_cells(model: LanguageModel, ids: torch.Tensor, state: State, hidden: list[torch.Tensor], masks: ModelMasks):
    """Every step's cell state [(T, B, H)] per layer, for a forward pass that returned ``hidden``.

    The recurrence returns only the last cell state, so the cells are
    recomputed step by step with the spec (``kernels.reference.lstm_step``),
    feeding each step the hidden state the model itself produced. The
    recomputed hidden states must match the model's, which guards this
    against any drift from ``LanguageModel.forward``.
    """
    x = model.embedding(ids)
    if masks.embedding is not None:
        x = x * masks.embedding[ids].unsqueeze(-1)
    cells = []
    for layer, m, (h0, c0), hs in zip(model.layers, masks.layers, state, hidden):
        gx = linear(x if m.input is None else x * m.input, layer.w_ih, layer.bias)
        w_hh = layer.w_hh if m.weight is None else layer.w_hh * m.weight
        h_prev, c = h0, c0
        cs, h_check = [], []
        for t in range(ids.shape[0]):
            h_new, c = lstm_step(gx[t], h_prev, c, w_hh, m.recurrent.at(t))
            cs.append(c)
            h_check.append(h_new)
            h_prev = hs[t]
        # Loose enough for tf32 products (Triton on a GPU) and bfloat16; a structural
        # mismatch (a mask or input handled differently) moves h by far more.
        atol = 2e-2 if hs.dtype in (torch.float32, torch.float64) else 1e-1
        if not torch.allclose(torch.stack(h_check), hs, rtol=0.0, atol=atol):
            raise RuntimeError(
                "recomputed hidden states differ from LanguageModel.forward's; layer_cells needs updating"
            )
        cells.append(torch.stack(cs))
        x = hs
    return cells


def start_states(
    model: LanguageModel, stream: torch.Tensor, layout: Layout, starts: torch.Tensor, carry: bool, chunk_tokens: int
) -> State:
    """The state each window starting at ``starts`` begins from: carried from its column, or zero."""
    if not carry:
        return model.init_state(starts.numel())
    if bool((layout.history(starts) < 1).any()):
        raise ValueError("a window with carried state must start after the first token of its stream")
    return stream_states(model, stream, layout, starts - 1, chunk_tokens)


def repeat_state(state: State, copies: int) -> State:
    """Each batch row's state repeated ``copies`` times in a row (row-major: window, then copy)."""
    return [(h.repeat_interleave(copies, 0), c.repeat_interleave(copies, 0)) for h, c in state]


def repeat_masks(masks: ModelMasks, copies: int) -> ModelMasks:
    """The same masks for ``copies`` consecutive batch rows: one draw per window, shared by its copies.

    Step masks are (T, B, H) and sequence masks (B, H); the embedding mask (per
    word type) and the DropConnect mask on W_hh have no batch axis and are
    shared by every row already.
    """

    def rep(m):
        if m is None:
            return None
        return m.repeat_interleave(copies, dim=1 if m.dim() == 3 else 0)

    layers = [
        LayerMasks(rep(lm.input), lm.weight, lm.recurrent.map(rep)) for lm in masks.layers
    ]
    return ModelMasks(masks.embedding, layers, rep(masks.output))
