"""probe.analysis.capacity on fabricated tables with a known answer: interpolation on log size, its bootstrap
interval, and the "beyond" rule (never extrapolated)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probe.analysis.capacity import ABOVE, BELOW, agreement, crossing, equivalent_size, parameter_count

SIZES = [16, 32, 64, 128]


def ladder(noise: float = 0.0, seeds: int = 6, seed: int = 0) -> dict[float, np.ndarray]:
    """A measure exactly 10 - log2(size) on average (lower with size, as perplexity), plus seed noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in SIZES:
        e = rng.normal(0, noise, seeds)
        out[float(s)] = 10 - math.log2(s) + e - e.mean()  # the mean is exact
    return out


def test_the_crossing_is_linear_in_log_size():
    sizes = np.array(SIZES, dtype=float)
    means = np.array([10 - math.log2(s) for s in SIZES])
    size, beyond = crossing(sizes, means, 10 - math.log2(45.0))
    assert beyond == "" and size == pytest.approx(45.0)
    assert crossing(sizes, means, 10 - math.log2(16))[0] == pytest.approx(16)  # an end of the ladder is inside


def test_a_model_between_sizes_gets_that_size_with_an_interval_around_it():
    values = np.full(6, 10 - math.log2(45.0)) + np.linspace(-0.05, 0.05, 6)
    eq = equivalent_size(ladder(noise=0.1), values, n_boot=1000)
    assert eq.beyond == "" and eq.size == pytest.approx(45.0, rel=1e-6)
    assert eq.low < 45.0 < eq.high and eq.high / eq.low < 1.5
    assert eq.n == 6


def test_no_noise_gives_a_zero_width_interval():
    eq = equivalent_size(ladder(), np.full(6, 10 - math.log2(24.0)), n_boot=200)
    assert eq.size == pytest.approx(24.0) and eq.low == pytest.approx(24.0) and eq.high == pytest.approx(24.0)


@pytest.mark.parametrize("value, side", [(10 - math.log2(8.0), BELOW), (10 - math.log2(512.0), ABOVE)])
def test_a_mean_outside_the_ladder_is_beyond_never_extrapolated(value, side):
    eq = equivalent_size(ladder(noise=0.01), np.full(6, value), n_boot=200)
    assert eq.beyond == side and math.isnan(eq.size)
    assert "beyond the ladder" in eq.text
    # Rising measures (recall grows with size) put the same sides the other way round.
    rising = {s: -v for s, v in ladder(noise=0.01).items()}
    assert equivalent_size(rising, np.full(6, -value), n_boot=50).beyond == side


def test_resamples_beyond_the_ladder_are_counted():
    near_top = np.full(6, 10 - math.log2(120.0)) + np.linspace(-0.3, 0.3, 6)
    eq = equivalent_size(ladder(noise=0.3), near_top, n_boot=500)
    assert eq.beyond == "" and 0 < eq.beyond_share < 1


def test_agreement_compares_intervals_and_names_what_is_beyond():
    a = equivalent_size(ladder(noise=0.1), np.full(6, 10 - math.log2(30.0)) + np.linspace(-0.05, 0.05, 6), n_boot=300)
    b = equivalent_size(ladder(noise=0.1), np.full(6, 10 - math.log2(100.0)) + np.linspace(-0.05, 0.05, 6), n_boot=300)
    far = equivalent_size(ladder(noise=0.1), np.full(6, 20.0), n_boot=50)
    assert agreement({"x": a, "y": a})[0] is True
    ok, why = agreement({"test perplexity": a, "recall": b})
    assert ok is False and "do not overlap" in why
    ok, why = agreement({"test perplexity": a, "recall": far})
    assert ok is False and "recall" in why and "beyond" in why


def test_parameter_counts_match_the_model():
    from probe.model.language_model import LanguageModel, ModelConfig

    for hidden in (16, 96):
        model = LanguageModel(ModelConfig(vocab_size=22, emb_size=hidden, hidden_size=hidden, num_layers=2))
        assert parameter_count(22, hidden, hidden, 2) == sum(p.numel() for p in model.parameters())


def test_the_capacity_report_renders_equivalent_sizes_from_a_tiny_ladder(tmp_path, monkeypatch):
    import dataclasses
    import json

    from studies import memory_decay

    smoke = memory_decay.PRESETS["smoke"]
    plan = dataclasses.replace(smoke.corpora[0], measure=dataclasses.replace(smoke.corpora[0].measure,
                                                                             measures=("recall",)))
    size = plan.run["hidden_size"]
    ladder = tuple(("none", (("hidden_size", h), ("emb_size", h))) for h in (8, 16, size, 48))
    preset = dataclasses.replace(memory_decay.PRESETS["capacity"], corpora=(plan,), seeds=2,
                                 variants=ladder + (("zaremba:p=0.25", ()), ("naive:p=0.25,rec=0.25", ())))
    monkeypatch.setitem(memory_decay.PRESETS, "capacity", preset)
    code = memory_decay.main(["--preset", "capacity", "--out", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
                              "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "memory_decay_capacity.json").read_text())
    assert any("acts like a model without dropout of" in s for s in report["headline"])
    html = (tmp_path / "memory_decay_capacity.html").read_text()
    assert "Equivalent size without dropout" in html and "The ladder without dropout" in html
    assert 'id="fig-capacity"' in html and "<svg" in html
