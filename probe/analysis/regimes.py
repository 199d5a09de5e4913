"""Two halves of the question, two references, and the regimes each half is measured in.

Regularisation (test perplexity) is tested against ``none`` in the regime where ``none`` overfits;
memory cost is a controlled contrast, each placement against its memory reference
(``probe.placements.memory_reference``: ``zaremba`` at the placement's non-recurrent rate, and
``zaremba`` itself against ``none``), in the regime where that reference has learned the memory. A study
labels its rows with a ``regime`` column (``REGULARISATION``, ``MEMORY``); a study of one regime has
none (or one value), and both halves then read the same rows.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from probe.analysis.compare import TEST_COLUMNS, Metric, reference_label, test_against_reference
from probe.placements import memory_reference

REGULARISATION, MEMORY = "regularisation", "memory"
REGIMES = (REGULARISATION, MEMORY)
NO_DROPOUT = "none"
TWO_REFERENCE_COLUMNS = TEST_COLUMNS + ["regime", "reference_note"]


def has_regimes(tidy: pd.DataFrame) -> bool:
    """Whether ``tidy`` holds both regimes (else both halves of the question read all of it)."""
    return "regime" in tidy.columns and set(REGIMES) <= set(tidy["regime"].unique())


def regime_rows(tidy: pd.DataFrame, regime: str) -> pd.DataFrame:
    """The rows of one regime, or every row of a single-regime study."""
    if not has_regimes(tidy):
        return tidy
    return tidy[tidy["regime"] == regime]


def regime_label(tidy: pd.DataFrame, regime: str) -> str:
    """The regime's name for tables and sentences ("" in a single-regime study)."""
    return regime if has_regimes(tidy) else ""


def memory_references(placements: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Each placement's memory reference among ``placements``: {placement: (reference label, note)}.

    A placement whose memory reference (zaremba at its rate) was not run is compared with ``none``
    and the note says so; ``none`` itself is not tested.
    """
    labels = [str(p) for p in placements]
    out = {}
    for p in labels:
        try:
            ref = memory_reference(p)
        except ValueError:  # a label that is not a placement spec: compare it with none
            ref = (NO_DROPOUT, "")
        if ref is None:
            continue
        spec, note = ref
        label = reference_label(labels, spec)
        if label is None:
            label, note = NO_DROPOUT, f"{spec} was not run, so it is compared with none"
        if label != p and reference_label(labels, label) is not None:
            out[p] = (label, note)
    return out


def memory_reference_labels(placements: Sequence[str]) -> list[str]:
    """The memory references other placements are tested against, other than none (zaremba at each rate)."""
    refs = {ref for ref, _ in memory_references(placements).values() if ref != NO_DROPOUT}
    return sorted(refs) or [NO_DROPOUT]


def two_reference_tests(tidy: pd.DataFrame, fit_metrics: Sequence[Metric], memory_metrics: Sequence[Metric], *,
                        fit_reference: str = NO_DROPOUT, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """The study's tests: ``fit_metrics`` against none in the regularisation regime, ``memory_metrics``
    against each placement's memory reference in the memory regime; columns ``TWO_REFERENCE_COLUMNS``."""
    fit_rows, memory_rows = regime_rows(tidy, REGULARISATION), regime_rows(tidy, MEMORY)
    fit = test_against_reference(fit_rows, fit_reference, list(fit_metrics), alpha=alpha, seed=seed)
    fit["regime"], fit["reference_note"] = regime_label(tidy, REGULARISATION), ""
    refs = memory_references(list(memory_rows["placement"].unique()))
    memory = test_against_reference(memory_rows, {p: r for p, (r, _) in refs.items()}, list(memory_metrics),
                                    alpha=alpha, seed=seed)
    memory["regime"] = regime_label(tidy, MEMORY)
    memory["reference_note"] = [refs[p][1] if p in refs else "" for p in memory["placement"]]
    parts = [t for t in (fit, memory) if len(t)]
    if not parts:
        return pd.DataFrame(columns=TWO_REFERENCE_COLUMNS)
    return pd.concat(parts, ignore_index=True)[TWO_REFERENCE_COLUMNS]
