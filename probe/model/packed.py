"""Packed sequences for the masked recurrence: the layout of a ``PackedSequence`` and its frozen steps.

A ``PackedSequence`` holds the rows of a batch sorted by decreasing length, time-major: ``data`` is every
step's active rows, one after the other (``batch_sizes[t]`` rows at step t). ``PackedLayout`` maps that
layout to the padded (T, B) one and back, and reverses each row within its own length (the reverse
direction of a bidirectional layer starts at each row's last token, as ``nn.LSTM``'s does).

The recurrence kernels know nothing of lengths. A row that has ended is *frozen* instead: its steps past
the end get zoneout masks of 1 on h and c, which keep the state exactly (``z * h + (1 - z) * h_new`` is
``h`` at z = 1, in every backend, and its gradient to the step is exactly 0), so the final state of the
padded run is each row's state at its own last step, and every backend runs packed input unchanged. A
placement's own zoneout masks keep their values on the active steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import RecurrentMasks

__all__ = ["PackedLayout"]


@dataclass(frozen=True)
class PackedLayout:
    """Where each entry of a packed ``data`` (N, ...) lies in the padded (T, B) batch, in sorted row order."""

    batch_sizes: torch.Tensor  # (T,) int64 on the CPU, as PackedSequence holds it
    steps: torch.Tensor  # (N,) the step t of each packed entry
    rows: torch.Tensor  # (N,) the (sorted) row b of each packed entry
    lengths: torch.Tensor  # (B,) each sorted row's length
    reverse_index: torch.Tensor  # (N,) the packed index of (length_b - 1 - t, b): rows reversed in place

    @classmethod
    def of(cls, batch_sizes: torch.Tensor, device=None) -> "PackedLayout":
        sizes = batch_sizes.to("cpu", torch.int64)
        T = int(sizes.numel())
        B = int(sizes[0]) if T else 0
        steps = torch.repeat_interleave(torch.arange(T), sizes)
        offsets = torch.cumsum(sizes, 0) - sizes  # the packed index of step t's first row
        rows = torch.arange(steps.numel()) - offsets[steps]
        lengths = (sizes.unsqueeze(0) > torch.arange(B).unsqueeze(1)).sum(1)  # row b is active while b < sizes[t]
        reverse_index = offsets[lengths[rows] - 1 - steps] + rows
        on = dict(device=device)
        return cls(sizes, steps.to(**on), rows.to(**on), lengths.to(**on), reverse_index.to(**on))

    @property
    def T(self) -> int:
        return int(self.batch_sizes.numel())

    @property
    def B(self) -> int:
        return int(self.batch_sizes[0]) if self.T else 0

    @property
    def uniform(self) -> bool:
        """Every row has the full length: the padded batch has no padding, nothing needs freezing."""
        return bool((self.batch_sizes == self.B).all())

    def pad(self, data: torch.Tensor) -> torch.Tensor:
        """(N, D) packed -> (T, B, D) padded with zeros, rows in sorted order."""
        out = data.new_zeros(self.T, self.B, *data.shape[1:])
        return out.index_put((self.steps, self.rows), data)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(T, B, D) padded -> (N, D) packed (the padded steps dropped)."""
        return padded[self.steps, self.rows]

    def reverse(self, data: torch.Tensor) -> torch.Tensor:
        """(N, D) packed, with every row reversed within its own length (an involution)."""
        return data[self.reverse_index]

    def active(self, dtype, device) -> torch.Tensor:
        """(T, B, 1): 1 on each row's steps, 0 past its end."""
        t = torch.arange(self.T, device=device).unsqueeze(1)
        return (t < self.lengths.to(device).unsqueeze(0)).to(dtype).unsqueeze(-1)

    def freeze(self, masks: RecurrentMasks, state_size: int, cell_size: int, dtype, device) -> RecurrentMasks:
        """``masks`` with every step past a row's end zoned out (h and c kept exactly); see the module.
        ``state_size`` is the size of h, ``cell_size`` that of c (they differ with a projection)."""
        if self.uniform:
            return masks
        active = self.active(dtype, device).bool()
        ended = (~active).to(dtype)

        def keep(z: torch.Tensor | None, size: int) -> torch.Tensor:
            frozen = ended.expand(self.T, self.B, size)
            return frozen.contiguous() if z is None else torch.where(active, z.expand(self.T, self.B, size), frozen)

        return masks._replace(zoneout_h=keep(masks.zoneout_h, state_size), zoneout_c=keep(masks.zoneout_c, cell_size))

    def step_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """A (T, B, D) step mask or (B, D) sequence mask, as the (N, D) mask of the packed entries."""
        if mask is None:
            return None
        return mask[self.steps, self.rows] if mask.dim() == 3 else mask[self.rows]
