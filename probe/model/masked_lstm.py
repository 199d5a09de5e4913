"""``MaskedLSTM``, a drop-in for ``torch.nn.LSTM`` with any dropout placement, and the one masked LSTM layer.

The per-layer computation lives here once and is shared by ``MaskedLSTM`` and
``probe.model.language_model.LanguageModel``:

- ``sample_layer_masks``: one layer's masks for one forward pass (a BPTT segment), as the
  placement puts them: the layer's input mask, the DropConnect mask on W_hh and the
  recurrent-path masks (``kernels.RecurrentMasks``);
- ``masked_lstm_layer``: one layer on those masks: the input mask on x, W_hh * the weight
  mask (functionally, the parameter is never written), and the recurrence through
  ``kernels.lstm_layer_from_input`` (Triton on CUDA, the reference elsewhere).

``MaskedLSTM`` keeps ``nn.LSTM``'s constructor arguments, parameter names and shapes
(``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ...), initialisation,
call signature and return shapes, so an ``nn.LSTM``'s state dict loads into it and back.
Sites: ``input`` on every layer's input (layer 0's is the caller's input), the recurrent
sites inside the recurrence, ``weight`` on each ``weight_hh_l{k}``, ``output`` on the top
layer's output; ``embedding`` has no meaning here (there is no embedding) and is refused.
``nn.LSTM``'s own ``dropout`` (between layers, a fresh mask per step, none after the top
layer) is applied in training mode on top of the placement.

Masks are drawn in training mode (from the ``generator`` passed to ``forward``, else the
global RNG), once per forward call for sequence-scope sites: a forward call is a BPTT
segment. In evaluation mode dropout sites are the identity and zoneout sites their
expectation (the keep probability). Explicit masks (``sample_masks``, then
``forward(..., masks=)``) are used whatever the mode; they are time-major, (T, B, ...),
even when ``batch_first=True``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from kernels import RecurrentMasks, canonical_backend, lstm_layer_from_input

from probe.placements import RECURRENT_SITES, Placement, Site, dropout_mask, parse_placement, site_mask

__all__ = ["LSTMMasks", "LayerMasks", "MaskedLSTM", "apply_mask", "masked_lstm_layer", "sample_layer_masks"]


@dataclass
class LayerMasks:
    """Masks of one LSTM layer for one forward pass."""

    input: torch.Tensor | None
    weight: torch.Tensor | None
    recurrent: RecurrentMasks


@dataclass
class LSTMMasks:
    """Every mask of one ``MaskedLSTM`` forward pass over (T, B) steps, time-major.

    ``between[k]`` is ``nn.LSTM``'s dropout on layer k's output entering layer k + 1
    (num_layers - 1 entries; empty or None entries where there is none).
    """

    layers: list[LayerMasks]
    output: torch.Tensor | None = None
    between: list[torch.Tensor | None] = field(default_factory=list)


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multiply (T, B, D) activations by a step (T, B, D) or sequence (B, D) mask."""
    return x if mask is None else x * mask


def sample_layer_masks(
    placement: Placement,
    T: int,
    B: int,
    input_size: int,
    hidden_size: int,
    generator: torch.Generator | None = None,
    *,
    training: bool,
    dtype=torch.float32,
    device=None,
) -> LayerMasks:
    """One layer's masks for a forward pass over (T, B) steps.

    Drawn in a fixed order (weight, the recurrent sites in ``RECURRENT_SITES``
    order, input) so that a seed gives the same masks as it always has.
    ``training=False`` gives evaluation masks: none for dropout sites, the keep
    probability for zoneout sites.
    """
    kw = dict(dtype=dtype, device=device)
    weight = None
    if training and placement.active(Site.WEIGHT):
        weight = dropout_mask((4 * hidden_size, hidden_size), placement.rate(Site.WEIGHT), generator, **kw)
    # Sampled in RECURRENT_SITES' order (a seed's masks depend on it), stored by site name.
    rec = RecurrentMasks(**{s.value: site_mask(placement, s, T, B, hidden_size, generator, training=training, **kw)
                            for s in RECURRENT_SITES})
    inp = site_mask(placement, Site.INPUT, T, B, input_size, generator, training=training, **kw)
    return LayerMasks(inp, weight, rec)


