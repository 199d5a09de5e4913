"""Where dropout goes: the placement registry, its spec grammar, and mask sampling.

A placement is data, not code: a name, a citation, and a set of sites, each
with a rate parameter and a scope. This module is the single source of
truth; the model, the reports and the CLIs read it.

Spec grammar: ``name`` or ``name:key=value,key=value``, e.g.
``variational:p=0.5,rec=0.3`` or ``zoneout:zc=0.25,zh=0.025``. Every value is
a rate in [0, 1), except ``scope`` where a placement declares one.

Masks use inverted scaling (kept units are multiplied by 1/(1-p)) so that
evaluation is the identity, except on the carried cell state (``Site.CELL``,
rnndrop), whose mask holds 0 or 1: c_t = f * c_{t-1} + i * g carries the
mask's value into every later step, so a 1/(1-p) there would compound (see
the rnndrop entry). Zoneout masks hold 1 where the previous value is kept,
and at evaluation hold the keep probability itself (the expectation).
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field
from enum import Enum

import torch


class Site(str, Enum):
    """Where a mask is applied."""

    EMBEDDING = "embedding"  # drop whole word types
    INPUT = "input"  # each layer's non-recurrent input x_t
    OUTPUT = "output"  # the top layer's output before the decoder
    RECURRENT = "recurrent"  # h_{t-1} entering the gates
    CELL_UPDATE = "cell_update"  # the candidate g_t
    CELL = "cell"  # the cell state c_t
    WEIGHT = "weight"  # DropConnect on W_hh
    ZONEOUT_C = "zoneout_c"  # keep the previous c with probability z
    ZONEOUT_H = "zoneout_h"  # keep the previous h with probability z


class Scope(str, Enum):
    """How often a mask is resampled."""

    STEP = "step"  # fresh mask every time step
    SEQUENCE = "sequence"  # one mask per batch row, tied across time (per BPTT segment)
    BATCH = "batch"  # one mask for the whole forward pass


ZONEOUT_SITES = frozenset({Site.ZONEOUT_C, Site.ZONEOUT_H})
RECURRENT_SITES = (Site.RECURRENT, Site.CELL_UPDATE, Site.CELL, Site.ZONEOUT_H, Site.ZONEOUT_C)


class PlacementError(ValueError):
    """A placement spec that names something unknown or a rate out of range."""


@dataclass(frozen=True)
class SiteRule:
    """One site of a placement: which rate parameter drives it, and its scope."""

    site: Site
    key: str
    scope: Scope


@dataclass(frozen=True)
class PlacementDef:
    """A registry entry: the placement's sites, default rates and provenance."""

    name: str
    description: str
    citation: str
    rules: tuple[SiteRule, ...]
    defaults: dict[str, float]
    # Placements whose recurrent-site scope is a choice (Semeniuta: step or sequence).
    scope_choice: tuple[Site, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.defaults) + (("scope",) if self.scope_choice else ())


def _rules(*items: tuple[Site, str, Scope]) -> tuple[SiteRule, ...]:
    return tuple(SiteRule(site, key, scope) for site, key, scope in items)


S, Q, BATCH = Scope.STEP, Scope.SEQUENCE, Scope.BATCH

