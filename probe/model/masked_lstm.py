"""``MaskedLSTM``, a drop-in for ``torch.nn.LSTM`` with any dropout placement, and the one masked LSTM layer.

The per-layer computation lives here once and is shared by ``MaskedLSTM`` and
``probe.model.language_model.LanguageModel``:

- ``sample_layer_masks``: one layer's masks for one forward pass (a BPTT segment), as the
  placement puts them: the layer's input mask, the DropConnect mask on W_hh and the
  recurrent-path masks (``kernels.RecurrentMasks``);
- ``masked_lstm_layer``: one layer on those masks: the input mask on x, W_hh * the weight
  mask (functionally, the parameter is never written), and the recurrence through
  ``kernels.lstm_layer_from_input`` (Triton on CUDA, the reference elsewhere).

``MaskedLSTM`` is a subclass of ``nn.LSTM``: its constructor arguments and checks, parameter names and
shapes (``weight_ih_l0``, ``weight_hh_l0_reverse``, ``weight_hr_l0``, ...), initialisation, call
signature, errors and return shapes, so an ``nn.LSTM``'s state dict loads into it and back; packed
sequences, both directions and projections included (``probe.model.packed`` for packed rows).
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

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from kernels import RecurrentMasks, canonical_backend, linear, lstm_layer_from_input
from kernels.native import lstm_layer_native, native_supported
from kernels.reference import lstm_layer_loop

from probe.model.packed import PackedLayout
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
    state_size: int | None = None,
) -> LayerMasks:
    """One layer's masks for a forward pass over (T, B) steps.

    Drawn in a fixed order (weight, the recurrent sites in ``RECURRENT_SITES``
    order, input) so that a seed gives the same masks as it always has.
    ``training=False`` gives evaluation masks: none for dropout sites, the keep
    probability for zoneout sites. ``state_size`` is the size of h where it
    differs from the cell's (an LSTMP layer's projection, docs/recurrence.md):
    the masks on h (recurrent, zoneout_h) and W_hh's columns take it.
    """
    kw = dict(dtype=dtype, device=device)
    P = hidden_size if state_size is None else state_size
    weight = None
    if training and placement.active(Site.WEIGHT):
        weight = dropout_mask((4 * hidden_size, P), placement.rate(Site.WEIGHT), generator, **kw)
    sizes = {Site.RECURRENT: P, Site.ZONEOUT_H: P}
    # Sampled in RECURRENT_SITES' order (a seed's masks depend on it), stored by site name.
    rec = RecurrentMasks(**{s.value: site_mask(placement, s, T, B, sizes.get(s, hidden_size), generator,
                                               training=training, **kw)
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
    w_hr: torch.Tensor | None = None,
):
    """One masked LSTM layer over x (T, B, I): ``hs (T, B, H), (h_T, c_T)``.

    Applies the input mask to x and the DropConnect mask to W_hh (functionally),
    then runs the recurrence with the recurrent-path masks. ``bias`` is the one
    bias per gate (4H,) or None. ``recurrence`` is the entry point called with
    the masked input, ``kernels.lstm_layer_from_input`` unless given (callers
    pass their own reference to it, which is where tests spy on the masked input).
    ``w_hr`` (P, H): an LSTMP layer, on torch's fused LSTM without recurrent masks
    and on the loop spec with them (the kernels have no projection).
    """
    w = w_hh if masks.weight is None else w_hh * masks.weight
    x = apply_mask(x, masks.input)
    if w_hr is not None:
        return _projected_layer(x, w_ih, bias, h0, c0, w, w_hr, masks.recurrent, backend)
    run = lstm_layer_from_input if recurrence is None else recurrence
    return run(x, w_ih, bias, h0, c0, w, masks=masks.recurrent, backend=backend)


def _projected_layer(x, w_ih, bias, h0, c0, w_hh, w_hr, rec: RecurrentMasks, backend: str):
    if all(m is None for m in rec) and backend in ("auto", "native") and native_supported(x):
        return lstm_layer_native(x, w_ih, bias, h0, c0, w_hh, w_hr=w_hr)
    if backend == "native":
        raise ValueError("backend 'native' runs layers without recurrent masks; this one has "
                         f"{', '.join(rec.present())}")
    return lstm_layer_loop(linear(x, w_ih, bias), h0, c0, w_hh, rec, w_hr=w_hr)


def _between_mask(shape, p: float, generator, *, dtype, device) -> torch.Tensor:
    """nn.LSTM's inter-layer dropout: 0 or 1/(1-p), all zeros at p = 1 (as F.dropout)."""
    if p >= 1.0:
        return torch.zeros(shape, dtype=dtype, device=device)
    return dropout_mask(shape, p, generator, dtype=dtype, device=device)


