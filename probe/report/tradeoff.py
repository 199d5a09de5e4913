"""The trade-off figure: the question in one picture.

Each placement is one point: across, the regularisation it buys (how much lower its test perplexity is than
the fit reference's, in the regularisation regime); up, the memory it costs (its copy log-probability at the
longest learned lag minus its memory reference's, in the memory regime). Both come from the tests table with
their Welch intervals; a dashed interval marks a verdict that is not settled (fragile: one seed left out
changes it; or an independent replication would repeat it with probability below 90%). The best
place is the upper right: lower perplexity, no memory lost.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd

from probe.analysis.design import StudyDesign
from probe.analysis.verdicts import Verdict
from probe.placements import readable
from probe.report.plotting import RC_PARAMS, Figure, Style, new_figure, ordered_placements, placement_styles, to_svg

KEY, TITLE = "tradeoff", "Regularisation bought against memory lost"


def _row(tests: pd.DataFrame, metric: str, placement: str) -> pd.Series | None:
    rows = tests[(tests["metric"] == metric) & (tests["placement"] == placement)]
    return rows.iloc[0] if len(rows) else None


def tradeoff_figure(tests: pd.DataFrame, design: StudyDesign, lags_learned: list[int],
                    styles: dict[str, Style] | None = None, *, real_text: bool = False) -> Figure:
    """One point per placement with both intervals; a note instead where either axis was not tested."""
    fit_col, memory_col = design.tradeoff(lags_learned)
    if memory_col is None or tests.empty:
        note = ("This text has no planted copies, so memory cost has no axis here; each placement's loss increase "
                "with the distant context replaced is in the answer table and the claims." if real_text else
                "No planted lag was learned by the memory reference (or nothing was tested), so memory cost has no "
                "axis here.")
        return Figure(KEY, TITLE, "", None, note)
    fit, memory = fit_col.metric.name, memory_col.metric.name
    lag = f"{memory_col.metric.x:g}"
    caption = (f"Across: test perplexity of {readable(design.fit_reference)} minus the placement's (regularisation "
               f"regime; right is better). Up: the placement's copy log-probability above chance at lag {lag}, the "
               f"longest planted lag its memory reference learned, minus its memory reference's (memory regime; "
               f"down is memory lost). Lines are 95% Welch intervals across seeds; a filled marker is a significant "
               f"verdict on either axis, a dashed line a verdict on that axis that is not settled (fragile: one seed "
               f"left out changes it; or a replication would repeat it with probability below 90%). The dotted lines "
               f"are no difference.")
    placements = [p for p in ordered_placements(tests["placement"].unique())
                  if _row(tests, fit, p) is not None and _row(tests, memory, p) is not None]
    if not placements:
        return Figure(KEY, TITLE, caption, None, "No placement was tested on both axes.")
    styles = styles or placement_styles(placements)
    fig, axes = new_figure(1, 1, width=7.5, height=5.0)
    ax = axes[0, 0]
    with matplotlib.rc_context(RC_PARAMS):
        for p in placements:
            f, m, style = _row(tests, fit, p), _row(tests, memory, p), styles[p]
            x, y = -float(f["diff"]), float(m["diff"])
            xs, ys = sorted((-float(f["ci_low"]), -float(f["ci_high"]))), (float(m["ci_low"]), float(m["ci_high"]))
            for (a, b), row, horizontal in ((xs, f, True), (ys, m, False)):
                if np.isfinite(a) and np.isfinite(b):
                    line = ([a, b], [y, y]) if horizontal else ([x, x], [a, b])
                    ax.plot(*line, color=style.colour, lw=1.6, ls="-" if row["settled"] else "--")
            significant = any(r["verdict"] != Verdict.NOT_DISTINGUISHABLE.value for r in (f, m))
            ax.plot([x], [y], marker=style.marker, markersize=7, color=style.colour, ls="none",
                    markerfacecolor=style.colour if significant else "white", label=readable(p))
            ax.annotate(readable(p), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8,
                        color=style.colour)
        ax.axvline(0.0, color="#555555", ls=":", lw=0.9)
        ax.axhline(0.0, color="#555555", ls=":", lw=0.9)
        ax.set_xlabel(f"regularisation: test perplexity below {readable(design.fit_reference)}")
        ax.set_ylabel(f"memory: copy log-prob at lag {lag} vs memory reference (nats)")
    return Figure(KEY, TITLE, caption, to_svg(fig, KEY, f"{TITLE}. {caption}"))