REGISTRY: dict[str, PlacementDef] = {
    d.name: d
    for d in (
        PlacementDef("none", "no dropout anywhere", "baseline", (), {}),
        PlacementDef(
            "zaremba",
            "dropout on each layer's input and the top output, fresh mask every step; never on the recurrence",
            "Zaremba, Sutskever & Vinyals 2014, Recurrent Neural Network Regularization",
            _rules((Site.INPUT, "p", S), (Site.OUTPUT, "p", S)),
            {"p": 0.5},
        ),
        PlacementDef(
            "naive",
            "Zaremba's dropout plus a fresh mask on h_{t-1} at every step: the placement Zaremba et al. (2014) "
            "warn corrupts the information carried through time",
            "the 'everywhere' placement; see Zaremba et al. 2014, Sec. 3",
            _rules((Site.INPUT, "p", S), (Site.OUTPUT, "p", S), (Site.RECURRENT, "rec", S)),
            {"p": 0.5, "rec": 0.5},
        ),
        PlacementDef(
            "variational",
            "one mask per sequence on input, output and h_{t-1}; optional word-type dropout on the embedding",
            "Gal & Ghahramani 2016, A Theoretically Grounded Application of Dropout in RNNs",
            _rules(
                (Site.EMBEDDING, "emb", BATCH),
                (Site.INPUT, "p", Q),
                (Site.OUTPUT, "p", Q),
                (Site.RECURRENT, "rec", Q),
            ),
            {"p": 0.5, "rec": 0.3, "emb": 0.0},
        ),
        PlacementDef(
            "semeniuta",
            "Zaremba's dropout plus dropout on the cell update g_t (never on the carried cell state)",
            "Semeniuta, Severyn & Barth 2016, Recurrent Dropout without Memory Loss",
            _rules((Site.INPUT, "p", S), (Site.OUTPUT, "p", S), (Site.CELL_UPDATE, "rec", S)),
            {"p": 0.5, "rec": 0.25},
            scope_choice=(Site.CELL_UPDATE,),
        ),
        PlacementDef(
            "zoneout",
            "Zaremba's dropout plus zoneout: each unit keeps its previous c (rate zc) or h (rate zh)",
            "Krueger et al. 2017, Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations",
            _rules(
                (Site.INPUT, "p", S),
                (Site.OUTPUT, "p", S),
                (Site.ZONEOUT_C, "zc", S),
                (Site.ZONEOUT_H, "zh", S),
            ),
            {"p": 0.5, "zc": 0.25, "zh": 0.025},
        ),
        PlacementDef(
            "weight_drop",
            "DropConnect on W_hh (one mask per forward pass) and locked (per-sequence) dropout elsewhere",
            "Merity, Keskar & Socher 2018, Regularizing and Optimizing LSTM Language Models (AWD-LSTM)",
            _rules(
                (Site.EMBEDDING, "emb", BATCH),
                (Site.INPUT, "p", Q),
                (Site.OUTPUT, "p", Q),
                (Site.WEIGHT, "w", BATCH),
            ),
            {"p": 0.4, "w": 0.5, "emb": 0.0},
        ),
        PlacementDef(
            "rnndrop",
            "Zaremba's dropout plus one mask per sequence on the cell state c_t, holding 0 or 1 (unscaled): "
            "c_t = f*c_{t-1} + i*g_t carries the masked cell into every later step, so an inverted 1/(1-p) "
            "scale would compound once per step and blow the cell up; no mask at evaluation",
            "Moon et al. 2015, RnnDrop: A Novel Dropout for RNNs in ASR",
            _rules((Site.INPUT, "p", S), (Site.OUTPUT, "p", S), (Site.CELL, "cell", Q)),
            {"p": 0.5, "cell": 0.25},
        ),
    )
}

PLACEMENT_NAMES: tuple[str, ...] = tuple(REGISTRY)


@dataclass(frozen=True)
class SiteMask:
    """A site as configured in a placement: its rate and scope."""

    rate: float
    scope: Scope


@dataclass(frozen=True)
class Placement:
    """A parsed placement: which sites carry masks, at which rate and scope."""

    name: str
    params: dict[str, float | str] = field(default_factory=dict)
    sites: dict[Site, SiteMask] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The canonical spec string, with every parameter spelled out."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.params.items())

    @property
    def definition(self) -> PlacementDef:
        return REGISTRY[self.name]

    def rate(self, site: Site) -> float:
        return self.sites[site].rate if site in self.sites else 0.0

    def active(self, site: Site) -> bool:
        return site in self.sites and self.sites[site].rate > 0

    def __str__(self) -> str:
        return self.spec


def _valid_names() -> str:
    return ", ".join(PLACEMENT_NAMES)


def spec_items(spec: str) -> tuple[str, dict[str, str]]:
    """The grammar of a spec, ``name[:key=value,...]``: its name and its items as written (not yet checked
    against the registry). A malformed or repeated item is a PlacementError."""
    if not isinstance(spec, str) or not spec.strip():
        raise PlacementError(f"a placement spec must be a non-empty string; valid names: {_valid_names()}")
    name, _, rest = spec.strip().partition(":")
    items: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))) if rest else ():
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            d = REGISTRY.get(name.strip())
            valid = "" if d is None else "; valid keys: " + (", ".join(d.keys) or "none (this placement takes no parameters)")
            raise PlacementError(f"bad item {item!r} in placement spec {spec!r}; expected key=value{valid}")
        if key in items:
            raise PlacementError(f"placement spec {spec!r} sets {key!r} twice ({key}={items[key]}, {key}={value}); "
                                 "give each key once")
        items[key] = value
    return name.strip(), items


@functools.lru_cache(maxsize=4096)
def placement_name(label) -> str | None:
    """The registry name of a label that is a placement spec (``variational:p=0.5`` -> ``variational``),
    or None for any other label (``small · zaremba:p=0.5``, a user's ``--label``)."""
    try:
        return parse_placement(str(label)).name
    except PlacementError:
        return None


