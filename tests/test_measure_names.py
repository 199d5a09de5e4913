"""probe.measure.names covers exactly the measure names that producers emit, with a direction for each."""

from __future__ import annotations

import dataclasses

import pytest

from probe.measure import names as measure_names

from probe.analysis import compare
from probe.data.registry import load_corpus
from probe.runs.cells import Cell, CellResult
from probe.runs.config import RunResult
from probe.measure import run_all
from probe.measure import NaturalCopyConfig, PerturbationConfig
from probe.model.language_model import LanguageModel
from probe.runs.cells import training_rows
from studies.memory_decay import PRESETS


@pytest.fixture(scope="module")
def emitted() -> set[str]:
    """Every measure name of a full measurement (all measures, both modes, cell probes) and of a run's rows."""
    plan = PRESETS["smoke"].corpora[0]
    corpus = load_corpus(plan.corpus)
    config = plan.run_config("variational:p=0.25,rec=0.25", 0, "cpu")
    model = LanguageModel(config.model_config(len(corpus.vocab)))
    # The natural-text measures run when configured: run_all runs every measurement here.
    measure = dataclasses.replace(plan.measure, perturbation=PerturbationConfig(distances=(1, 5), prefix=10, targets=8),
                                  natural_copies=NaturalCopyConfig(edges=(1, 2), prefix=6, per_bin=8))
    table = run_all(model, corpus, measure)
    assert {"replaced_nll_increase", "natural_copy_gain"} <= set(table["measure"])
    result = RunResult(config, "finished", valid_ppl=5.0, test_ppl=5.1, final_valid_ppl=5.2, final_test_ppl=5.3,
                       selected_epoch=2, seconds=1.0, epochs=[{"epoch": 1, "train_ppl": 6.0, "valid_ppl": 5.5}])
    rows = training_rows(CellResult(Cell(config, plan.measure), "finished", result, None, cached=False))
    return set(table["measure"]) | {r["measure"] for r in rows}


def test_every_emitted_name_is_in_the_registry(emitted):
    missing = sorted(n for n in emitted if not measure_names.known(n))
    assert not missing, f"producers emit names the registry lacks: {missing}"


def test_every_registry_name_is_emitted_by_a_producer(emitted):
    unused = sorted(set(measure_names.MEASURES) - emitted)
    assert not unused, f"registry names no producer emits (aliases to delete): {unused}"


def test_summaries_resolve_with_their_curves_direction():
    assert measure_names.lookup("influence_kl_eval_half_life").direction == measure_names.HIGHER
    assert measure_names.lookup("influence_kl_train_decay_rate").direction == measure_names.LOWER
    assert measure_names.label("influence_kl_eval_half_life") == "eval-mode influence on the prediction (KL) half-life"
    assert measure_names.unit("gradient_norm_eval_decay_rate") == "per token"
    with pytest.raises(KeyError, match="known measures"):
        measure_names.lookup("recall_accuracy_half_life_typo")


@pytest.mark.parametrize("name", ["context_nll", "position_nll", "full_context_nll", "context_ppl", "test_ppl",
                                  "influence_kl_eval_decay_rate", "probe_bits_eval_decay_rate"])
def test_losses_perplexities_and_decay_rates_are_lower_is_better(name):
    assert compare.Metric(name).better_is_higher is False


@pytest.mark.parametrize("name", ["recall_accuracy", "influence_kl", "probe_bits", "influence_kl_eval_half_life",
                                  "effective_context", "influence_kl_retained"])
def test_memory_measures_are_higher_is_better(name):
    assert compare.Metric(name).better_is_higher is True


def test_controls_have_no_direction_and_cannot_be_tested():
    for name in ("recall_accuracy_chance", "probe_bits_untrained", "probe_bits_baseline", "recall_count"):
        with pytest.raises(ValueError, match="control"):
            measure_names.higher_is_better(name)


def test_metric_descriptions_name_the_right_axis():
    assert compare.Metric("context_nll", x=10).description.endswith("at context length 10")
    assert compare.Metric("position_nll", x=5).description.endswith("at position 5")
    assert compare.Metric("recall_accuracy", x=20).description.endswith("at lag 20")
    assert measure_names.lookup("influence_hidden").label == "relative hidden-state distance"
