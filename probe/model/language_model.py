"""The LSTM language model: embedding -> [mask sites] -> masked LSTM layers -> decoder.

Every layer's recurrence runs through ``kernels.lstm_layer``, so the same
model trains on the CPU reference path and on the Triton kernels on a GPU.
Where the masks go is decided by the placement alone (``probe.placements``);
the model only samples them and applies them at their sites:

    embedding    e = E[x] * m_emb[x]            one mask per word type per batch
    input        x_l = x_l * m_in               each layer's non-recurrent input
    weight       W_hh * m_w                     DropConnect, applied functionally
    recurrent, cell_update, cell, zoneout_h, zoneout_c   inside the recurrence
    output       y = h_top * m_out              before the decoder

Masks can also be sampled once and passed in explicitly (``sample_masks``),
which is how measurements apply a placement's training masks identically to
two inputs without depending on train/eval mode.

The per-layer computation (a layer's masks, and one layer on them) is
``probe.model.masked_lstm``'s, shared with ``MaskedLSTM`` (the drop-in for
``torch.nn.LSTM``), so there is one masked LSTM layer in the toolkit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels import linear, lstm_layer_from_input

from probe.model.masked_lstm import LayerMasks, apply_mask, masked_lstm_layer, sample_layer_masks
from probe.placements import Placement, Site, dropout_mask, parse_placement, site_mask

State = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a language model; sizes as in Zaremba et al.'s table."""

    vocab_size: int
    emb_size: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    tie_weights: bool = False
    init_scale: float = 0.1
    placement: Placement | str = "none"  # a spec string is parsed once, here
    backend: str = "auto"
    # Added to every forget-gate bias after the uniform initialisation (Gers et al. 2000; Jozefowicz et al.
    # 2015 found 1.0 closes most of the LSTM's gap on long dependencies); 0 is Zaremba et al.'s init.
    forget_bias: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "emb_size", "hidden_size", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.tie_weights and self.emb_size != self.hidden_size:
            raise ValueError(
                f"tie_weights needs emb_size == hidden_size (the decoder reuses the embedding); "
                f"got emb_size={self.emb_size}, hidden_size={self.hidden_size}"
            )
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be positive; got {self.init_scale}")
        object.__setattr__(self, "placement", parse_placement(self.placement))  # fails early, with the registry's message


@dataclass
class ModelMasks:
    """Every mask of one forward pass over (T, B) tokens."""

    embedding: torch.Tensor | None
    layers: list[LayerMasks]
    output: torch.Tensor | None


class LSTMLayer(nn.Module):
    """Parameters of one layer, in PyTorch's gate order i, f, g, o."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.w_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.w_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.placement: Placement = config.placement
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.emb_size)
        sizes = [c.emb_size] + [c.hidden_size] * c.num_layers
        self.layers = nn.ModuleList(LSTMLayer(sizes[i], sizes[i + 1]) for i in range(c.num_layers))
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        if c.tie_weights:
            # Press & Wolf 2017; Inan et al. 2017: share the embedding with the decoder.
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zaremba et al.: every parameter uniform in [-s, s]."""
        s = self.config.init_scale
        for p in self.parameters():
            nn.init.uniform_(p, -s, s)
        if self.config.forget_bias:
            H = self.config.hidden_size
            with torch.no_grad():
                for layer in self.layers:
                    layer.bias[H:2 * H] += self.config.forget_bias  # gate order i, f, g, o

    def init_state(self, batch_size: int) -> State:
        p = self.decoder.weight
        H = self.config.hidden_size
        return [(p.new_zeros(batch_size, H), p.new_zeros(batch_size, H)) for _ in self.layers]

    # --- masks ------------------------------------------------------------

    def sample_masks(
        self, T: int, B: int, generator: torch.Generator | None = None, *, training: bool = True
    ) -> ModelMasks:
        """The placement's masks for one forward pass over (T, B) tokens.

        ``training=False`` gives evaluation masks: none for dropout sites and
        the keep probability for zoneout sites.
        """
        pl, c = self.placement, self.config
        ref = self.decoder.weight
        kw = dict(dtype=ref.dtype, device=ref.device)
        emb = None
        if training and pl.active(Site.EMBEDDING):
            emb = dropout_mask((c.vocab_size,), pl.rate(Site.EMBEDDING), generator, **kw)
        layers = [
            sample_layer_masks(pl, T, B, layer.w_ih.shape[1], c.hidden_size, generator, training=training, **kw)
            for layer in self.layers
        ]
        out = site_mask(pl, Site.OUTPUT, T, B, c.hidden_size, generator, training=training, **kw)
        return ModelMasks(emb, layers, out)

    # --- forward ----------------------------------------------------------

    def forward(
        self,
        ids: torch.Tensor,
        state: State | None = None,
        *,
        masks: ModelMasks | None = None,
        generator: torch.Generator | None = None,
        return_hidden: bool = False,
        last_only: bool = False,
    ):
        """Logits (T, B, V) for token ids (T, B), and the final state.

        ``last_only`` decodes the last step alone (logits (1, B, V)): a reader of the final prediction
        after a long prefix skips the T - 1 softmax layers it would discard (most of a word model's cost).

        Masks: the explicit ``masks`` if given (whatever the mode), else the
        placement's training masks in training mode (drawn from
        ``generator``), else its evaluation masks. With ``return_hidden``,
        also returns each layer's hidden states ``[(T, B, H)] * L``.
        """
        if ids.dim() != 2:
            raise ValueError(f"ids must be (T, B) token ids; got shape {tuple(ids.shape)}")
        T, B = ids.shape
        if state is None:
            state = self.init_state(B)
        if masks is None:
            masks = self.sample_masks(T, B, generator, training=self.training)
        x = self.embedding(ids)
        if masks.embedding is not None:
            x = x * masks.embedding[ids].unsqueeze(-1)
        new_state, hidden = [], []
        for layer, m, (h0, c0) in zip(self.layers, masks.layers, state):
            x, (h, c) = masked_lstm_layer(
                x, layer.w_ih, layer.bias, h0, c0, layer.w_hh, m,
                backend=self.config.backend, recurrence=lstm_layer_from_input,
            )
            new_state.append((h, c))
            hidden.append(x)
        out = masks.output
        if last_only:
            x = x[-1:]
            out = out[-1:] if out is not None and out.dim() == 3 else out
        logits = linear(apply_mask(x, out), self.decoder.weight, self.decoder.bias)
        if return_hidden:
            return logits, new_state, hidden
        return logits, new_state



def detach_state(state: State) -> State:
    """Cut the graph between BPTT windows while carrying the values (Zaremba et al.)."""
    return [(h.detach(), c.detach()) for h, c in state]
