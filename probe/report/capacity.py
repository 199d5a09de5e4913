"""The capacity report's answer: each dropout model's equivalent size without dropout, per measure, as a
table, a figure (the ``none`` ladder against hidden size with each dropout model as a band) and one
sentence per model saying whether its equivalent sizes agree across measures."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd

from probe.analysis import inference
from probe.analysis.capacity import Equivalent, agreement, equivalent_size, parameter_count, per_seed
from probe.report.plotting import RC_PARAMS, Figure, new_figure, placement_styles, plain_numbers, to_svg

NO_DROPOUT = "none"


@dataclass(frozen=True)
class CapacityMeasure:
    measure: str
    x: float | None
    label: str


def capacity_measures(lags: list[int]) -> list[CapacityMeasure]:
    out = [CapacityMeasure("train_ppl_selected", None, "training perplexity"),
           CapacityMeasure("test_ppl", None, "test perplexity")]
    out += [CapacityMeasure("recall_accuracy", float(k), f"recall, lag {k}") for k in lags]
    out += [CapacityMeasure("copy_logprob", float(k), f"copy log-prob, lag {k}") for k in lags]
    return out


def with_selected_train_ppl(tidy: pd.DataFrame) -> pd.DataFrame:
    """Adds ``train_ppl_selected``: each run's training perplexity (with its dropout) at its selected epoch."""
    sel = tidy[tidy["measure"] == "selected_epoch"][["run_id", "value"]].rename(columns={"value": "epoch"})
    train = tidy[tidy["measure"] == "train_ppl"].merge(sel, on="run_id")
    rows = train[np.isclose(train["x"].astype(float), train["epoch"].astype(float))].drop(columns="epoch")
    rows = rows.assign(measure="train_ppl_selected", x_name="", x=math.nan)
    return pd.concat([tidy, rows], ignore_index=True)


def equivalents(tidy: pd.DataFrame, measures: list[CapacityMeasure], size: int, *, seed: int = 0) -> dict:
    """{dropout label: {measure label: Equivalent}} for every model at ``size`` other than none."""
    out: dict[str, dict[str, Equivalent]] = {}
    for m in measures:
        values = per_seed(tidy, m.measure, m.x)
        ladder_rows = values[values["placement"] == NO_DROPOUT]
        ladder = {float(s): g["value"].to_numpy() for s, g in ladder_rows.groupby("hidden_size")}
        if len(ladder) < 2:
            continue
        models = values[(values["placement"] != NO_DROPOUT) & (values["hidden_size"] == size)]
        for label, g in models.groupby("placement", sort=False):
            out.setdefault(str(label), {})[m.label] = equivalent_size(ladder, g["value"].to_numpy(), seed=seed)
    return out


def capacity_table(eqs: dict, measures: list[CapacityMeasure], vocab: int, size: int, layers: int) -> dict:
    labels = [m.label for m in measures if any(m.label in e for e in eqs.values())]
    rows = [[label, f"{parameter_count(vocab, size, size, layers):,}"] + [eqs[label][m].text if m in eqs[label] else "—"
                                                                         for m in labels] for label in eqs]
    return {"title": "Equivalent size without dropout", "headers": ["model", "parameters", *labels], "rows": rows,
            "caption": "For each dropout model (at the default's size) and measure: the hidden size of the model "
                       "without dropout whose mean across seeds equals the dropout model's, by linear interpolation "
                       "on log size along the ladder, with a 95% bootstrap interval over seeds; beyond: outside the "
                       "ladder, never extrapolated. Parameters: the architecture's, the same for every placement."}


def ladder_table(tidy: pd.DataFrame, vocab: int, layers: int) -> dict:
    sizes = sorted(int(s) for s in tidy.loc[tidy["placement"] == NO_DROPOUT, "hidden_size"].unique())
    rows = [[f"{s}", f"{parameter_count(vocab, s, s, layers):,}"] for s in sizes]
    return {"title": "The ladder without dropout", "headers": ["hidden size", "parameters"], "rows": rows,
            "caption": "Embeddings are as wide as the hidden state at every size; parameters are the architecture's."}


def sentences(eqs: dict) -> list[str]:
    out = []
    for label, by_measure in eqs.items():
        agree, why = agreement(by_measure)
        parts = [f"{m}: {e.text}" for m, e in by_measure.items()]
        verdict = {True: "they agree", False: "they disagree", None: "they cannot be compared"}[agree]
        out.append(f"{label} acts like a model without dropout of " + "; ".join(parts) + f". Across measures {verdict} "
                   f"({why}).")
    return out


def capacity_figure(tidy: pd.DataFrame, measures: list[CapacityMeasure], eqs: dict, size: int) -> Figure:
    key, title = "capacity", "Dropout against a smaller model"
    caption = ("Each panel: the model without dropout against hidden size (black, mean and 95% t-interval across "
               "seeds), and each dropout model at the default's size as a horizontal band (its mean and interval); "
               "a marker where the band meets the ladder is the equivalent size. Bands that meet no point of the "
               "ladder are beyond it.")
    present = [m for m in measures if any(m.label in e for e in eqs.values())]
    if not present:
        return Figure(key, title, caption, None, "No ladder without dropout in these runs.")
    labels = list(eqs)
    styles = placement_styles(labels)
    ncols = min(3, len(present))
    nrows = -(-len(present) // ncols)
    fig, axes = new_figure(ncols, nrows, height=3.0)
    with matplotlib.rc_context(RC_PARAMS):
        for ax, m in zip(axes.flat, present):
            values = per_seed(tidy, m.measure, m.x)
            ladder = values[values["placement"] == NO_DROPOUT]
            est = pd.DataFrame([{"size": s, **inference.mean_ci(g["value"])._asdict()}
                                for s, g in ladder.groupby("hidden_size")]).sort_values("size")
            ax.plot(est["size"], est["mean"], color="black", marker="o", ms=3.5, lw=1.6, label="none (ladder)")
            ax.fill_between(est["size"], est["low"], est["high"], color="black", alpha=0.12, linewidth=0)
            for label in labels:
                g = values[(values["placement"] == label) & (values["hidden_size"] == size)]
                if g.empty:
                    continue
                ci = inference.mean_ci(g["value"])
                st = styles[label]
                ax.axhspan(ci.low, ci.high, color=st.colour, alpha=0.12, linewidth=0)
                ax.axhline(ci.mean, color=st.colour, ls=st.dashes, lw=1.2, label=label)
                e = eqs[label].get(m.label)
                if e is not None and math.isfinite(e.size):
                    ax.plot([e.size], [ci.mean], marker=st.marker, color=st.colour, ms=6)
            ax.set_xscale("log")
            plain_numbers(ax.xaxis)
            ax.set_xlabel("hidden size (units)")
            ax.set_title(m.label)
        for ax in list(axes.flat)[len(present):]:
            ax.set_visible(False)
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), fontsize=9)
    return Figure(key, title, caption, to_svg(fig, key, f"{title}. {caption}"))
