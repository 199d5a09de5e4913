"""Effect figures: a forest plot of differences against the reference, and dose-response panels."""

from __future__ import annotations

import textwrap

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator


from probe.analysis import inference
from probe.analysis.verdicts import Verdict
from probe.placements import PLACEMENT_NAMES, readable
from probe.report.plotting import Figure, RC_PARAMS, Style, base_name, new_figure, ordered_placements, placement_styles, to_svg
from probe.report.figures import draw_curve


# --- effects and doses ------------------------------------------------------------------


def _panel_reference(g: pd.DataFrame) -> str:
    """What a panel's differences are taken against: its one reference, or each placement's memory reference."""
    refs = list(dict.fromkeys(str(r) for r in g["reference"]))
    return readable(refs[0]) if len(refs) == 1 else "each one's memory reference"


def forest_figure(tests: pd.DataFrame, metrics: list[str], styles: dict[str, Style] | None = None) -> Figure:
    """Each placement's difference from its reference with its 95% Welch interval, one panel per metric
    (its title names the reference); filled markers where the verdict is a significant difference, a dashed
    interval where that verdict is not settled (``probe.analysis.verdicts``)."""
    key, title = "forest", "Effects against the references"
    rows = tests[tests["metric"].isin(metrics)] if len(tests) else tests
    if rows.empty:
        return Figure(key, title, "", None, "No comparisons were run.")
    caption = ("Each placement's difference from the reference its panel names (placement minus reference) with "
               "its 95% Welch–Satterthwaite interval across seeds; regularisation panels are against the model "
               "without dropout, memory panels against each placement's memory reference (zaremba at its rate; "
               "zaremba against none). Filled: a significant verdict after Holm correction; hollow: not "
               "distinguishable; dashed interval: not settled (one seed left out changes the verdict, or a "
               "replication would repeat it with probability below 90%). The dashed "
               "vertical line is no difference.")
    present = [m for m in metrics if (rows["metric"] == m).any()]
    styles = styles or placement_styles(rows["placement"].unique())
    order = ordered_placements(rows["placement"].unique())
    ncols = min(len(present), 2)  # spec labels are long: two panels a row leave room for the axes
    fig, axes = new_figure(ncols, -(-len(present) // ncols), width=11.0, height=0.34 * len(order) + 1.5)
    with matplotlib.rc_context(RC_PARAMS):
        for ax, metric in zip(axes.flat, present):
            g = rows[rows["metric"] == metric].set_index("placement")
            for i, placement in enumerate(order):
                if placement not in g.index:
                    continue
                r, style = g.loc[placement], styles[placement]
                if np.isfinite(r["ci_low"]):
                    ax.plot([r["ci_low"], r["ci_high"]], [i, i], color=style.colour, lw=2,
                            ls="-" if r["settled"] else "--")
                filled = r["verdict"] != Verdict.NOT_DISTINGUISHABLE.value
                ax.plot([r["diff"]], [i], marker=style.marker, markersize=6, color=style.colour,
                        markerfacecolor=style.colour if filled else "white")
            ax.axvline(0.0, color="#555555", ls="--", lw=0.9)
            ax.set_yticks(range(len(order)), [str(p) for p in order])
            ax.set_ylim(len(order) - 0.5, -0.5)
            first = g.iloc[0]
            better = "higher" if first["higher_is_better"] else "lower"
            ax.set_title(textwrap.fill(f"{first['label']} vs {_panel_reference(g)} ({better} is better)", 40),
                         fontsize=9.5)
            ax.set_xlabel(f"difference{' (' + first['unit'] + ')' if first['unit'] else ''}")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            if ax.get_subplotspec().colspan.start > 0:
                ax.set_yticklabels([])  # the first column names the rows
            ax.grid(axis="y", visible=False)
        for ax in list(axes.flat)[len(present):]:
            ax.set_visible(False)
    return Figure(key, title, caption, to_svg(fig, key, f"{title}. {caption}"))


def dose_figure(tidy: pd.DataFrame, panels: list[tuple[str, float | None, str, str]],
                styles: dict[str, Style] | None = None) -> Figure | None:
    """Metrics against the drop rate, one line per placement that was run at two or more rates (``none`` is
    rate 0 of every line), 95% t-intervals across seeds; None when no placement has two rates.

    ``panels``: (measure, x or None, mode or None, panel title)."""
    from probe.placements import dose

    doses = {p: dose(p) for p in tidy["placement"].unique()}
    names = pd.Series({p: base_name(p) for p, d in doses.items() if d is not None})
    lines = sorted({n for n in names if n != "none" and (names == n).sum() >= 2},
                   key=lambda n: PLACEMENT_NAMES.index(n) if n in PLACEMENT_NAMES else 99)
    if not lines:
        return None
    key, title = "dose", "Dose-response: how much of each placement a model can take"
    caption = ("Each metric against the drop rate applied at every site of the placement (rate 0: no dropout, "
               "the same runs for every line); mean and 95% t-interval across seeds.")
    zero = [p for p, d in doses.items() if d == 0.0]
    styles = styles or placement_styles(tidy["placement"].unique())
    ncols = min(len(panels), 3)
    fig, axes = new_figure(ncols, -(-len(panels) // ncols), height=3.3)
    with matplotlib.rc_context(RC_PARAMS):
        for ax, (measure, x, mode, panel_title) in zip(axes.flat, panels):
            rows = tidy[tidy["measure"] == measure]
            if x is not None:
                rows = rows[np.isclose(rows["x"].astype(float), x)]
            if mode is not None:
                rows = rows[rows["mode"] == mode]
            if "layer" in rows and len(rows) and not (rows["layer"] == -1).any():
                rows = rows[rows["layer"] == rows["layer"].max()]
            for name in lines:
                members = [p for p in names.index if names[p] == name] + zero
                sel = rows[rows["placement"].isin(members)].assign(x=lambda d: d["placement"].map(doses))
                est = inference.estimate(sel, by=("x",))
                if est.empty:
                    continue
                style = styles[next(p for p in names.index if names[p] == name)]
                draw_curve(ax, est, Style(style.colour, style.marker, "-"), name)
            ax.set_title(textwrap.fill(panel_title, 34), fontsize=9.5)
            ax.set_xlabel("drop rate")
            ax.set_xticks(sorted({d for d in doses.values() if d is not None}))  # the rates that were run
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        legend: dict[str, object] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(lab, h)
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=min(len(legend), 4),
                       fontsize=9)
    return Figure(key, title, caption, to_svg(fig, key, f"{title}. {caption}"))