def _masks_free(masks: LSTMMasks) -> bool:
    """No mask anywhere in this pass: the module computes nn.LSTM's function."""
    layers = all(m.input is None and m.weight is None and all(r is None for r in m.recurrent) for m in masks.layers)
    return layers and masks.output is None and all(b is None for b in masks.between or ())


class MaskedLSTM(nn.LSTM):
    """``torch.nn.LSTM`` with a dropout placement (``probe.placements``).

    ``MaskedLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None, *, placement="none", backend="auto",
    **rates)``: a subclass of ``nn.LSTM``, so its arguments, checks, parameters, state dict,
    ``_flat_weights`` and everything that wraps an ``nn.LSTM`` (``weight_norm``, parametrizations,
    weight-drop wrappers) are nn.LSTM's. ``placement`` is a spec (``"variational:p=0.3,rec=0.3"``) or a
    ``Placement``; keyword rates are merged into it (``placement="variational", rec=0.3``).
    ``backend`` is ``kernels.lstm_layer``'s ("auto": torch's fused LSTM where no mask is on the
    recurrence, Triton for CUDA tensors, the compiled loop elsewhere).

    ``forward(input, hx=None, *, generator=None, masks=None)`` takes what ``nn.LSTM`` takes (a padded
    tensor, batch-first or not, unbatched, or a ``PackedSequence``) and returns ``output, (h_n, c_n)``
    exactly as it does. A pass without any mask (placement ``none``, or evaluation of a dropout
    placement) is ``nn.LSTM.forward`` itself. With masks:

    - each layer and direction has its own masks (``LSTMMasks.layers[k * D + d]``, nn.LSTM's order of
      weights), time-major in the order that direction reads the sequence (step 0 of the reverse
      direction is each row's last token);
    - explicit ``masks`` follow the input's batch order (as ``hx`` does), also for a ``PackedSequence``;
    - a packed row is computed as that row alone would be (``probe.model.packed``);
    - with ``proj_size``, the masks on h (recurrent, zoneout_h, W_hh's DropConnect) have its size, the
      cell's masks the hidden size, and layers with recurrent masks run the loop spec.

    The ``output`` site masks ``output`` only, never ``h_n``.
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
        backend = canonical_backend(backend)
        pl = parse_placement(placement, **rates)
        if pl.active(Site.EMBEDDING):
            raise ValueError(
                f"placement {pl.spec!r} puts rate {pl.rate(Site.EMBEDDING):g} on the 'embedding' site, which MaskedLSTM "
                "does not have (its input is not token ids); drop word types where the embedding is, or set emb=0"
            )
        # warnings.warn inside nn.LSTM points at this frame; the user's call is one further up.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                             proj_size, device, dtype)
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=2)
        if proj_size and backend in ("compiled", "triton") and any(pl.active(s) for s in RECURRENT_SITES):
            raise ValueError(f"backend {backend!r} has no projection (proj_size); LSTMP layers with recurrent masks "
                             "run the loop spec: use backend='auto' or 'spec'")
        self.placement: Placement = pl
        self.backend = backend

    # --- plain data when pickled: a saved model loads under weights_only with MaskedLSTM allowed -------

    def __getstate__(self):
        state = super().__getstate__()
        state["placement"] = self.placement.spec
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["placement"] = parse_placement(state["placement"])
        super().__setstate__(state)

    # --- what nn.LSTM has, and the masked layers need -------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """The size of h: proj_size where there is a projection, else hidden_size."""
        return self.proj_size or self.hidden_size

    def layer_bias(self, k: int, direction: int = 0) -> torch.Tensor | None:
        """The one bias per gate the recurrence adds: bias_ih + bias_hh of layer k, or None without biases."""
        if not self.bias:
            return None
        suffix = f"_l{k}" + ("_reverse" if direction else "")
        return getattr(self, "bias_ih" + suffix) + getattr(self, "bias_hh" + suffix)

    def _weights(self, k: int, direction: int):
        suffix = f"_l{k}" + ("_reverse" if direction else "")
        w_hr = getattr(self, "weight_hr" + suffix) if self.proj_size else None
        return getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix), self.layer_bias(k, direction), w_hr

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", placement={self.placement.spec!r}"
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
        unless given. ``training=False`` gives evaluation masks (none but zoneout's expectation).
        ``layers`` holds num_layers x num_directions entries, in nn.LSTM's order of weights."""
        ref = self.weight_ih_l0
        kw = dict(dtype=ref.dtype if dtype is None else dtype, device=ref.device if device is None else device)
        pl, H, P, D = self.placement, self.hidden_size, self.state_size, self.num_directions
        state = None if P == H else P
        layers = [
            sample_layer_masks(pl, T, B, self.input_size if k == 0 else P * D, H, generator, training=training,
                               state_size=state, **kw)
            for k in range(self.num_layers) for _ in range(D)
        ]
        output = site_mask(pl, Site.OUTPUT, T, B, P * D, generator, training=training, **kw)
        between = [
            _between_mask((T, B, P * D), self.dropout, generator, **kw) if training and self.dropout > 0 else None
            for _ in range(self.num_layers - 1)
        ]
        return LSTMMasks(layers, output, between)

    # --- forward ----------------------------------------------------------

    def forward(
        self,
        input,
        hx: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        generator: torch.Generator | None = None,
        masks: LSTMMasks | None = None,
    ):
        """``output, (h_n, c_n)`` as nn.LSTM; masks as the class says: the explicit ``masks`` if given
        (whatever the mode), else the placement's training masks in training mode (drawn from
        ``generator``), else its evaluation masks."""
        self._update_flat_weights()
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            # nn.LSTM leaves packed data unchecked (a wrong size fails inside a product); this says what is wrong
            self.check_input(data, batch_sizes)
            T, B = int(batch_sizes.numel()), int(batch_sizes[0]) if batch_sizes.numel() else 0
            ref = data
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"LSTM: expected input to be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            T = input.shape[1 if batched and self.batch_first else 0]
            B = (input.shape[0 if self.batch_first else 1]) if batched else 1
            ref = input
        # Under autocast the masked recurrence runs as a custom op in the parameters' dtype (nn.LSTM's fused
        # kernels have their own reduced-precision path; ours keep one dtype end to end).
        autocast = torch.is_autocast_enabled(ref.device.type)
        dtype = self.weight_ih_l0.dtype if autocast else ref.dtype
        if masks is None:
            masks = self.sample_masks(T, B, generator, training=self.training, dtype=dtype, device=ref.device)
            if (_masks_free(masks) and self.backend in ("auto", "native") and native_supported(ref)) \
                    or T == 0 or B == 0 or ref.numel() == 0:
                # nn.LSTM's function, and its own answers for empty batches and empty sequences
                return super().forward(input, hx)
        else:
            self._check_masks(masks, T, B, dtype, ref.device)
            if T == 0 or B == 0 or ref.numel() == 0:
                return super().forward(input, hx)
            if packed and sorted_indices is not None:  # explicit masks follow the caller's batch order, as hx does
                masks = _rows(masks, sorted_indices)
        with torch.autocast(ref.device.type, enabled=False) if autocast else contextlib.nullcontext():
            if autocast:
                hx = None if hx is None else tuple(t.to(dtype) for t in hx)
                data, input = (data.to(dtype), None) if packed else (None, input.to(dtype))
            if packed:
                return self._forward_packed(data, batch_sizes, sorted_indices, unsorted_indices, hx, masks)
            return self._forward_padded(input, hx, masks)

    def _check_masks(self, masks: LSTMMasks, T: int, B: int, dtype, device) -> None:
        """Explicit masks: one per layer and direction, each of the shape, dtype and device this pass needs,
        so that a mask drawn for another batch is an error and never broadcast into a wrong result."""
        L, D = self.num_layers, self.num_directions
        if not isinstance(masks, LSTMMasks):
            raise ValueError(f"masks must be an LSTMMasks (see sample_masks); got {type(masks).__name__}")
        if len(masks.layers) != L * D or len(masks.between or ()) not in (0, L - 1):
            raise ValueError(
                f"masks hold {len(masks.layers)} layers and {len(masks.between or ())} between-layer masks; "
                f"this MaskedLSTM needs {L * D} (num_layers x directions) and {L - 1} (or none)"
            )
        H, P = self.hidden_size, self.state_size
        sizes = {"recurrent": P, "zoneout_h": P, "cell_update": H, "cell": H, "zoneout_c": H}
        named = [("output", masks.output, P * D)] + [(f"between[{k}]", b, P * D) for k, b in enumerate(masks.between or ())]
        for i, m in enumerate(masks.layers):
            k = i // D
            named.append((f"layers[{i}].input", m.input, self.input_size if k == 0 else P * D))
            named += [(f"layers[{i}].recurrent.{n}", u, sizes[n]) for n, u in m.recurrent._asdict().items()]
            if m.weight is not None and tuple(m.weight.shape) != (4 * H, P):
                raise ValueError(f"mask layers[{i}].weight must be (4 * hidden_size, {P}) = {(4 * H, P)}; "
                                 f"got {tuple(m.weight.shape)}")
            named.append((f"layers[{i}].weight", m.weight, None))
        for name, u, size in named:
            if u is None:
                continue
            if u.dtype != dtype or u.device != device:
                raise ValueError(f"mask {name} is {u.dtype} on {u.device}; this pass runs in {dtype} on {device} "
                                 "(the input's, or the parameters' dtype under autocast)")
            if size is not None and tuple(u.shape) not in ((T, B, size), (B, size)):
                raise ValueError(f"mask {name} must be (T, B, {size}) = {(T, B, size)} or (B, {size}) for this "
                                 f"input (time-major, in the input's batch order); got {tuple(u.shape)}")

    def _initial_state(self, x: torch.Tensor, B: int):
        D, L = self.num_directions, self.num_layers
        h0 = torch.zeros(L * D, B, self.state_size, dtype=x.dtype, device=x.device)
        return h0, torch.zeros(L * D, B, self.hidden_size, dtype=x.dtype, device=x.device)

    def _forward_padded(self, input: torch.Tensor, hx, masks: LSTMMasks):
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1 if not self.batch_first else 0)
        if self.batch_first:
            x = x.transpose(0, 1)
        B = x.shape[1]
        if hx is None:
            hx = self._initial_state(x, B)
        else:
            hx = self._batched_hx(hx, batched)
        self.check_forward_args(x if not self.batch_first else x.transpose(0, 1), hx, None)
        out, (h_n, c_n) = self._layers(x, hx, masks, None)
        if not batched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (out.transpose(0, 1) if self.batch_first else out), (h_n, c_n)

    def _batched_hx(self, hx, batched: bool):
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, torch.Tensor) for t in hx):
            raise RuntimeError("LSTM hx must be a tuple (h_0, c_0) of tensors")
        want = 3 if batched else 2
        if hx[0].dim() != want or hx[1].dim() != want:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        return tuple(hx) if batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))

    def _forward_packed(self, data, batch_sizes, sorted_indices, unsorted_indices, hx, masks: LSTMMasks):
        layout = PackedLayout.of(batch_sizes, device=data.device)
        if hx is None:
            hx = self._initial_state(data, layout.B)
        else:
            hx = self._batched_hx(hx, True)
            self.check_forward_args(data, hx, batch_sizes)
            hx = self.permute_hidden(hx, sorted_indices)
        out, hidden = self._layers(data, hx, masks, layout)
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(hidden, unsorted_indices)

    def _layers(self, x, hx, masks: LSTMMasks, layout: PackedLayout | None):
        """Every layer and direction over x: time-major (T, B, I) padded, or packed (N, I) with ``layout``."""
        h0, c0 = hx
        D = self.num_directions
        between = list(masks.between or ()) or [None] * (self.num_layers - 1)
        h_n, c_n = [], []
        for k in range(self.num_layers):
            if k > 0:
                x = self._mask(x, between[k - 1], layout)
            outs = []
            for d in range(D):
                out, (h, c) = self._direction(x, k, d, h0[k * D + d], c0[k * D + d], masks.layers[k * D + d], layout)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if D == 1 else torch.cat(outs, -1)
        return self._mask(x, masks.output, layout), (torch.stack(h_n), torch.stack(c_n))

    @staticmethod
    def _mask(x, mask, layout):
        if mask is None:
            return x
        return x * (mask if layout is None else layout.step_mask(mask))

    def _direction(self, x, k: int, d: int, h0, c0, m: LayerMasks, layout: PackedLayout | None):
        """Layer k, direction d (1: reverse) over x; outputs in the input's order of steps."""
        w_ih, w_hh, bias, w_hr = self._weights(k, d)
        if layout is None:
            xs = x.flip(0) if d else x
            hs, state = masked_lstm_layer(xs, w_ih, bias, h0, c0, w_hh, m, backend=self.backend, w_hr=w_hr)
            return (hs.flip(0) if d else hs), state
        if all(r is None for r in m.recurrent) and self.backend in ("auto", "native") and native_supported(x):
            # torch's fused LSTM reads packed data itself; the input and weight masks are applied first
            xs = layout.reverse(x) if d else x
            xm = self._mask(xs, m.input, layout)
            w = w_hh if m.weight is None else w_hh * m.weight
            hs, state = lstm_layer_native(xm, w_ih, bias, h0, c0, w, w_hr=w_hr, batch_sizes=layout.batch_sizes)
            return (layout.reverse(hs) if d else hs), state
        return self._segments(x, layout, bool(d), w_ih, bias, h0, c0, w_hh, w_hr, m)

    def _segments(self, x, layout: PackedLayout, reverse: bool, w_ih, bias, h0, c0, w_hh, w_hr, m: LayerMasks):
        """The masked recurrence over packed x (N, I), read forward or reversed, one call per span of
        ``layout.segments`` on the rows still active there; rows that end inside a span are frozen.
        Returns the packed output (N, ·) in x's order of steps, and (h_T, c_T)."""
        gather, place, sizes = layout.span_index(reverse)
        blocks = torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, gather).split(sizes)
        h, c = h0, c0
        outs = []
        for (t0, t1, n), xb in zip(layout.segments, blocks):
            def cut(u, t0=t0, t1=t1, n=n):  # contiguous once here, not again in the forward and the backward
                return None if u is None else (u[t0:t1, :n] if u.dim() == 3 else u[:n]).contiguous()

            rec = layout.freeze(m.recurrent.map(cut), self.state_size, self.hidden_size, x.dtype, x.device, t0, t1, n)
            hs, (h_n, c_n) = masked_lstm_layer(xb.view(t1 - t0, n, x.shape[1]), w_ih, bias, h[:n], c[:n], w_hh,
                                               LayerMasks(cut(m.input), m.weight, rec), backend=self.backend, w_hr=w_hr)
            outs.append(hs.reshape(-1, hs.shape[-1]))
            h = h_n if n == layout.B else torch.cat([h_n, h[n:]])
            c = c_n if n == layout.B else torch.cat([c_n, c[n:]])
        flat = torch.cat(outs) if len(outs) > 1 else outs[0]
        return flat.index_select(0, place), (h, c)


def _rows(masks: LSTMMasks, index: torch.Tensor) -> LSTMMasks:
    """``masks`` with their batch rows taken in ``index``'s order (weight masks have no rows)."""
    def take(m):
        if m is None:
            return None
        return m.index_select(1 if m.dim() == 3 else 0, index.to(m.device))

    layers = [LayerMasks(take(m.input), m.weight, m.recurrent.map(take)) for m in masks.layers]
    return LSTMMasks(layers, take(masks.output), [take(b) for b in masks.between or ()])