def masked_lstm_layer(
    x: torch.Tensor,
    w_ih: torch.Tensor,
    bias: torch.Tensor | None,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    masks: LayerMasks,
    *,
    backend: str = "auto",
    recurrence=None,
):
    """One masked LSTM layer over x (T, B, I): ``hs (T, B, H), (h_T, c_T)``.

    Applies the input mask to x and the DropConnect mask to W_hh (functionally),
    then runs the recurrence with the recurrent-path masks. ``bias`` is the one
    bias per gate (4H,) or None. ``recurrence`` is the entry point called with
    the masked input, ``kernels.lstm_layer_from_input`` unless given (callers
    pass their own reference to it, which is where tests spy on the masked input).
    """
    w = w_hh if masks.weight is None else w_hh * masks.weight
    run = lstm_layer_from_input if recurrence is None else recurrence
    return run(apply_mask(x, masks.input), w_ih, bias, h0, c0, w, masks=masks.recurrent, backend=backend)


def _between_mask(shape, p: float, generator, *, dtype, device) -> torch.Tensor:
    """nn.LSTM's inter-layer dropout: 0 or 1/(1-p), all zeros at p = 1 (as F.dropout)."""
    if p >= 1.0:
        return torch.zeros(shape, dtype=dtype, device=device)
    return dropout_mask(shape, p, generator, dtype=dtype, device=device)


def _unsupported(arg: str, value, why: str) -> ValueError:
    return ValueError(f"MaskedLSTM does not support {arg}={value!r} ({why})")