def parse_placement(spec: str | Placement, **rates) -> Placement:
    """Parse ``name[:key=value,...]`` into a Placement, or raise PlacementError.

    ``rates`` (keyword items, e.g. ``p=0.3``) are merged in; a key set both in the spec string and as a
    keyword is an error. A Placement is returned as it is, or with ``rates`` overriding its values.
    """
    if isinstance(spec, Placement):
        if not rates:
            return spec
        name, items = spec.name, {k: str(v) for k, v in spec.params.items()}
        items.update({k: str(v) for k, v in rates.items()})
        spec = f"{name}:" + ",".join(f"{k}={v}" for k, v in items.items())
    elif rates:
        _, given = spec_items(spec)
        both = sorted(set(given) & set(rates))
        if both:
            raise PlacementError(
                f"rate {both[0]!r} is set both in the placement spec {spec!r} and as a keyword; give it once"
            )
        spec = spec.strip() + ("," if ":" in spec else ":") + ",".join(f"{k}={v}" for k, v in rates.items())
    name, items = spec_items(spec)
    if name not in REGISTRY:
        raise PlacementError(f"unknown placement {name!r}; valid names: {_valid_names()}")
    d = REGISTRY[name]
    params: dict[str, float | str] = dict(d.defaults)
    if d.scope_choice:
        params["scope"] = _default_scope(d).value
    valid = ", ".join(d.keys) or "none (this placement takes no parameters)"
    for key, value in items.items():
        if key not in d.keys:
            raise PlacementError(f"placement {name!r} has no parameter {key!r}; valid keys: {valid}")
        if key == "scope":
            choices = (Scope.STEP.value, Scope.SEQUENCE.value)
            if value not in choices:
                raise PlacementError(f"scope for {name!r} must be one of {', '.join(choices)}; got {value!r}")
            params[key] = value
            continue
        try:
            rate = float(value)
        except ValueError:
            raise PlacementError(f"rate {key}={value!r} in {spec!r} is not a number; rates lie in [0, 1)") from None
        if not 0.0 <= rate < 1.0:
            raise PlacementError(f"rate {key}={rate} in {spec!r} is outside [0, 1)")
        params[key] = rate
    sites = {}
    for rule in d.rules:
        scope = Scope(params["scope"]) if rule.site in d.scope_choice else rule.scope
        sites[rule.site] = SiteMask(float(params[rule.key]), scope)
    return Placement(name, params, sites)


def _default_scope(d: PlacementDef) -> Scope:
    return next(r.scope for r in d.rules if r.site in d.scope_choice)


# --- mask sampling ----------------------------------------------------------


