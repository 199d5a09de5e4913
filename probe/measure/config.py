"""``MeasureConfig``: every knob of the measurement suite, in one typed place.

Defaults are sized so that the whole suite runs in seconds on a tiny model on
a CPU; ``docs/measurements.md`` gives the scaling for larger ones. Every
random choice (window and target positions, counterfactual tokens, probe
positions, training masks) is drawn from generators seeded by ``seed``, and
none of them depends on the model, so two models measured with the same
config see the same positions and the same counterfactual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.measure.natural_copies import NaturalCopyConfig
from probe.measure.perturbation import PerturbationConfig

MEASURES = ("influence", "probe", "gradient", "context", "position", "recall", "perturbation", "natural_copies")
# Measurements run only when configured (their MeasureConfig field is set): the natural-text memory measures.
CONFIGURED = ("perturbation", "natural_copies")
MODES = ("eval", "train")


@dataclass(frozen=True)
class MeasureConfig:
    """What to measure and how much of it; see each field's comment."""

    # --- shared -------------------------------------------------------------
    split: str = "valid"  # the held-out split of the corpus to measure on
    max_tokens: int | None = 20_000  # use at most the first this many held-out tokens (None: all)
    seed: int = 0  # seeds every sampling generator (never the model)
    stream_batch: int = 16  # parallel streams (columns) for passes with carried state
    chunk_tokens: int = 1 << 14  # at most this many (row x step) tokens per forward pass (logits: x vocab floats)
    measures: tuple[str, ...] | None = None  # subset of MEASURES for run_all; None: all that apply

    # --- information decay at lags 1..max_lag ---------------------------------
    max_lag: int = 20  # K
    carry_state: bool = True  # windows start from the carried state (False: from a zero state)
    influence_windows: int = 256  # windows (positions t) averaged per lag
    influence_modes: tuple[str, ...] = MODES  # "eval" (no masks) and/or "train" (training masks)
    gradient_windows: int = 256

    # --- linear probes --------------------------------------------------------
    probe_classes: int = 50  # the most frequent N training tokens, plus one "other" class
    probe_positions: int = 4000  # positions used (first half trains, second half scores)
    probe_steps: int = 50  # L-BFGS iterations (full batch, all lags at once); see docs
    # L2 on the probe weights (features are standardised): one value, or candidates from which each
    # probe (layer, lag) takes the one best on held-out training positions, the bias-only probe included
    # (probe.measure.probe_info)
    probe_weight_decay: float | tuple[float, ...] = (1e-3, 1e-1)
    probe_cell: bool = True  # also probe the cell state c_t
    probe_untrained: bool = True  # also probe an untrained network of the same shape and seed

    # --- perplexity over sequence length --------------------------------------
    context_lengths: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200)
    context_targets: int = 500  # target positions, identical for every L
    effective_tolerance: float = 0.01  # effective context: first L within this of full context
    position_max: int | None = None  # position curve length; None: max(context_lengths)
    position_windows: int = 256

    # --- memory on natural text (run when set; a None here leaves a configuration's identity as before) ---
    perturbation: PerturbationConfig | None = None  # probe.measure.perturbation
    natural_copies: NaturalCopyConfig | None = None  # probe.measure.natural_copies

    def __post_init__(self):
        problems = []
        positive = (
            "stream_batch", "chunk_tokens", "max_lag", "influence_windows", "gradient_windows",
            "probe_classes", "probe_positions", "probe_steps", "context_targets", "position_windows",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be a positive integer (got {getattr(self, name)!r})")
        if int(self.seed) < 0:
            problems.append(f"seed must be >= 0 (got {self.seed!r})")
        if self.max_tokens is not None and self.max_tokens < 2:
            problems.append(f"max_tokens must be >= 2 or None (got {self.max_tokens!r})")
        if self.probe_positions < 4:
            problems.append(
                f"probe_positions must be >= 4, half to train and half to score (got {self.probe_positions})"
            )
        decays = self.probe_weight_decays
        if not decays or not all(d >= 0 for d in decays):
            problems.append(f"probe_weight_decay must be >= 0, or a non-empty tuple of such (got {self.probe_weight_decay!r})")
        if not self.context_lengths or any(int(L) < 1 for L in self.context_lengths):
            problems.append(f"context_lengths must be positive integers (got {self.context_lengths!r})")
        if self.position_max is not None and self.position_max < 1:
            problems.append(f"position_max must be >= 1 or None (got {self.position_max!r})")
        if not 0 <= self.effective_tolerance < 1:
            problems.append(f"effective_tolerance must be in [0, 1) (got {self.effective_tolerance!r})")
        bad_modes = [m for m in self.influence_modes if m not in MODES]
        if bad_modes or not self.influence_modes:
            problems.append(f"influence_modes must be a non-empty subset of {MODES} (got {self.influence_modes!r})")
        if self.measures is not None:
            unknown = [m for m in self.measures if m not in MEASURES]
            if unknown or not self.measures:
                problems.append(f"measures must be a non-empty subset of {MEASURES} (got {self.measures!r})")
            unset = [m for m in CONFIGURED if m in self.measures and getattr(self, m) is None]
            if unset:
                problems.append(f"measures {unset} need their configuration (MeasureConfig({unset[0]}=...))")
        if problems:
            raise ValueError("invalid MeasureConfig: " + "; ".join(problems))
        # Canonical forms: sorted, de-duplicated lengths.
        object.__setattr__(self, "context_lengths", tuple(sorted({int(L) for L in self.context_lengths})))

    @property
    def probe_weight_decays(self) -> tuple[float, ...]:
        """The candidate weight decays (one value: no selection)."""
        d = self.probe_weight_decay
        return tuple(float(v) for v in d) if isinstance(d, (tuple, list)) else (float(d),)

    @property
    def position_length(self) -> int:
        return self.position_max if self.position_max is not None else max(self.context_lengths)
