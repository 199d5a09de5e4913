"""Figures for reports: functions from a tidy table to inline SVG strings.

Every figure draws one line per placement with a t-interval band across
seeds (``inference.estimate``), drawn with ``fill_between`` because seaborn 0.13
cannot draw intervals computed elsewhere (its errorbar= computes its own). Each placement
keeps one colour and marker in every figure, taken from the registry order
in a colour-blind-safe palette (Okabe & Ito), so a reader learns the key once.

SVG output is reproducible: no date in the metadata, a distinct
``svg.hashsalt`` per figure, and every ``id`` prefixed with the figure's key
so that several inline SVGs on one page never share an id.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from probe.measure import names as measure_names

from probe.analysis import inference
from probe.measure.curves import NOISE_FLOORS
from probe.report.plotting import Figure, RC_PARAMS, Style, new_figure, ordered_placements, placement_styles, plain_numbers, to_svg


# --- curves -------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One axes of a curve figure: a measure, with optional control measures drawn faintly."""

    measure: str
    title: str = ""
    controls: tuple[str, ...] = ()  # per-placement controls, dashed in the placement's colour
    baselines: tuple[str, ...] = ()  # model-independent baselines, one black dotted line


@dataclass(frozen=True)
class CurveSpec:
    key: str
    title: str
    caption: str
    panels: tuple[Panel, ...]
    xlabel: str
    ylabel: str
    log_x: bool = False
    log_y: bool = False
    sharey: bool = False  # panels on one y scale, for comparisons across panels
    required: bool = True  # a missing required figure leaves a note in the report
    optimum: bool = False  # a perplexity figure: draw the corpus's optimum perplexity where it is known


_BANDS = "Bands: 95% t-intervals across seeds."
_FLOOR = ("Log axis; the dotted grey line is the numerical noise floor (probe.measure.curves.NOISE_FLOORS): values "
          "below it are rounding noise of the float32 network, not memory. On this log axis lines are geometric means "
          "across seeds and bands t-intervals of the log values (a seed below the floor counted at it). ")
