"""Every measure name a tidy table can carry, with its label, unit, direction and axis: one home.

Statistics (which way is better), figures (axis labels, log scales, noise
floors) and the report (table headers, sentences) all read this table, so a
measure is described once. Producers: ``probe.measure`` (every measurement)
and ``probe.runs.cells.training_rows`` (perplexities and training curves).
``tests/test_measure_names.py`` fails when a producer emits a name missing
here, or when a name here is emitted by no producer.

Summaries of a lag curve are named ``<curve>_<mode>_half_life`` and
``<curve>_<mode>_decay_rate`` (``probe.measure.curves``); ``lookup`` resolves
them from the curve's entry.

Direction: "higher" or "lower" is better *for the question*: more memory is
higher for influence, information, recall, half-life and effective context;
lower for perplexities, losses and decay rates. Controls and references
(untrained networks, baselines, chance, counts) have no direction and are
never tested.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class MeasureName:
    """What a measure is: how to name it, its unit, which way is better, and its x axis."""

    name: str
    label: str
    unit: str = ""
    direction: str | None = None  # HIGHER, LOWER, or None (a control: never tested)
    axis: str = ""  # the x of its rows: "lag", "context_length", "position", "epoch"; "" for scalars
    log_y: bool = False  # drawn on a log axis (decay curves span orders of magnitude)

    @property
    def higher_is_better(self) -> bool:
        if self.direction is None:
            raise ValueError(f"measure {self.name!r} is a control or reference; it has no better direction")
        return self.direction == HIGHER

    @property
    def is_fit(self) -> bool:
        """A perplexity or loss (how well the model predicts), as opposed to a memory measure."""
        return self.name.endswith(("_ppl", "_nll", "_ppl_epoch"))

    @property
    def axis_label(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


def _m(name, label, unit="", direction=None, axis="", **kw) -> MeasureName:
    return MeasureName(name, label, unit, direction, axis, **kw)


_LAG = dict(axis="lag")
_DECAY = dict(axis="lag", log_y=True)

MEASURES: dict[str, MeasureName] = {m.name: m for m in (
    # --- training (probe.runs.train.result_rows) ---
    _m("valid_ppl", "validation perplexity", direction=LOWER),
    _m("test_ppl", "test perplexity", direction=LOWER),
    _m("final_valid_ppl", "validation perplexity at the last epoch", direction=LOWER),
    _m("final_test_ppl", "test perplexity at the last epoch", direction=LOWER),
    _m("selected_epoch", "selected epoch (best validation)", "epoch"),
    _m("train_seconds", "training time", "s"),
    _m("train_ppl", "training perplexity (with dropout)", direction=LOWER, axis="epoch"),
    _m("valid_ppl_epoch", "validation perplexity", direction=LOWER, axis="epoch"),
    # --- counterfactual influence (probe.measure.influence) ---
    _m("influence_kl", "influence on the prediction (KL)", "nats", HIGHER, **_DECAY),
    _m("influence_hidden", "relative hidden-state distance", "", HIGHER, **_DECAY),
    _m("influence_kl_retained", "share of influence kept under training masks", "", HIGHER, **_LAG),
    # --- linear probes (probe.measure.probe_info) ---
    _m("probe_bits", "probe information", "bits", HIGHER, **_LAG),
    _m("probe_bits_cell", "probe information from the cell state", "bits", HIGHER, **_LAG),
    _m("probe_bits_untrained", "probe information, untrained network", "bits", **_LAG),
    _m("probe_bits_cell_untrained", "probe information from the untrained network's cell state", "bits", **_LAG),
    _m("probe_bits_baseline", "frequency baseline", "bits", **_LAG),
    _m("probe_target_entropy", "entropy of the probed token", "bits", **_LAG),
    _m("probe_accuracy", "probe accuracy", "", HIGHER, **_LAG),
    _m("probe_accuracy_cell", "probe accuracy from the cell state", "", HIGHER, **_LAG),
    _m("probe_accuracy_untrained", "probe accuracy, untrained network", "", **_LAG),
    _m("probe_accuracy_cell_untrained", "probe accuracy from the untrained network's cell state", "", **_LAG),
    _m("probe_accuracy_baseline", "frequency-baseline accuracy", "", **_LAG),
    _m("probe_weight_decay", "probe weight decay chosen on held-out positions", "", **_LAG),
    # --- gradient sensitivity (probe.measure.gradient) ---
    _m("gradient_norm", "gradient sensitivity ‖∂ log p / ∂e‖", "", HIGHER, **_DECAY),
    # --- perplexity over sequence length (probe.measure.context) ---
    _m("context_ppl", "perplexity with limited context", "", LOWER, axis="context_length"),
    _m("context_nll", "loss with limited context", "nats", LOWER, axis="context_length"),
    _m("full_context_ppl", "full-context perplexity", "", LOWER),
    _m("full_context_nll", "full-context loss", "nats", LOWER),
    _m("effective_context", "effective context", "tokens", HIGHER),
    _m("position_ppl", "perplexity by position since a reset", "", LOWER, axis="position"),
    _m("position_nll", "loss by position since a reset", "nats", LOWER, axis="position"),
    # --- context perturbation beyond distance d (probe.measure.perturbation) ---
    _m("shuffled_nll_increase", "loss increase, context beyond d shuffled", "nats", HIGHER, axis="distance"),
    _m("replaced_nll_increase", "loss increase, context beyond d replaced", "nats", HIGHER, axis="distance"),
    _m("perturbation_intact_nll", "loss after the intact prefix", "nats", LOWER),
    _m("shuffled_effective_context", "effective context, word order (shuffling)", "tokens", HIGHER),
    _m("replaced_effective_context", "effective context (replacing)", "tokens", HIGHER),
    # --- natural copies (probe.measure.natural_copies) ---
    _m("natural_copy_gain", "gain from a token's previous occurrence", "nats", HIGHER, axis="distance"),
    _m("natural_copy_gain_rare", "gain from a rare token's previous occurrence", "nats", HIGHER, axis="distance"),
    _m("natural_copy_gain_common", "gain from a common token's previous occurrence", "nats", HIGHER,
       axis="distance"),
    _m("natural_copy_count", "natural copies scored", "", axis="distance"),
    # --- planted recalls (probe.measure.synthetic_recall) ---
    _m("recall_accuracy", "recall accuracy of planted copies", "", HIGHER, **_LAG),
    _m("recall_accuracy_chance", "chance", "", **_LAG),
    _m("recall_accuracy_best", "best possible recall", "", **_LAG),
    _m("recall_count", "planted copies scored", "", **_LAG),
    _m("copy_logprob", "log-probability of the planted copy above chance", "nats", HIGHER, **_LAG),
    _m("copy_logprob_best", "best possible copy log-probability above chance", "nats", **_LAG),
    _m("source_influence", "influence of the marked source on its copy (KL)", "nats", HIGHER, **_LAG),
)}

MODES = {"eval": "eval-mode", "train": "training-mode"}
# Summaries of a lag curve: suffix -> (label, unit, direction relative to the curve's).
SUMMARIES = {
    "_half_life": ("half-life", "tokens", "same"),
    "_decay_rate": ("decay rate", "per token", "opposite"),
}


def lookup(name: str) -> MeasureName:
    """The entry of ``name``, resolving half-life and decay-rate summaries of a curve (and their mode).

    Raises KeyError naming the known measures when ``name`` is not one of them.
    """
    if name in MEASURES:
        return MEASURES[name]
    for suffix, (what, unit, relation) in SUMMARIES.items():
        if not name.endswith(suffix):
            continue
        base = name[: -len(suffix)]
        mode = ""
        for m in MODES:
            if base.endswith("_" + m) and base[: -len(m) - 1] in MEASURES:
                base, mode = base[: -len(m) - 1], m
        curve = MEASURES.get(base)
        if curve is None or curve.axis != "lag":
            break
        direction = curve.direction
        if direction is not None and relation == "opposite":
            direction = LOWER if direction == HIGHER else HIGHER
        label = f"{MODES[mode]} {curve.label} {what}" if mode else f"{curve.label} {what}"
        return MeasureName(name, label, unit, direction)
    raise KeyError(f"unknown measure {name!r}; known measures: {', '.join(MEASURES)} "
                   f"(and their {', '.join(SUMMARIES)} summaries)")


def known(name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def label(name: str, mode: str = "") -> str:
    """A readable name; unknown names (a user's own measure) read as their words."""
    if not known(name):
        return name.replace("_", " ")
    text = lookup(name).label
    return f"{MODES[mode]} {text}" if mode in MODES and name in MEASURES else text


def unit(name: str) -> str:
    return lookup(name).unit if known(name) else ""


def higher_is_better(name: str) -> bool:
    """Which way is better for a tested measure; controls have no direction and raise ValueError."""
    return lookup(name).higher_is_better


def with_mode(entry: MeasureName, mode: str) -> MeasureName:
    return replace(entry, label=f"{MODES[mode]} {entry.label}") if mode in MODES else entry
