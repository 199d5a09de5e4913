"""probe.placements: the registry, the spec grammar, and the masks each placement samples.

Mask tests go through both entry points: the samplers of probe.placements
(``dropout_mask``, ``keep_mask``, ``zoneout_mask``, ``site_mask``) and
``LanguageModel.sample_masks``, which is what training uses. Sizes are chosen
pairwise distinct (T, B, H, emb, vocab) so a mask on the wrong axis has the
wrong shape.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels import MASK_NAMES, lstm_layer
from kernels.reference import lstm_layer_loop
from probe.model.language_model import LanguageModel, ModelConfig
from probe.placements import (
    PLACEMENT_NAMES,
    REGISTRY,
    PlacementError,
    Scope,
    Site,
    UNSCALED_SITES,
    dropout_mask,
    keep_mask,
    parse_placement,
    site_mask,
    zoneout_mask,
)

T, B, H, EMB, VOCAB = 6, 4, 5, 7, 13

# The placement table (each placement's sites and scopes by default, as probe.placements documents them).
DESIGN_TABLE = {
    "none": {},
    "zaremba": {Site.INPUT: Scope.STEP, Site.OUTPUT: Scope.STEP},
    "naive": {Site.INPUT: Scope.STEP, Site.OUTPUT: Scope.STEP, Site.RECURRENT: Scope.STEP},
    "variational": {Site.INPUT: Scope.SEQUENCE, Site.OUTPUT: Scope.SEQUENCE, Site.RECURRENT: Scope.SEQUENCE},
    "semeniuta": {Site.INPUT: Scope.STEP, Site.OUTPUT: Scope.STEP, Site.CELL_UPDATE: Scope.STEP},
    "zoneout": {
        Site.INPUT: Scope.STEP,
        Site.OUTPUT: Scope.STEP,
        Site.ZONEOUT_C: Scope.STEP,
        Site.ZONEOUT_H: Scope.STEP,
    },
    "weight_drop": {Site.INPUT: Scope.SEQUENCE, Site.OUTPUT: Scope.SEQUENCE, Site.WEIGHT: Scope.BATCH},
    "rnndrop": {Site.INPUT: Scope.STEP, Site.OUTPUT: Scope.STEP, Site.CELL: Scope.SEQUENCE},
}

# Every placement with every optional rate switched on, so every site it knows is active.
ALL_ON = {
    "none": "none",
    "zaremba": "zaremba:p=0.5",
    "naive": "naive:p=0.5,rec=0.5",
    "variational": "variational:p=0.5,rec=0.3,emb=0.2",
    "semeniuta": "semeniuta:p=0.5,rec=0.25",
    "zoneout": "zoneout:p=0.5,zc=0.25,zh=0.025",
    "weight_drop": "weight_drop:p=0.4,w=0.5,emb=0.1",
    "rnndrop": "rnndrop:p=0.5,cell=0.25",
}

# The RecurrentMasks field each recurrent site must land in.
RECURRENT_FIELD = {
    Site.RECURRENT: "recurrent",
    Site.CELL_UPDATE: "cell_update",
    Site.CELL: "cell",
    Site.ZONEOUT_H: "zoneout_h",
    Site.ZONEOUT_C: "zoneout_c",
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_model(spec: str, *, num_layers: int = 2, dtype=torch.float32, backend: str = "auto") -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, emb_size=EMB, hidden_size=H, num_layers=num_layers, placement=spec,
                         backend=backend)
    return LanguageModel(config).to(dtype)


def all_masks(masks) -> list[torch.Tensor | None]:
    """Every mask of a ModelMasks in a fixed order (None where a site has none)."""
    out = [masks.embedding, masks.output]
    for layer in masks.layers:
        out += [layer.input, layer.weight, *layer.recurrent]
    return out


def assert_dropout_values(mask: torch.Tensor, p: float) -> None:
    """Every entry is exactly 0 or 1/(1-p)."""
    scale = torch.tensor(1.0 / (1.0 - p), dtype=mask.dtype)
    assert bool(((mask == 0) | (mask == scale)).all()), f"values {mask.unique().tolist()} are not 0 or 1/(1-{p})"


def assert_keep_values(mask: torch.Tensor) -> None:
    """Every entry is exactly 0 or 1 (the cell site: no inverted scaling)."""
    assert bool(((mask == 0) | (mask == 1)).all()), f"values {mask.unique().tolist()} are not 0 or 1"


def assert_site_values(mask: torch.Tensor, site: Site, p: float) -> None:
    """The values a training mask of ``site`` at rate ``p`` may hold."""
    if site in (Site.ZONEOUT_C, Site.ZONEOUT_H) or site in UNSCALED_SITES:
        assert_keep_values(mask)
    else:
        assert_dropout_values(mask, p)


# --- the registry ---------------------------------------------------------


def test_registry_holds_exactly_the_designed_placements():
    assert set(PLACEMENT_NAMES) == set(DESIGN_TABLE)
    for d in REGISTRY.values():
        assert d.citation and d.description


@pytest.mark.parametrize("name", PLACEMENT_NAMES)
def test_every_placement_parses_by_name(name):
    placement = parse_placement(name)
    assert placement.name == name
    assert placement.definition is REGISTRY[name]
    assert dict(placement.params) == {**REGISTRY[name].defaults, **({"scope": "step"} if name == "semeniuta" else {})}


@pytest.mark.parametrize("name", PLACEMENT_NAMES)
def test_sites_and_scopes_follow_the_design_table(name):
    placement = parse_placement(ALL_ON[name])
    expected = dict(DESIGN_TABLE[name])
    if name in ("variational", "weight_drop"):
        expected[Site.EMBEDDING] = Scope.BATCH  # optional word-type dropout, one mask per forward pass
    active = {site: sm.scope for site, sm in placement.sites.items() if placement.active(site)}
    assert active == expected


def test_default_rates_are_the_cited_ones():
    assert parse_placement("zaremba").rate(Site.INPUT) == 0.5
    zoneout = parse_placement("zoneout")  # Krueger et al.: cells 0.25, hidden 0.025
    assert zoneout.rate(Site.ZONEOUT_C) == 0.25 and zoneout.rate(Site.ZONEOUT_H) == 0.025
    assert not parse_placement("variational").active(Site.EMBEDDING)  # embedding dropout is opt-in
    assert parse_placement("weight_drop").rate(Site.WEIGHT) == 0.5
    assert parse_placement("none").sites == {}


# --- spec grammar ---------------------------------------------------------


def test_variational_spec_sets_input_output_and_recurrent_rates():
    placement = parse_placement("variational:p=0.5,rec=0.3")
    assert placement.rate(Site.INPUT) == 0.5 and placement.rate(Site.OUTPUT) == 0.5
    assert placement.rate(Site.RECURRENT) == 0.3
    assert placement.rate(Site.EMBEDDING) == 0.0 and not placement.active(Site.EMBEDDING)


def test_zoneout_spec_sets_cell_and_hidden_rates_separately():
    placement = parse_placement("zoneout:zc=0.25,zh=0.025")
    assert placement.rate(Site.ZONEOUT_C) == 0.25
    assert placement.rate(Site.ZONEOUT_H) == 0.025
    assert placement.rate(Site.INPUT) == 0.5  # untouched keys keep their defaults


def test_semeniuta_scope_key_switches_the_cell_update_scope_only():
    step, sequence = parse_placement("semeniuta"), parse_placement("semeniuta:scope=sequence")
    assert step.sites[Site.CELL_UPDATE].scope is Scope.STEP
    assert sequence.sites[Site.CELL_UPDATE].scope is Scope.SEQUENCE
    assert sequence.sites[Site.INPUT].scope is Scope.STEP and sequence.sites[Site.OUTPUT].scope is Scope.STEP
    assert parse_placement("semeniuta:scope=step").sites[Site.CELL_UPDATE].scope is Scope.STEP


def test_a_rate_of_zero_switches_a_site_off():
    placement = parse_placement("naive:rec=0")
    assert not placement.active(Site.RECURRENT) and placement.active(Site.INPUT)
    assert site_mask(placement, Site.RECURRENT, T, B, H, gen(), training=True) is None


@pytest.mark.parametrize(
    "spec",
    [*PLACEMENT_NAMES, "variational:p=0.5,rec=0.3", "zoneout:zc=0.25,zh=0.025", "semeniuta:scope=sequence",
     "weight_drop:w=0.6,emb=0.1", "rnndrop:cell=0.125,p=0.3", "variational:p=0.1234567890123"],
)
def test_canonical_spec_round_trips(spec):
    placement = parse_placement(spec)
    again = parse_placement(placement.spec)
    assert again == placement
    assert again.spec == placement.spec == str(placement)
    # Canonical: every parameter spelled out, so the spec alone fixes the placement.
    for key in REGISTRY[placement.name].keys:
        assert f"{key}=" in placement.spec


def test_parse_placement_accepts_a_parsed_placement():
    placement = parse_placement("variational:p=0.2")
    assert parse_placement(placement) is placement


# --- errors list what is valid ------------------------------------------------


def listed_keys(message: str) -> set[str]:
    assert "valid keys:" in message, message
    return set(message.split("valid keys:")[1].strip().split(", "))


def test_unknown_name_lists_every_valid_name():
    with pytest.raises(PlacementError) as err:
        parse_placement("dropconnect:p=0.5")
    message = str(err.value)
    assert "'dropconnect'" in message
    for name in PLACEMENT_NAMES:
        assert name in message


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_spec_lists_every_valid_name(spec):
    with pytest.raises(PlacementError) as err:
        parse_placement(spec)
    for name in PLACEMENT_NAMES:
        assert name in str(err.value)


def test_unknown_key_lists_the_placements_valid_keys():
    with pytest.raises(PlacementError) as err:
        parse_placement("variational:p=0.5,dropout=0.3")
    message = str(err.value)
    assert "'dropout'" in message and "'variational'" in message
    assert listed_keys(message) == {"p", "rec", "emb"}


def test_scope_is_a_key_only_where_a_placement_offers_the_choice():
    with pytest.raises(PlacementError) as err:
        parse_placement("zaremba:scope=sequence")
    assert "'scope'" in str(err.value) and "valid keys: p" in str(err.value)
    with pytest.raises(PlacementError) as err:
        parse_placement("none:p=0.5")
    assert "takes no parameters" in str(err.value)


@pytest.mark.parametrize("bad", ["1.0", "1", "1.5", "-0.1", "-1e-9", "nan", "inf"])
def test_rates_outside_zero_one_are_rejected_with_the_valid_range(bad):
    with pytest.raises(PlacementError) as err:
        parse_placement(f"variational:rec={bad}")
    assert "[0, 1)" in str(err.value) and "rec" in str(err.value)


@pytest.mark.parametrize("bad", ["abc", "0.5x", "half", "1/2"])
def test_non_numeric_rate_is_rejected_with_the_valid_range(bad):
    with pytest.raises(PlacementError) as err:
        parse_placement(f"zoneout:zc={bad}")
    message = str(err.value)
    assert "not a number" in message and repr(bad) in message and "[0, 1)" in message


@pytest.mark.parametrize("item", ["p", "p=", "=0.5", "p 0.5"])
def test_malformed_item_names_the_expected_form_and_valid_keys(item):
    with pytest.raises(PlacementError) as err:
        parse_placement(f"variational:rec=0.3,{item}")
    message = str(err.value)
    assert repr(item) in message and "key=value" in message
    assert listed_keys(message) == {"p", "rec", "emb"}


def test_bad_scope_value_lists_the_valid_scopes():
    with pytest.raises(PlacementError) as err:
        parse_placement("semeniuta:scope=batch")
    message = str(err.value)
    assert "'batch'" in message and "step" in message and "sequence" in message


def test_placement_errors_are_value_errors():
    assert issubclass(PlacementError, ValueError)


# --- the samplers ---------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.65])
def test_dropout_mask_values_are_zero_or_inverse_keep_probability(p):
    mask = dropout_mask((50, 40), p, gen())
    assert mask.shape == (50, 40) and mask.dtype == torch.float32
    assert_dropout_values(mask, p)
    assert (mask == 0).any() and (mask > 0).any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.65])
def test_dropout_mask_drops_a_fraction_p_and_has_mean_one(p):
    n = 200_000
    mask = dropout_mask((n,), p, gen(1), dtype=torch.float64)
    dropped = (mask == 0).double().mean().item()
    # Binomial standard errors: of the dropped fraction, and of the mean of 0 / (1/(1-p)) values.
    se_fraction = math.sqrt(p * (1 - p) / n)
    se_mean = math.sqrt(p / ((1 - p) * n))
    assert abs(dropped - p) < 5 * se_fraction
    assert abs(mask.mean().item() - 1.0) < 5 * se_mean


@pytest.mark.parametrize("z", [0.025, 0.25, 0.5])
def test_zoneout_training_mask_keeps_with_probability_z(z):
    n = 200_000
    mask = zoneout_mask((n,), z, gen(2), training=True, dtype=torch.float64)
    assert bool(((mask == 0) | (mask == 1)).all())
    assert abs(mask.mean().item() - z) < 5 * math.sqrt(z * (1 - z) / n)


@pytest.mark.parametrize("z", [0.025, 0.25])
def test_zoneout_evaluation_mask_is_z_everywhere(z):
    mask = zoneout_mask((B, H), z, gen(), training=False)
    assert mask.shape == (B, H)
    assert bool((mask == torch.tensor(z, dtype=mask.dtype)).all())


def test_samplers_honour_dtype():
    assert dropout_mask((3, 4), 0.5, gen(), dtype=torch.float64).dtype == torch.float64
    assert zoneout_mask((3, 4), 0.5, gen(), training=True, dtype=torch.float64).dtype == torch.float64


def _active_site_cases():
    for name in PLACEMENT_NAMES:
        placement = parse_placement(ALL_ON[name])
        for site, sm in placement.sites.items():
            if placement.active(site) and site not in (Site.EMBEDDING, Site.WEIGHT):
                yield pytest.param(ALL_ON[name], site, id=f"{name}-{site.value}")


@pytest.mark.parametrize("spec,site", list(_active_site_cases()))
def test_site_mask_shape_follows_the_scope(spec, site):
    placement = parse_placement(spec)
    mask = site_mask(placement, site, T, B, H, gen(), training=True)
    expected = {Scope.STEP: (T, B, H), Scope.SEQUENCE: (B, H)}[placement.sites[site].scope]
    assert tuple(mask.shape) == expected
    assert_site_values(mask, site, placement.rate(site))


@pytest.mark.parametrize("spec,site", list(_active_site_cases()))
def test_site_mask_at_evaluation_is_identity_or_zoneout_expectation(spec, site):
    placement = parse_placement(spec)
    mask = site_mask(placement, site, T, B, H, gen(), training=False)
    if site in (Site.ZONEOUT_C, Site.ZONEOUT_H):
        assert tuple(mask.shape) == (B, H)
        assert bool((mask == torch.tensor(placement.rate(site))).all())
    else:
        assert mask is None


def test_site_mask_is_none_for_sites_a_placement_does_not_use():
    placement = parse_placement("zaremba")
    for site in (Site.RECURRENT, Site.CELL_UPDATE, Site.CELL, Site.ZONEOUT_C, Site.ZONEOUT_H):
        assert site_mask(placement, site, T, B, H, gen(), training=True) is None


def test_sequence_site_masks_differ_across_batch_rows():
    mask = site_mask(parse_placement("variational:rec=0.5"), Site.RECURRENT, T, 8, 64, gen(), training=True)
    assert mask.shape == (8, 64)
    assert all(not torch.equal(mask[0], mask[b]) for b in range(1, 8))


def test_step_site_masks_differ_between_steps():
    mask = site_mask(parse_placement("naive:rec=0.5"), Site.RECURRENT, T, B, 64, gen(), training=True)
    assert all(not torch.equal(mask[0], mask[t]) for t in range(1, T))


# --- masks through LanguageModel.sample_masks -------------------------------


@pytest.mark.parametrize("name", PLACEMENT_NAMES)
def test_model_masks_have_the_scope_shape_of_each_site(name):
    model = make_model(ALL_ON[name])
    placement = model.placement
    masks = model.sample_masks(T, B, gen(), training=True)
    shape = {Scope.STEP: lambda h: (T, B, h), Scope.SEQUENCE: lambda h: (B, h)}

    def expected(site, h):
        return shape[placement.sites[site].scope](h) if placement.active(site) else None

    def got(mask):
        return None if mask is None else tuple(mask.shape)

    assert got(masks.output) == expected(Site.OUTPUT, H)
    assert got(masks.embedding) == ((VOCAB,) if placement.active(Site.EMBEDDING) else None)
    assert len(masks.layers) == 2
    for layer, h_in in zip(masks.layers, (EMB, H)):
        assert got(layer.input) == expected(Site.INPUT, h_in)
        assert got(layer.weight) == ((4 * H, H) if placement.active(Site.WEIGHT) else None)
        for site, field in RECURRENT_FIELD.items():
            assert got(getattr(layer.recurrent, field)) == expected(site, H), field
    for mask in all_masks(masks):
        assert mask is None or mask.dtype == torch.float32


@pytest.mark.parametrize(
    "spec,site,field",
    [
        ("naive", Site.RECURRENT, "recurrent"),
        ("variational", Site.RECURRENT, "recurrent"),
        ("semeniuta", Site.CELL_UPDATE, "cell_update"),
        ("semeniuta:scope=sequence", Site.CELL_UPDATE, "cell_update"),
        ("rnndrop", Site.CELL, "cell"),
    ],
)
def test_recurrent_dropout_masks_land_in_their_own_field(spec, site, field):
    model = make_model(spec)
    for layer in model.sample_masks(T, B, gen(), training=True).layers:
        present = layer.recurrent.present()
        assert present == (field,), f"{spec}: masks in {present}"
        assert_site_values(getattr(layer.recurrent, field), site, model.placement.rate(site))


# --- rnndrop: the cell mask is 0/1 ------------------------------------------


def test_only_the_cell_site_is_unscaled():
    assert UNSCALED_SITES == {Site.CELL}


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keep_mask_holds_zero_or_one_and_keeps_a_fraction_one_minus_p(p):
    n = 200_000
    mask = keep_mask((n,), p, gen(1), dtype=torch.float64)
    assert mask.dtype == torch.float64 and set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(mask.mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_rnndrop_cell_mask_is_zero_or_one_with_mean_one_minus_p(p):
    """Inverted scaling on c_t would compound through c_t = f * c_{t-1} + ...: the cell mask is not rescaled."""
    placement = parse_placement(f"rnndrop:p=0.5,cell={p}")
    b, h = 400, 500
    mask = site_mask(placement, Site.CELL, T, b, h, gen(3), training=True, dtype=torch.float64)
    assert mask.shape == (b, h)  # one mask per sequence
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(mask.mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / mask.numel())
    assert site_mask(placement, Site.CELL, T, b, h, gen(3), training=False) is None


def test_rnndrop_cell_mask_through_the_model_is_zero_or_one_while_input_and_output_keep_inverted_scaling():
    model = make_model("rnndrop:p=0.5,cell=0.25")
    masks = model.sample_masks(T, B, gen(7), training=True)
    assert_dropout_values(masks.output, 0.5)
    assert (masks.output == 2.0).any()
    for layer in masks.layers:
        assert_dropout_values(layer.input, 0.5)
        assert (layer.input == 2.0).any()
        assert layer.recurrent.present() == ("cell",)
        assert_keep_values(layer.recurrent.cell)
        assert (layer.recurrent.cell == 0).any() and (layer.recurrent.cell == 1).any()
    # The other recurrent dropout sites keep inverted scaling.
    for spec, site, field, p in [("naive:rec=0.5", Site.RECURRENT, "recurrent", 0.5),
                                 ("semeniuta:rec=0.25", Site.CELL_UPDATE, "cell_update", 0.25)]:
        for layer in make_model(spec).sample_masks(T, B, gen(7), training=True).layers:
            mask = getattr(layer.recurrent, field)
            assert_dropout_values(mask, p)
            assert (mask == 1 / (1 - p)).any(), spec


def test_rnndrop_evaluation_is_the_identity_and_a_kept_cell_is_not_amplified():
    # Both on the masked recurrence (a mask-free "auto" layer would run torch's fused LSTM, equal only to rounding).
    model = make_model("rnndrop:p=0,cell=0.5", dtype=torch.float64, backend="reference")
    plain = make_model("none", dtype=torch.float64, backend="reference")
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(VOCAB, (T, B), generator=gen(1))
    assert all(m is None for m in all_masks(model.sample_masks(T, B, gen(), training=False)))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids)[0], plain.eval()(ids)[0])
        # A training mask that keeps every cell unit computes exactly what evaluation computes.
        masks = model.sample_masks(T, B, gen(), training=True)
        for layer in masks.layers:
            layer.recurrent = layer.recurrent._replace(cell=torch.ones_like(layer.recurrent.cell))
        assert torch.equal(model(ids, masks=masks)[0], plain(ids)[0])


def test_zoneout_masks_land_in_their_own_fields():
    # zc and zh differ, so swapped fields would show in the evaluation masks (z everywhere).
    model = make_model("zoneout:zc=0.25,zh=0.025")
    for layer in model.sample_masks(T, B, gen(), training=False).layers:
        assert layer.recurrent.present() == ("zoneout_h", "zoneout_c")
        assert bool((layer.recurrent.zoneout_c == 0.25).all())
        assert bool((layer.recurrent.zoneout_h == torch.tensor(0.025)).all())
        assert layer.recurrent.zoneout_c.shape == (B, H)
    for layer in model.sample_masks(T, B, gen(), training=True).layers:
        for mask in (layer.recurrent.zoneout_c, layer.recurrent.zoneout_h):
            assert mask.shape == (T, B, H) and bool(((mask == 0) | (mask == 1)).all())
        # Keep rates differ tenfold; 2*6*4*5 = 240 draws per layer tell them apart.
        assert layer.recurrent.zoneout_c.mean() > layer.recurrent.zoneout_h.mean()


def test_sequence_masks_are_constant_over_time(monkeypatch):
    """Variational masks are tied across time, not across the batch (a pitfall others hit: masks tied across the batch instead of across time)."""
    x = _layer0_input(monkeypatch, "variational:p=0.5,rec=0.3", T=7, B=5)
    for t in range(1, x.shape[0]):
        assert torch.equal(x[t], x[0])
    rows = [x[0, b] for b in range(x.shape[1])]
    assert all(not torch.equal(rows[0], r) for r in rows[1:]), "one mask shared by every batch row"
    assert (x == 0).any()


def test_step_masks_differ_between_steps(monkeypatch):
    x = _layer0_input(monkeypatch, "zaremba:p=0.5", T=7, B=5)
    assert all(not torch.equal(x[0], x[t]) for t in range(1, x.shape[0]))


def _layer0_input(monkeypatch, spec: str, T: int, B: int) -> torch.Tensor:
    """The (masked) input of layer 0 in a training forward over one repeated token."""
    import probe.model.language_model

    seen = []
    real_layer = probe.model.language_model.lstm_layer_from_input

    def spy(x, *args, **kwargs):
        seen.append(x.detach().clone())
        return real_layer(x, *args, **kwargs)

    monkeypatch.setattr(probe.model.language_model, "lstm_layer_from_input", spy)
    model = make_model(spec).train()
    model(torch.full((T, B), 3), generator=gen())
    x = seen[0]
    assert x.shape == (T, B, EMB)
    return x


def test_recurrent_sequence_mask_is_applied_at_every_step():
    """A (B, H) recurrent mask acts exactly like the same mask repeated at every step."""
    g = gen(5)
    gx, h0, c0 = torch.randn(T, B, 4 * H, generator=g), torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    w = torch.randn(4 * H, H, generator=g)
    mask = site_mask(parse_placement("variational:rec=0.5"), Site.RECURRENT, T, B, H, gen(), training=True)
    seq = lstm_layer(gx, h0, c0, w, recurrent=mask)
    step = lstm_layer(gx, h0, c0, w, recurrent=mask.expand(T, B, H).contiguous())
    torch.testing.assert_close(seq[0], step[0], rtol=0, atol=0)


def test_weight_mask_is_one_tensor_per_layer_shared_by_batch_and_time():
    model = make_model("weight_drop:w=0.5")
    small = model.sample_masks(2, 1, gen(3), training=True)
    large = model.sample_masks(9, 6, gen(3), training=True)
    for layer in small.layers:
        assert layer.weight.shape == (4 * H, H)
        assert_dropout_values(layer.weight, 0.5)
    # Layer 0's mask is the first draw, so it does not depend on T or B at all.
    assert torch.equal(small.layers[0].weight, large.layers[0].weight)
    assert not torch.equal(small.layers[0].weight, small.layers[1].weight)


def test_embedding_mask_has_one_value_per_word_id(monkeypatch):
    import probe.model.language_model

    seen = []
    real_layer = probe.model.language_model.lstm_layer_from_input
    monkeypatch.setattr(
        probe.model.language_model, "lstm_layer_from_input",
        lambda x, *args, **kwargs: (seen.append(x.detach().clone()), real_layer(x, *args, **kwargs))[1],
    )
    model = make_model("variational:p=0,rec=0,emb=0.5")  # embedding dropout only
    masks = model.sample_masks(8, 6, gen(4), training=True)
    assert masks.embedding.shape == (VOCAB,)
    assert_dropout_values(masks.embedding, 0.5)
    assert (masks.embedding == 0).any() and (masks.embedding > 0).any()
    ids = torch.randint(VOCAB, (8, 6), generator=gen(9))
    model(ids, masks=masks)
    x, table = seen[0], model.embedding.weight.detach()
    # Every occurrence of a word id is scaled by that id's single mask value.
    torch.testing.assert_close(x, table[ids] * masks.embedding[ids].unsqueeze(-1), rtol=0, atol=0)
    dropped = masks.embedding[ids] == 0
    assert dropped.any() and bool((x[dropped] == 0).all())


@pytest.mark.parametrize("name", PLACEMENT_NAMES)
def test_same_generator_seed_gives_the_same_masks(name):
    model = make_model(ALL_ON[name])
    a = all_masks(model.sample_masks(T, B, gen(11), training=True))
    b = all_masks(model.sample_masks(T, B, gen(11), training=True))
    c = all_masks(model.sample_masks(T, B, gen(12), training=True))
    assert [m is None for m in a] == [m is None for m in b] == [m is None for m in c]
    assert all(m is None or torch.equal(m, n) for m, n in zip(a, b))
    if name != "none":
        assert any(m is not None and not torch.equal(m, n) for m, n in zip(a, c))


@pytest.mark.parametrize("name", [n for n in PLACEMENT_NAMES if n != "zoneout"])
def test_evaluation_is_the_identity(name):
    """In eval mode a placement computes exactly what the same weights compute with no dropout."""
    model = make_model(ALL_ON[name]).eval()
    plain = make_model("none").eval()
    plain.load_state_dict(model.state_dict())
    assert all(m is None for m in all_masks(model.sample_masks(T, B, gen(), training=False)))
    ids = torch.randint(VOCAB, (T, B), generator=gen(1))
    with torch.no_grad():
        first, _ = model(ids)
        second, _ = model(ids)
        baseline, _ = plain(ids)
    assert torch.equal(first, second)
    assert torch.equal(first, baseline)


def test_training_mode_is_not_the_identity():
    """The counterpart of the test above: the same comparison fails in training mode."""
    model = make_model(ALL_ON["variational"]).train()
    plain = make_model("none").train()
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(VOCAB, (T, B), generator=gen(1))
    with torch.no_grad():
        assert not torch.equal(model(ids, generator=gen())[0], plain(ids)[0])


def test_zoneout_evaluation_uses_the_expectation():
    model = make_model("zoneout:zc=0.25,zh=0.025").eval()
    masks = model.sample_masks(T, B, gen(), training=False)
    assert masks.embedding is None and masks.output is None
    for layer in masks.layers:
        assert layer.input is None and layer.weight is None
        assert layer.recurrent.recurrent is None and layer.recurrent.cell is None
        assert bool((layer.recurrent.zoneout_c == 0.25).all())
        assert bool((layer.recurrent.zoneout_h == torch.tensor(0.025)).all())
    ids = torch.randint(VOCAB, (T, B), generator=gen(1))
    with torch.no_grad():
        logits, _ = model(ids)
        again, _ = model(ids, masks=masks)
        plain = make_model("none").eval()
        plain.load_state_dict(model.state_dict())
        baseline, _ = plain(ids)
    assert torch.equal(logits, again)
    assert not torch.equal(logits, baseline)


def test_eval_masks_follow_the_model_dtype():
    model = make_model("zoneout", dtype=torch.float64)
    for mask in all_masks(model.sample_masks(T, B, gen(), training=False)):
        assert mask is None or mask.dtype == torch.float64


# --- zoneout semantics in the recurrence ----------------------------------


def _lstm_inputs(seed=0):
    g = gen(seed)
    gx = torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    w = torch.randn(4 * H, H, generator=g, dtype=torch.float64) * 0.5
    return gx, h0, c0, w


@pytest.mark.parametrize("impl", ["reference", "loop"])
def test_zoneout_h_of_all_ones_keeps_h0_forever(impl):
    gx, h0, c0, w = _lstm_inputs()
    ones = torch.ones(T, B, H, dtype=torch.float64)
    if impl == "reference":
        hs, (h_T, c_T) = lstm_layer(gx, h0, c0, w, zoneout_h=ones, backend="reference")
    else:
        from kernels import RecurrentMasks

        hs, (h_T, c_T) = lstm_layer_loop(gx, h0, c0, w, RecurrentMasks(zoneout_h=ones))
    for t in range(T):
        assert torch.equal(hs[t], h0)
    assert torch.equal(h_T, h0)
    assert not torch.equal(c_T, c0)  # the cell still moves


@pytest.mark.parametrize("impl", ["reference", "loop"])
def test_zoneout_c_of_all_ones_keeps_c0_forever(impl):
    gx, h0, c0, w = _lstm_inputs()
    ones = torch.ones(B, H, dtype=torch.float64)
    if impl == "reference":
        _, (_, c_T) = lstm_layer(gx, h0, c0, w, zoneout_c=ones, backend="reference")
    else:
        from kernels import RecurrentMasks

        _, (_, c_T) = lstm_layer_loop(gx, h0, c0, w, RecurrentMasks(zoneout_c=ones))
    assert torch.equal(c_T, c0)


@pytest.mark.parametrize("field", ["zoneout_h", "zoneout_c"])
@pytest.mark.parametrize("shape", [(B, H), (T, B, H)])
def test_zoneout_of_all_zeros_equals_no_zoneout(field, shape):
    gx, h0, c0, w = _lstm_inputs()
    zeros = torch.zeros(shape, dtype=torch.float64)
    hs, (h_T, c_T) = lstm_layer(gx, h0, c0, w, **{field: zeros})
    hs0, (h0_T, c0_T) = lstm_layer(gx, h0, c0, w)
    assert torch.equal(hs, hs0) and torch.equal(h_T, h0_T) and torch.equal(c_T, c0_T)


def test_zoneout_h_mask_keeps_exactly_the_masked_units():
    """Units with mask 1 hold their previous h; units with mask 0 take the new value."""
    gx, h0, c0, w = _lstm_inputs()
    mask = (torch.rand(T, B, H, generator=gen(3)) < 0.5).double()
    hs, _ = lstm_layer(gx, h0, c0, w, zoneout_h=mask)
    free, _ = lstm_layer(gx, h0, c0, w)
    prev = torch.cat([h0.unsqueeze(0), hs[:-1]])
    kept = mask == 1
    assert torch.equal(hs[kept], prev[kept])
    assert not torch.equal(hs[~kept], prev[~kept])
    # At step 0 the unkept units match the un-zoned run exactly (same inputs so far).
    assert torch.equal(hs[0][~kept[0]], free[0][~kept[0]])


def test_mask_names_cover_every_recurrent_site():
    assert set(MASK_NAMES) == set(RECURRENT_FIELD.values())


def test_a_key_given_twice_in_a_spec_is_an_error_naming_both_values():
    with pytest.raises(PlacementError, match=r"sets 'rec' twice \(rec=0.3, rec=0.4\)"):
        parse_placement("variational:rec=0.3,rec=0.4")


def test_placement_name_parses_specs_and_leaves_other_labels_alone():
    from probe.placements import placement_name

    assert placement_name("variational:p=0.5") == "variational"
    assert placement_name("small · zaremba:p=0.5") is None
    assert placement_name("dropout-0.2") is None
