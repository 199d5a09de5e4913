"""Transfer: each placement's verdicts on real text beside its verdicts in the synthetic study.

For each placement tested in both studies (matched by canonical spec, else by registry name), the table
sets its regularisation verdict (test perplexity against none) and its memory verdict here (the loss
increase when the context beyond the study's distance is replaced, against the memory reference) beside
the synthetic study's (test perplexity; copy log-probability at the longest learned lag). Verdicts that
are not settled (``probe.analysis.verdicts``) say so; a disagreement is one where both are settled and
differ, and the headline names those.
"""

from __future__ import annotations

import pandas as pd

from probe.analysis.compare import reference_label
from probe.placements import placement_name, readable

HEADERS = ["placement", "regularisation here", "regularisation, synthetic", "memory here", "memory, synthetic",
           "agree"]


def _verdict(tests: pd.DataFrame, metric: str, placement: str | None) -> tuple[str, bool] | None:
    if placement is None:
        return None
    rows = tests[(tests["metric"] == metric) & (tests["placement"] == placement)]
    if rows.empty:
        return None
    r = rows.iloc[0]
    return str(r["verdict"]), bool(r["settled"])


def _text(v: tuple[str, bool] | None) -> str:
    if v is None:
        return "not tested"
    return v[0] if v[1] else f"{v[0]} (not settled)"


def _agree(*pairs) -> str:
    """"yes" or "no" over the (here, there) pairs in which both verdicts are settled; "—" where none is."""
    settled = [(a, b) for a, b in pairs if a is not None and b is not None and a[1] and b[1]]
    if not settled:
        return "—"
    return "yes" if all(a[0] == b[0] for a, b in settled) else "no"


def transfer_table(here: pd.DataFrame, synthetic: pd.DataFrame, *, memory_here: str, memory_synthetic: str | None,
                   synthetic_name: str) -> dict:
    """{"title", "headers", "rows", "caption", "disagree": [placement names]} for the report's tables."""
    placements = [p for p in dict.fromkeys(here["placement"]) if p != "none"]
    rows, disagree = [], []
    for p in placements:
        labels = list(dict.fromkeys(synthetic["placement"]))
        q = reference_label(labels, p) or reference_label(labels, placement_name(p) or p)
        fit = (_verdict(here, "test_ppl", p), _verdict(synthetic, "test_ppl", q))
        memory = (_verdict(here, memory_here, p), _verdict(synthetic, memory_synthetic, q) if memory_synthetic else None)
        agree = _agree(fit, memory)
        if agree == "no":
            disagree.append(readable(p))
        rows.append([readable(p), _text(fit[0]), _text(fit[1]), _text(memory[0]), _text(memory[1]), agree])
    caption = (f"Each placement's verdicts here beside those of the synthetic study ({synthetic_name}): "
               f"regularisation is test perplexity against none in both; memory is, here, the loss increase when "
               f"the context beyond the study's distance is replaced and, there, the planted copy's "
               f"log-probability at the longest learned lag, each against the placement's memory reference. "
               f"agree: both studies' settled verdicts are the same (— where no pair of settled verdicts exists).")
    return {"title": "Transfer: real text beside the synthetic language", "headers": HEADERS, "rows": rows,
            "caption": caption, "disagree": disagree}