CURVES: tuple[CurveSpec, ...] = (
    CurveSpec(
        "influence", "Influence of a past token on the prediction",
        "Counterfactual influence: KL divergence (nats) between the predictions at t when the token at t−k is "
        "replaced, by lag k; with the network in evaluation mode, and with the placement's training masks "
        "active (the same masks for both copies). KL is quadratic in small perturbations, so it decays at twice "
        "the rate of the hidden-state distance and the gradient norm below. " + _FLOOR + _BANDS,
        (Panel("influence_kl"),),
        "lag k (tokens)", "KL divergence (nats)", log_y=True, sharey=True,
    ),
    CurveSpec(
        "retained", "Influence that survives the training masks",
        "Training-mode influence divided by the same model's evaluation-mode influence, by lag k: the share of "
        "its memory a model keeps while its dropout masks are on (1: none lost). Lags where either influence "
        "is below 1% of the evaluation-mode lag-1 value are left out (a ratio of two numbers near the floor "
        "says nothing). " + _BANDS,
        (Panel("influence_kl_retained"),),
        "lag k (tokens)", "retained share of influence", required=False,
    ),
    CurveSpec(
        "hidden_distance", "Distance moved by the hidden state",
        "How far h_t moves when the token at t−k is replaced, relative to its norm (‖h_t − h′_t‖ / ‖h_t‖), by lag "
        "k. " + _FLOOR + _BANDS,
        (Panel("influence_hidden"),),
        "lag k (tokens)", "relative distance ‖Δh_t‖ / ‖h_t‖", log_y=True, sharey=True, required=False,
    ),
    CurveSpec(
        "probe", "Information about a past token that a linear probe recovers",
        "Lower bound on the mutual information between x_{t−k} and h_t (bits): entropy of the token's class "
        "minus the held-out cross-entropy of a linear probe. Dashed: the same probe on the untrained network; "
        "dotted black: the frequency baseline. " + _BANDS,
        (Panel("probe_bits", controls=("probe_bits_untrained",), baselines=("probe_bits_baseline",)),),
        "lag k (tokens)", "information (bits)", sharey=True,
    ),
    CurveSpec(
        "probe_cell", "Information about a past token in the cell state",
        "As above, for a probe reading the cell state c_t. Dashed: the untrained network; dotted black: the "
        "frequency baseline. " + _BANDS,
        (Panel("probe_bits_cell", controls=("probe_bits_cell_untrained",), baselines=("probe_bits_baseline",)),),
        "lag k (tokens)", "information (bits)", sharey=True, required=False,
    ),
    CurveSpec(
        "probe_accuracy", "Probe accuracy",
        "Accuracy of the linear probe decoding the class of x_{t−k} from h_t, by lag. Dashed: the untrained "
        "network; dotted black: the frequency baseline. " + _BANDS,
        (Panel("probe_accuracy", controls=("probe_accuracy_untrained",), baselines=("probe_accuracy_baseline",)),),
        "lag k (tokens)", "accuracy", sharey=True, required=False,
    ),
    CurveSpec(
        "gradient", "Gradient sensitivity",
        "‖∂ log p(x_t) / ∂e_{t−k}‖: how strongly the log-probability of the token at t responds to the "
        "embedding k steps back. " + _FLOOR + _BANDS,
        (Panel("gradient_norm"),), "lag k (tokens)", "gradient norm", log_y=True,
    ),
    CurveSpec(
        "recall", "Recall accuracy",
        "Accuracy at recalling a token planted k steps earlier (synthetic corpus); dotted black: chance. " + _BANDS,
        (Panel("recall_accuracy", baselines=("recall_accuracy_chance",)),), "lag k (tokens)", "accuracy",
        required=False,
    ),
    CurveSpec(
        "context", "Perplexity against the context the model is given",
        "Each target scored from a fresh state with only its last L tokens of context (identical targets for "
        "every L). Dashed black, where known: the corpus's optimum perplexity. " + _BANDS,
        (Panel("context_ppl"),), "context length L (tokens)", "perplexity", log_x=True, optimum=True,
    ),
    CurveSpec(
        "position", "Perplexity by position since a state reset",
        "Perplexity of the token at each position after the hidden state is reset. Dashed black, where known: "
        "the corpus's optimum perplexity. " + _BANDS,
        (Panel("position_ppl"),), "position since reset (tokens)", "perplexity", optimum=True,
    ),
    CurveSpec(
        "training", "Training curves",
        "Perplexity on the training data (as seen during training, with dropout) and on validation data, per "
        "epoch. Dashed black, where known: the corpus's optimum perplexity. " + _BANDS,
        (Panel("train_ppl", "Training"), Panel("valid_ppl_epoch", "Validation")),
        "epoch", "perplexity", log_y=True, sharey=True, optimum=True,
    ),
)

_MODE_TITLES = {"eval": "Evaluation mode", "train": "Training masks active"}


def _panel_views(tidy: pd.DataFrame, panel: Panel) -> list[tuple[str, pd.DataFrame]]:
    """A measure's curve rows, split into panels by layer and mode where it has several (model-level rows win)."""
    rows = tidy[(tidy["measure"] == panel.measure) & tidy["x"].notna()]
    if rows.empty:
        return []
    if "layer" in rows and (rows["layer"] == -1).any():
        rows = rows[rows["layer"] == -1]
    title = panel.title
    if "layer" in rows and (rows["layer"] >= 0).all() and rows["layer"].nunique() > 1:
        # Per-layer measures: the top layer (every layer is in the data files).
        top = int(rows["layer"].max())
        rows = rows[rows["layer"] == top]
        title = " · ".join(filter(None, [panel.title, f"top layer ({top})"]))
    keys = [c for c in ("layer", "mode") if c in rows and rows[c].nunique() > 1]
    if not keys:
        return [(title, rows)]
    views = []
    for key, group in rows.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        parts = [f"layer {v}" if k == "layer" else _MODE_TITLES.get(v, f"{v} mode") for k, v in zip(keys, key)]
        views.append((" · ".join(filter(None, [title, *parts])), group))
    return views


def _select_like(tidy: pd.DataFrame, measure: str, like: pd.DataFrame) -> pd.DataFrame:
    """Rows of a control or baseline measure on the panel's layer and mode, where it has them."""
    rows = tidy[(tidy["measure"] == measure) & tidy["x"].notna()]
    for column in ("layer", "mode"):
        if not rows.empty and column in rows and like[column].nunique() == 1:
            same = rows[rows[column] == like[column].iloc[0]]
            rows = same if not same.empty else rows
    return rows