def dropout_mask(shape, p: float, generator: torch.Generator, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """A mask of 0 and 1/(1-p): kept units are scaled so the expectation is 1."""
    keep = torch.rand(shape, generator=generator, dtype=dtype, device=device) >= p
    return keep.to(dtype) / (1.0 - p)


def keep_mask(shape, p: float, generator: torch.Generator, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """A mask of 0 and 1, unscaled: each unit is kept (1) with probability 1-p, so the mean is 1-p.

    Used where the masked value is carried from step to step (``Site.CELL``), so
    that a kept unit is passed on unchanged instead of growing by 1/(1-p) per step.
    """
    return (torch.rand(shape, generator=generator, dtype=dtype, device=device) >= p).to(dtype)


# Sites whose dropout mask is 0/1 rather than 0 or 1/(1-p): the carried cell state (rnndrop). The mask
# multiplies c_t, which the next step's f * c_{t-1} carries on, so with inverted scaling a kept unit of a
# per-sequence mask grows by 1/(1-p) at every step (it diverged in 5 of 6 Tiny Shakespeare seeds).
# A 0/1 mask is idempotent (m * m = m): a kept unit passes on unchanged, a dropped one is held at 0, and
# training differs from evaluation by the dropped units alone, however many steps the sequence runs.
UNSCALED_SITES = frozenset({Site.CELL})


def zoneout_mask(shape, z: float, generator: torch.Generator, *, training: bool, dtype=torch.float32, device=None):
    """1 where the previous value is kept (probability z); the expectation z at evaluation."""
    if not training:
        return torch.full(shape, z, dtype=dtype, device=device)
    return (torch.rand(shape, generator=generator, dtype=dtype, device=device) < z).to(dtype)


def scoped_shape(scope: Scope, T: int, B: int, H: int) -> tuple[int, ...]:
    """The shape of a mask on (T, B, H) activations: step (T, B, H), sequence (B, H)."""
    if scope is Scope.STEP:
        return (T, B, H)
    if scope is Scope.SEQUENCE:
        return (B, H)
    raise ValueError(f"scope {scope.value!r} has no per-activation shape; sample the whole tensor's mask instead")


def site_mask(
    placement: Placement,
    site: Site,
    T: int,
    B: int,
    H: int,
    generator: torch.Generator,
    *,
    training: bool,
    dtype=torch.float32,
    device=None,
) -> torch.Tensor | None:
    """The mask a placement puts on one (T, B, H) site, or None where it puts none.

    Dropout sites hold 0 or 1/(1-p) in training, except the cell site (0 or 1,
    ``UNSCALED_SITES``), and give None at evaluation (the identity); zoneout
    sites give the keep probability at evaluation (the expectation), in
    sequence shape.
    """
    if not placement.active(site):
        return None
    sm = placement.sites[site]
    if site in ZONEOUT_SITES:
        scope = sm.scope if training else Scope.SEQUENCE
        return zoneout_mask(scoped_shape(scope, T, B, H), sm.rate, generator, training=training, dtype=dtype, device=device)
    if not training:
        return None
    sample = keep_mask if site in UNSCALED_SITES else dropout_mask
    return sample(scoped_shape(sm.scope, T, B, H), sm.rate, generator, dtype=dtype, device=device)


def describe(placement: Placement) -> list[dict[str, str]]:
    """One row per site, for reports and ``--help`` listings."""
    return [
        {"site": site.value, "rate": f"{sm.rate:g}", "scope": sm.scope.value}
        for site, sm in placement.sites.items()
        if sm.rate > 0
    ]


def dose(spec: str | Placement) -> float | None:
    """The one drop rate a placement applies at every active site (0.0 for ``none``), or None when its
    sites drop at different rates (``zoneout:zc=0.25,zh=0.025``): the x of a dose-response figure."""
    placement = parse_placement(spec)
    rates = {round(m.rate, 12) for m in placement.sites.values() if m.rate > 0}
    if not rates:
        return 0.0
    return rates.pop() if len(rates) == 1 else None


def memory_reference(spec: str | Placement) -> tuple[str, str] | None:
    """The controlled contrast for a placement's memory cost: (reference spec, note), or None for ``none``.

    A placement that adds a recurrent mechanism (a mask on h, g, c, zoneout or DropConnect on W_hh) to
    non-recurrent dropout is compared with ``zaremba`` at the same non-recurrent rate, so the difference is
    what the recurrent mechanism costs; ``zaremba`` itself (and any placement with only non-recurrent masks)
    is compared with ``none``. The note says where the contrast is not exact: non-recurrent masks tied per
    sequence (variational, weight_drop) or an embedding mask, where zaremba's masks are per step.
    """
    placement = parse_placement(spec)
    if placement.name == "none":
        return None
    recurrent = any(placement.active(site) for site in (*RECURRENT_SITES, Site.WEIGHT))
    if not recurrent:
        return "none", ""
    rate = placement.rate(Site.INPUT)
    if rate == 0:
        return "none", "it has no non-recurrent dropout, so its contrast is with none"
    notes = []
    tied = [s.value for s in (Site.INPUT, Site.OUTPUT) if placement.active(s) and placement.sites[s].scope != Scope.STEP]
    if tied:
        notes.append(f"its {' and '.join(tied)} masks are tied per sequence, zaremba's are per step")
    if placement.active(Site.EMBEDDING):
        notes.append("it also drops embeddings, which zaremba does not")
    if placement.rate(Site.OUTPUT) != rate:
        notes.append(f"its output rate {placement.rate(Site.OUTPUT):g} differs from its input rate {rate:g}")
    return parse_placement(f"zaremba:p={rate:g}").spec, "; ".join(notes)


def readable(label) -> str:
    """How prose names a placement: its name and rate (``variational:p=0.3,rec=0.3`` -> "variational,
    p = 0.3"; rates that differ are listed, "zoneout, p = 0.3, zc = 0.3, zh = 0.025"). Tables and data keep
    the canonical spec; a label that is not a spec is returned as it is."""
    try:
        placement = parse_placement(str(label))
    except PlacementError:
        return str(label)
    rate = dose(placement)
    text = placement.name
    if rate is not None and rate > 0:
        text += f", p = {rate:g}"
    elif rate is None:
        text += ", " + ", ".join(f"{k} = {v:g}" for k, v in placement.params.items()
                                 if isinstance(v, float) and v > 0)
    d = placement.definition
    if d.scope_choice and placement.params.get("scope") != _default_scope(d).value:
        text += f", {placement.params['scope']} masks"
    return text
