"""Packed sequences for the masked recurrence: the layout of a ``PackedSequence`` and its frozen steps.

A ``PackedSequence`` holds the rows of a batch sorted by decreasing length, time-major: ``data`` is every
step's active rows, one after the other (``batch_sizes[t]`` rows at step t). ``PackedLayout`` maps that
layout to the padded (T, B) one, and reverses each row within its own length (the reverse direction of a
bidirectional layer starts at each row's last token, as ``nn.LSTM``'s does).

The recurrence kernels know nothing of lengths. A row that has ended is *frozen* instead: its steps past
the end get zoneout masks of 1 on h and c, which keep the state exactly (``z * h + (1 - z) * h_new`` is
``h`` at z = 1, in every backend, and its gradient to the step is exactly 0), so the final state of the
padded run is each row's state at its own last step, and every backend runs packed input unchanged. A
placement's own zoneout masks keep their values on the active steps.

So that a batch of mixed lengths costs about its tokens rather than its longest row times its rows, the
steps are cut into a few spans (``PackedLayout.segments``), each run as one call on the rows still active
at its start; only rows that end inside a span are frozen there. ``PackedLayout.span_index`` takes each
span's padded block straight from the packed data and the spans' outputs straight back, in one gather
each way (for the reverse direction with the reversal folded in), so no full padded copy is made.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

import torch

from kernels import RecurrentMasks

__all__ = ["PackedLayout"]

MAX_SEGMENTS = 4  # spans of a packed batch run as separate calls (PackedLayout.segments)
MIN_SAVING = 1 / 16  # a cut must save this share of the padded batch's steps x rows


@dataclass(frozen=True)
class PackedLayout:
    """Where each entry of a packed ``data`` (N, ...) lies in the padded (T, B) batch, in sorted row order."""

    batch_sizes: torch.Tensor  # (T,) int64 on the CPU, as PackedSequence holds it
    steps: torch.Tensor  # (N,) the step t of each packed entry
    rows: torch.Tensor  # (N,) the (sorted) row b of each packed entry
    lengths: torch.Tensor  # (B,) each sorted row's length, on the CPU
    reverse_index: torch.Tensor  # (N,) the packed index of (length_b - 1 - t, b): rows reversed in place

    @classmethod
    def of(cls, batch_sizes: torch.Tensor, device=None) -> "PackedLayout":
        sizes = batch_sizes.to("cpu", torch.int64)
        B = int(sizes[0]) if sizes.numel() else 0
        steps, offsets, rows = _entries(sizes)
        lengths = (sizes.unsqueeze(0) > torch.arange(B).unsqueeze(1)).sum(1)  # row b is active while b < sizes[t]
        reverse_index = offsets[lengths[rows] - 1 - steps] + rows
        on = dict(device=device)
        # lengths stay on the CPU: freeze reads them per span, which on a GPU would synchronise each time
        return cls(sizes, steps.to(**on), rows.to(**on), lengths, reverse_index.to(**on))

    @property
    def T(self) -> int:
        return int(self.batch_sizes.numel())

    @property
    def B(self) -> int:
        return int(self.batch_sizes[0]) if self.T else 0

    def pad(self, data: torch.Tensor) -> torch.Tensor:
        """(N, D) packed -> (T, B, D) padded with zeros, rows in sorted order."""
        out = data.new_zeros(self.T, self.B, *data.shape[1:])
        return out.index_put((self.steps, self.rows), data)

    def reverse(self, data: torch.Tensor) -> torch.Tensor:
        """(N, D) packed, with every row reversed within its own length (an involution)."""
        # index_select, not data[index]: its backward is an index_add, where indexing's is a slower index_put
        return data.index_select(0, self.reverse_index)

    def span_index(self, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """``(gather, place, sizes)`` for running ``segments`` on packed (N, D) data, read forward or reversed
        (each row from its own last step): ``[data; 0].index_select(0, gather).split(sizes)`` are the spans'
        padded blocks, flattened, in order (row b of span (t0, t1, n) at step t is the entry the direction
        reads there, or the zero row N past the row's end); and if ``flat`` is the spans' outputs flattened
        and joined in the same order, ``flat.index_select(0, place)`` is the output packed, in the data's
        own order of steps. Computed once per layout and direction."""
        key = "span_index_reverse" if reverse else "span_index_forward"
        if key not in self.__dict__:
            self.__dict__[key] = self._build_span_index(reverse)  # a frozen dataclass caches as cached_property does
        return self.__dict__[key]

    def _build_span_index(self, reverse: bool):
        steps, _, rows = _entries(self.batch_sizes)
        read_at = self.lengths[rows] - 1 - steps if reverse else steps  # the step the direction reads entry i
        t0, t1, n = (torch.tensor(v) for v in zip(*self.segments))
        blocks = (t1 - t0) * n
        base = torch.cumsum(blocks, 0) - blocks
        span = torch.bucketize(read_at, t0, right=True) - 1
        place = base[span] + (read_at - t0[span]) * n[span] + rows
        gather = torch.full((int(blocks.sum()),), steps.numel(), dtype=torch.int64)
        gather[place] = torch.arange(steps.numel())
        device = self.steps.device
        return gather.to(device), place.to(device), tuple(blocks.tolist())

    @functools.cached_property
    def segments(self) -> tuple[tuple[int, int, int], ...]:
        """(t0, t1, rows): spans of steps run as one call each on their first ``rows`` rows (those still
        active at t0), so that a batch of mixed lengths costs about its tokens, not its longest row times
        its rows. Cuts go, greedily, where the active rows drop most, while a cut saves at least
        ``MIN_SAVING`` of the padded work, up to ``MAX_SEGMENTS`` spans (each span is one more call)."""
        sizes = self.batch_sizes.tolist()
        T, B = self.T, self.B
        cuts = [0, T]
        drops = [t for t in range(1, T) if sizes[t] < sizes[t - 1]]
        while len(cuts) - 1 < MAX_SEGMENTS:
            best, at = 0, None
            for t in drops:
                i = bisect.bisect(cuts, t)
                a, b = cuts[i - 1], cuts[i]
                saving = (b - t) * (sizes[a] - sizes[t])
                if saving > best:
                    best, at = saving, t
            if at is None or best < MIN_SAVING * T * B:
                break
            bisect.insort(cuts, at)
        return tuple((a, b, sizes[a]) for a, b in zip(cuts, cuts[1:]))

    def active(self, dtype, device, t0: int = 0, t1: int | None = None, rows: int | None = None) -> torch.Tensor:
        """(t1 - t0, rows, 1): 1 on each row's steps, 0 past its end (default: every step and row)."""
        t1 = self.T if t1 is None else t1
        rows = self.B if rows is None else rows
        t = torch.arange(t0, t1, device=device).unsqueeze(1)
        return (t < self.lengths[:rows].to(device).unsqueeze(0)).to(dtype).unsqueeze(-1)

    def freeze(self, masks: RecurrentMasks, state_size: int, cell_size: int, dtype, device,
               t0: int = 0, t1: int | None = None, rows: int | None = None) -> RecurrentMasks:
        """``masks`` of steps [t0, t1) and the first ``rows`` rows, with every step past a row's end zoned out
        (h and c kept exactly; see the module). ``state_size`` is the size of h, ``cell_size`` that of c
        (they differ with a projection). Unchanged where no row ends in the span."""
        t1 = self.T if t1 is None else t1
        rows = self.B if rows is None else rows
        if int(self.lengths[rows - 1]) >= t1:  # the shortest of these rows outlasts the span
            return masks
        active = self.active(dtype, device, t0, t1, rows).bool()
        ended = (~active).to(dtype)
        shape = (t1 - t0, rows)

        def keep(z: torch.Tensor | None, size: int) -> torch.Tensor:
            frozen = ended.expand(*shape, size)
            return frozen.contiguous() if z is None else torch.where(active, z.expand(*shape, size), frozen)

        return masks._replace(zoneout_h=keep(masks.zoneout_h, state_size), zoneout_c=keep(masks.zoneout_c, cell_size))

    def step_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """A (T, B, D) step mask or (B, D) sequence mask, as the (N, D) mask of the packed entries."""
        if mask is None:
            return None
        return mask[self.steps, self.rows] if mask.dim() == 3 else mask[self.rows]


def _entries(sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(steps, offsets, rows) on the CPU: each packed entry's step and sorted row, and the packed index of
    each step's first row."""
    steps = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    return steps, offsets, torch.arange(steps.numel()) - offsets[steps]