def draw_curve(ax, est: pd.DataFrame, style: Style | None, label: str, *, linestyle=None, alpha=1.0, band=True, lw=1.8):
    est = est.sort_values("x")
    x, y = est["x"].to_numpy(float), est["mean"].to_numpy(float)
    colour = style.colour if style else "black"
    kw = dict(marker=style.marker, markersize=4, markevery=max(1, len(x) // 12)) if style and linestyle is None else {}
    ax.plot(x, y, color=colour, linestyle=linestyle or (style.dashes if style else ":"), lw=lw, alpha=alpha,
            label=label, **kw)
    if band and est["n"].max() >= 2:
        ax.fill_between(x, est["low"].to_numpy(float), est["high"].to_numpy(float), color=colour, alpha=0.15 * alpha,
                        linewidth=0)


def curve_estimate(rows: pd.DataFrame, log_y: bool, floor: float | None, by=("placement", "x")) -> pd.DataFrame:
    """Mean and t-interval across seeds per point; on a log axis, of the log values (a geometric mean and a
    band that never reaches zero), each seed's value taken at least at the noise floor."""
    if not log_y:
        return inference.estimate(rows, by=by)
    # Per-seed values first (the unit of replication), then logs: the band is the t-interval of log values.
    seeds = inference.per_seed(rows, by=by)
    finite = np.isfinite(seeds["value"].astype(float))
    low = floor if floor else np.finfo(float).tiny
    logged = seeds.assign(value=np.where(finite, np.log(seeds["value"].astype(float).clip(lower=low)), seeds["value"]))
    est = inference.estimate(logged, by=by)
    for col in ("mean", "low", "high"):
        est[col] = np.exp(est[col].astype(float))
    return est


def curve_figure(tidy: pd.DataFrame, spec: CurveSpec, styles: dict[str, Style] | None = None,
                 optimum_ppl: float | None = None) -> Figure:
    """One figure of a CurveSpec, or a Figure with a note when none of its measures is present.

    ``optimum_ppl``: the corpus's best achievable perplexity, drawn on perplexity figures when known."""
    views = [(panel, title, rows) for panel in spec.panels for title, rows in _panel_views(tidy, panel)]
    if not views:
        names = ", ".join(p.measure for p in spec.panels)
        return Figure(spec.key, spec.title, spec.caption, None, f"Not measured in this study (no rows for {names}).")
    styles = styles or placement_styles(tidy["placement"].unique())
    ncols = 2 if len(views) == 4 else min(len(views), 3)
    nrows = -(-len(views) // ncols)
    fig, axes = new_figure(ncols, nrows, width=7.6 if len(views) == 1 else None, sharey=spec.sharey)
    handles: dict[str, object] = {}
    estimates = [curve_estimate(rows, spec.log_y, NOISE_FLOORS.get(panel.measure)) for panel, _, rows in views]
    shared = pd.concat(estimates) if spec.sharey else None
    with matplotlib.rc_context(RC_PARAMS):
        for ax, (panel, title, rows), est in zip(axes.flat, views, estimates):
            for placement in ordered_placements(est["placement"].unique()):
                draw_curve(ax, est[est["placement"] == placement], styles.get(placement), str(placement))
            for control in panel.controls:
                c_est = inference.estimate(_select_like(tidy, control, rows), by=("placement", "x"))
                for placement in ordered_placements(c_est["placement"].unique()):
                    draw_curve(ax, c_est[c_est["placement"] == placement], styles.get(placement), f"_{placement} control",
                          linestyle="--", alpha=0.55, band=False, lw=1.2)
                if not c_est.empty:
                    ax.plot([], [], color="#777777", linestyle="--", lw=1.2, label="untrained network (control)")
            for baseline in panel.baselines:
                b_rows = _select_like(tidy, baseline, rows)
                if not b_rows.empty:  # the same for every placement: one line, averaged over runs
                    b_est = inference.estimate(b_rows, by=("x",))
                    draw_curve(ax, b_est, None, measure_names.label(baseline), band=False, lw=1.4)
            _finish_axes(ax, spec, title, est, est if shared is None else shared, NOISE_FLOORS.get(panel.measure))
            if spec.optimum and optimum_ppl is not None and np.isfinite(optimum_ppl):
                ax.axhline(optimum_ppl, color="black", ls="--", lw=1.0, label="corpus optimum")
            if spec.sharey and ax.get_subplotspec().colspan.start > 0:
                ax.set_ylabel("")  # the first column's label serves the row
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        for ax in list(axes.flat)[len(views):]:
            ax.set_visible(False)
        if len(views) == 1:  # one panel: the key to its right, one entry a line
            fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", fontsize=9)
        else:
            fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                       ncol=min(len(handles), 3), fontsize=9)  # spec labels are long: 3 fit the width
    alt = f"{spec.title}. {spec.caption}"
    return Figure(spec.key, spec.title, spec.caption, to_svg(fig, spec.key, alt))


def _finish_axes(ax, spec: CurveSpec, title: str, est: pd.DataFrame, y_est: pd.DataFrame,
                 floor: float | None = None) -> None:
    """Labels and scales; ``y_est`` holds every estimate sharing this y axis (all panels when sharey).

    Decay curves (``floor`` > 0) always sit on a log axis, the noise floor drawn and the axis starting a
    little below it, so a curve that has decayed into rounding noise is seen as such, not as zero."""
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    if title:
        ax.set_title(title)
    if spec.log_x and (est["x"] > 0).all():
        ax.set_xscale("log")
        plain_numbers(ax.xaxis)
    # Limits from finite values only: a diverged run's infinite perplexity is drawn off the axes.
    y_est = y_est[np.isfinite(y_est["mean"].astype(float))]
    positive = y_est["mean"][y_est["mean"] > 0]
    high = y_est["high"].astype(float)
    top = high.where(np.isfinite(high), y_est["mean"]).max()
    if spec.log_y and floor and len(positive) and np.isfinite(top):
        ax.set_yscale("log", nonpositive="clip")
        ax.axhline(floor, color="#888888", ls=":", lw=1.2, label="numerical noise floor")
        ax.set_ylim(max(floor / 5, min(positive.min(), floor) / 2), top * 2)
    # Otherwise a log axis only where the curves span more than a factor of ten; bands reaching zero or
    # below are clipped at the bottom of the axes, not hidden.
    elif (spec.log_y and len(positive) == len(y_est) and len(positive) and np.isfinite(top)
            and top / positive.min() > 10):
        bottom = positive.min()
        ax.set_yscale("log", nonpositive="clip")
        if bottom >= 0.01 and top < 1e5 and top / bottom < 100:  # perplexities: a tight range, plain numbers
            ax.set_ylim(bottom / 1.15, top * 1.15)
            plain_numbers(ax.yaxis)
        else:
            ax.set_ylim(bottom / 2.5, top * 1.6)
    if est["x"].dropna().apply(float.is_integer).all() and not spec.log_x:
        ax.xaxis.get_major_locator().set_params(integer=True)


# --- scalars --------------------------------------------------------------------


def scalar_rows(tidy: pd.DataFrame, measure: str) -> tuple[str, pd.DataFrame]:
    """A scalar measure's rows at one layer (model-level, else the top layer) and the panel title for them."""
    rows = tidy[(tidy["measure"] == measure) & tidy["x"].isna()]
    title = measure_names.label(measure)
    if "layer" in rows and len(rows) and not (rows["layer"] == -1).any():
        top = int(rows["layer"].max())
        rows = rows[rows["layer"] == top]
        title += f" (layer {top})"
    return title, rows


def scalar_figure(tidy: pd.DataFrame, measures, *, key: str, title: str, caption: str,
                  styles: dict[str, Style] | None = None, required: bool = True,
                  reference_line: float | None = None, reference_label: str = "") -> Figure | None:
    """Dot-and-interval plot of scalar measures: mean and 95% t-interval per placement, each seed as a dot.

    Per-layer measures show their top layer. Infinite values (a half-life beyond the measured lags) are
    drawn as triangles at the right edge.
    """
    panels = [(m, *scalar_rows(tidy, m)) for m in measures]
    panels = [p for p in panels if len(p[2])]
    if not panels:
        if not required:
            return None
        return Figure(key, title, caption, None, f"Not measured in this study (no rows for {', '.join(measures)}).")
    styles = styles or placement_styles(tidy["placement"].unique())
    order = ordered_placements(pd.concat([rows for _, _, rows in panels])["placement"].unique())
    ncols = min(len(panels), 3)
    fig, axes = new_figure(ncols, -(-len(panels) // ncols), height=0.42 * len(order) + 1.7)
    with matplotlib.rc_context(RC_PARAMS):
        for ax, (measure, panel_title, rows) in zip(axes.flat, panels):
            seeds = inference.per_seed(rows, by=("placement",))
            finite = seeds["value"][np.isfinite(seeds["value"])]
            edge = finite.max() + 0.08 * (finite.max() - finite.min() or abs(finite.max()) or 1.0) if len(finite) else 1.0
            for i, placement in enumerate(order):
                values = seeds.loc[seeds["placement"] == placement, "value"].to_numpy(float)
                if not len(values):
                    continue
                style = styles[placement]
                ci = inference.mean_ci(values)
                jitter = (np.arange(len(values)) - (len(values) - 1) / 2) * 0.06
                shown = np.where(np.isinf(values), edge, values)
                ax.scatter(shown, i + 0.2 + jitter, s=12, color=style.colour, alpha=0.55, linewidths=0,
                           marker="o")
                if np.isfinite(ci.low):
                    ax.plot([ci.low, ci.high], [i, i], color=style.colour, lw=2.2, solid_capstyle="butt")
                mean = edge if np.isinf(ci.mean) else ci.mean
                ax.plot([mean], [i], marker=">" if np.isinf(ci.mean) else style.marker, color=style.colour,
                        markersize=7)
            ax.set_yticks(range(len(order)), [str(p) for p in order])
            ax.set_ylim(len(order) - 0.4, -0.6)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            unit = measure_names.unit(measure)
            ax.set_xlabel(unit if len(panels) > 1 else axis_label(measure))
            ax.set_title(textwrap.fill(panel_title, 34), fontsize=10 if len(panels) > 1 else None)
            ax.grid(axis="y", visible=False)
            if reference_line is not None and np.isfinite(reference_line):
                ax.axvline(reference_line, color="black", ls="--", lw=1.0)
                ax.annotate(reference_label, (reference_line, len(order) - 0.45), ha="left", va="bottom",
                            fontsize=7.5, color="#333333", xytext=(3, 0), textcoords="offset points")
            if np.isinf(seeds["value"]).any():
                ax.axvline(edge, color="#999999", lw=0.8, ls=":")
                ax.annotate("beyond measured range", (edge, -0.55), ha="right", va="top", fontsize=7.5, color="#666666")
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
    return Figure(key, title, caption, to_svg(fig, key, f"{title}. {caption}"))


def axis_label(measure: str) -> str:
    unit = measure_names.unit(measure)
    return f"{measure_names.label(measure)} ({unit})" if unit else measure_names.label(measure)


# --- the standard set -----------------------------------------------------------------

PERPLEXITY_MEASURES = ("valid_ppl", "test_ppl")
_CONTROL_WORDS = ("untrained", "baseline", "chance", "best", "entropy", "count")


def memory_summaries(tidy: pd.DataFrame) -> list[str]:
    """The scalar summaries worth a panel: half-lives of the trained network's curves and effective context."""
    names = tidy.loc[tidy["x"].isna(), "measure"].unique()
    half_lives = sorted(m for m in names if m.endswith("_half_life") and not any(w in m for w in _CONTROL_WORDS))
    return half_lives + (["effective_context"] if "effective_context" in names else [])


def standard_figures(tidy: pd.DataFrame, optimum_ppl: float | None = None) -> list[Figure]:
    """Every figure a study report shows, in reading order; absent measures give notes, not figures.

    ``optimum_ppl``: the corpus's best achievable perplexity (synthetic corpora), drawn on every
    perplexity figure."""
    styles = placement_styles(tidy["placement"].unique())
    known = optimum_ppl is not None and np.isfinite(optimum_ppl)
    figures = [scalar_figure(
        tidy, PERPLEXITY_MEASURES, key="perplexity", title="Perplexity",
        caption="Validation and test perplexity per placement at each run's best-validation epoch: mean "
                "(marker), 95% t-interval across seeds (bar) and each seed (dots)."
                + (" Dashed: the corpus's optimum perplexity." if known else ""),
        styles=styles, reference_line=optimum_ppl if known else None, reference_label="optimum",
    )]
    for spec in CURVES:
        fig = curve_figure(tidy, spec, styles, optimum_ppl if known else None)
        if fig.svg is not None or spec.required:
            figures.append(fig)
    memory = scalar_figure(
        tidy, memory_summaries(tidy), key="memory_summaries", title="Memory summaries",
        caption="Half-lives (the number of lags a curve takes to halve from its lag-1 value, interpolated on a "
                "log scale; ∞ where it does not halve within the measured lags) and effective context (the "
                "smallest context within 1% of full-context perplexity): mean (marker), 95% t-interval across "
                "seeds (bar) and each seed (dots); per-layer measures at the top layer.",
        styles=styles, required=False,
    )
    if memory is not None:
        figures.append(memory)
    return figures