class MaskedLSTM(nn.Module):
    """``torch.nn.LSTM`` with a dropout placement (``probe.placements``).

    ``MaskedLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    *, placement="none", backend="auto", **rates)``: the ``nn.LSTM`` arguments keep their
    meaning and order; ``placement`` is a spec (``"variational:p=0.3,rec=0.3"``) or a
    ``Placement``, and keyword rates are merged into it (``placement="variational", rec=0.3``).
    ``bidirectional=True`` and ``proj_size > 0`` are refused. ``backend`` is
    ``kernels.lstm_layer``'s ("auto": Triton for CUDA tensors, the reference elsewhere).

    ``forward(input, hx=None, *, generator=None, masks=None)`` returns
    ``output, (h_n, c_n)`` exactly as ``nn.LSTM`` does; the ``output`` site masks
    ``output`` only, never ``h_n``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        placement: str | Placement = "none",
        backend: str = "auto",
        **rates,
    ):
        super().__init__()
        if bidirectional:
            raise _unsupported(
                "bidirectional", bidirectional,
                "the masked recurrence runs forward in time only; run a second MaskedLSTM on the time-reversed input",
            )
        if proj_size:
            raise _unsupported("proj_size", proj_size, "LSTMs with projections are not implemented; leave proj_size=0")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MaskedLSTM {name} must be a positive integer; got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError(
                f"MaskedLSTM dropout should be a number in range [0, 1] representing the probability of an element "
                f"being zeroed; got {dropout!r}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=2,
            )
        backend = canonical_backend(backend)
        pl = parse_placement(placement, **rates)
        if pl.active(Site.EMBEDDING):
            raise ValueError(
                f"placement {pl.spec!r} puts rate {pl.rate(Site.EMBEDDING):g} on the 'embedding' site, which MaskedLSTM "
                "does not have (its input is not token ids); drop word types where the embedding is, or set emb=0"
            )
        self.placement: Placement = pl
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional, self.proj_size, self.mode = False, 0, "LSTM"
        self.backend = backend
        factory = dict(device=device, dtype=dtype)
        H4 = 4 * hidden_size
        # Registered in nn.LSTM's order, so parameters() (and an optimizer's state) line up with its.
        for k in range(num_layers):
            layer_in = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(H4, layer_in, **factory)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(H4, hidden_size, **factory)))
            if self.bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(H4, **factory)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(H4, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As nn.LSTM: every parameter uniform in [-1/sqrt(hidden_size), 1/sqrt(hidden_size)]."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """A no-op, for code written for nn.LSTM (there is no cuDNN weight buffer to compact)."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """As nn.LSTM: per layer, [weight_ih, weight_hh(, bias_ih, bias_hh)]."""
        names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
        return [[getattr(self, f"{n}_l{k}") for n in names] for k in range(self.num_layers)]

    def layer_bias(self, k: int) -> torch.Tensor | None:
        """The one bias per gate the recurrence adds: bias_ih_l{k} + bias_hh_l{k}, or None without biases."""
        if not self.bias:
            return None
        return getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}")

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        s += f", placement={self.placement.spec!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    # --- masks ------------------------------------------------------------

    def sample_masks(
        self,
        T: int,
        B: int,
        generator: torch.Generator | None = None,
        *,
        training: bool = True,
        dtype=None,
        device=None,
    ) -> LSTMMasks:
        """The masks of one forward pass over (T, B) steps (time-major), in the parameters' dtype and device
        unless given. ``training=False`` gives evaluation masks (none but zoneout's expectation)."""
        ref = self.weight_ih_l0
        kw = dict(dtype=ref.dtype if dtype is None else dtype, device=ref.device if device is None else device)
        pl, H = self.placement, self.hidden_size
        layers = [
            sample_layer_masks(pl, T, B, self.input_size if k == 0 else H, H, generator, training=training, **kw)
            for k in range(self.num_layers)
        ]
        output = site_mask(pl, Site.OUTPUT, T, B, H, generator, training=training, **kw)
        between = [
            _between_mask((T, B, H), self.dropout, generator, **kw) if training and self.dropout > 0 else None
            for _ in range(self.num_layers - 1)
        ]
        return LSTMMasks(layers, output, between)

    # --- forward ----------------------------------------------------------

    def forward(
        self,
        input: torch.Tensor,
        hx: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        generator: torch.Generator | None = None,
        masks: LSTMMasks | None = None,
    ):
        """``output, (h_n, c_n)`` as nn.LSTM: input (T, B, I), (B, T, I) with batch_first, or unbatched (T, I);
        hx and the state each (num_layers, B, H), or (num_layers, H) unbatched.

        Masks: the explicit ``masks`` if given (whatever the mode), else the
        placement's training masks in training mode (drawn from ``generator``),
        else its evaluation masks.
        """
        if isinstance(input, PackedSequence):
            raise ValueError("MaskedLSTM does not support PackedSequence input; pass a padded (T, B, I) tensor")
        if not isinstance(input, torch.Tensor) or input.dim() not in (2, 3):
            shape = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
            raise ValueError(f"MaskedLSTM expects input of shape (T, B, I), (B, T, I) with batch_first, or (T, I); got {shape}")
        batched = input.dim() == 3
        if input.shape[-1] != self.input_size:
            raise ValueError(f"MaskedLSTM input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.shape[-1]}")
        if batched:
            x = input.transpose(0, 1) if self.batch_first else input
        else:
            x = input.unsqueeze(1)
        T, B, _ = x.shape
        L, H = self.num_layers, self.hidden_size
        if hx is None:
            h0, c0 = x.new_zeros(L, B, H), x.new_zeros(L, B, H)
        else:
            h0, c0 = self._check_hx(hx, batched, B)
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if masks is None:
            masks = self.sample_masks(T, B, generator, training=self.training, dtype=x.dtype, device=x.device)
        elif len(masks.layers) != L or len(masks.between or ()) not in (0, L - 1):
            raise ValueError(
                f"masks hold {len(masks.layers)} layers and {len(masks.between or ())} between-layer masks; "
                f"this MaskedLSTM needs {L} and {L - 1} (or none)"
            )
        between = list(masks.between or ()) or [None] * (L - 1)
        h_n, c_n = [], []
        for k in range(L):
            if k > 0:
                x = apply_mask(x, between[k - 1])
            x, (h, c) = masked_lstm_layer(
                x, getattr(self, f"weight_ih_l{k}"), self.layer_bias(k), h0[k], c0[k],
                getattr(self, f"weight_hh_l{k}"), masks.layers[k], backend=self.backend,
            )
            h_n.append(h)
            c_n.append(c)
        output = apply_mask(x, masks.output)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if not batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _check_hx(self, hx, batched: bool, B: int):
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError("MaskedLSTM hx must be a pair (h_0, c_0)")
        L, H = self.num_layers, self.hidden_size
        expected = (L, B, H) if batched else (L, H)
        for name, t in zip(("h_0", "c_0"), hx):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                kind = "batched 3-D" if batched else "unbatched 2-D"
                raise ValueError(f"MaskedLSTM {name} must be (num_layers, {'B, ' if batched else ''}H) = {expected} for {kind} input; got {got}")
        return hx[0], hx[1]
