"""The report's plotting style: placement colours and markers, figure setup, inline SVG output."""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass

import matplotlib
import seaborn as sns
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter


from probe.analysis import compare
from probe.placements import PLACEMENT_NAMES, placement_name


# Okabe & Ito (2008) colour-blind-safe colours, ordered so that in registry order
# none is grey, zaremba blue, naive vermillion, variational green, and so on;
# their yellow is replaced by a dark olive that stays readable on white.
PALETTE = ("#595959", "#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#8C7A00")
EXTRA_COLOURS = ("#332288", "#882255", "#117733", "#AA4499", "#44AA99", "#999933", "#661100", "#6699CC")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
DASHES = ("-", "--", "-.", ":")


@dataclass(frozen=True)
class Figure:
    """A report figure: inline SVG, or a note saying why it is absent."""

    key: str  # unique on the page; prefixes the SVG's ids
    title: str
    caption: str  # also the SVG's accessible name
    svg: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str
    dashes: str


def base_name(label: str) -> str:
    """The registry name of a placement label (``variational:p=0.5`` -> ``variational``)."""
    return placement_name(label) or str(label)


def placement_styles(labels) -> dict[str, Style]:
    """One fixed colour and marker per placement label, from the registry order.

    Labels sharing a registry name (two rate settings of one placement) share
    its colour and differ in line style; unknown names take extra colours in
    sorted order, so the mapping depends only on the set of labels.
    """
    rank = {n: i for i, n in enumerate(PLACEMENT_NAMES)}
    labels = compare.registry_order(labels)
    unknown = sorted({base_name(s) for s in labels if base_name(s) not in rank})
    seen: dict[str, int] = {}
    out = {}
    for label in labels:
        name = base_name(label)
        i = rank[name] if name in rank else len(PALETTE) + unknown.index(name)
        colour = PALETTE[i] if i < len(PALETTE) else EXTRA_COLOURS[(i - len(PALETTE)) % len(EXTRA_COLOURS)]
        variant = seen.get(name, 0)
        seen[name] = variant + 1
        out[label] = Style(colour, MARKERS[i % len(MARKERS)], DASHES[variant % len(DASHES)])
    return out


ordered_placements = compare.registry_order


# --- SVG output ---------------------------------------------------------------

RC_PARAMS = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "axes.edgecolor": "#bbbbbb",
    "grid.color": "#e6e6e6",
    "axes.titleweight": "bold",
    "axes.titlesize": 11,
    "legend.frameon": False,
    # Text as <text> elements (DejaVu Sans, else the browser's sans-serif), not glyph paths: half the bytes.
    "svg.fonttype": "none",
}


def figure_style():
    """A context in which matplotlib draws in the report style (use around drawing calls)."""
    return matplotlib.rc_context(RC_PARAMS)


def plain_numbers(axis) -> None:
    """Tick labels as plain numbers (1, 2, 5, 10, 100) rather than powers of ten on a log axis."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    axis.set_tick_params(which="both", length=0)  # major and minor labels on one baseline


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float | None = None, height: float = 3.6,
               sharey: bool = False):
    """A matplotlib Figure (no pyplot state) with the report style; returns (fig, axes array)."""
    with matplotlib.rc_context(RC_PARAMS):
        fig = MplFigure(figsize=(width or min(11.0, 1.5 + 4.6 * ncols), height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def to_svg(fig: MplFigure, key: str, alt: str) -> str:
    """Serialise ``fig`` as an inline-ready SVG element with a title and an accessible name."""
    buf = io.StringIO()
    with matplotlib.rc_context({**RC_PARAMS, "svg.hashsalt": f"dropout-probe-{key}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")  # never clip a legend
    return inline_svg(buf.getvalue(), key, alt)


def inline_svg(svg: str, key: str, alt: str) -> str:
    """Make a standalone SVG document fit for inlining in HTML.

    Drops the XML prolog, doctype, metadata and comments; prefixes every id
    (and every reference to one) with ``key``; adds ``role="img"``, an
    ``aria-label`` and a ``<title>``. ``alt`` is escaped here because the
    template inserts the SVG verbatim.
    """
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", key) + "-"
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'(href=")#([^"]+)"', lambda m: f'{m.group(1)}#{prefix}{m.group(2)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", svg)
    label = html.escape(alt, quote=True)
    svg = re.sub(r"<svg\b", f'<svg role="img" aria-label="{label}"', svg, count=1)
    head_end = svg.index(">") + 1
    return svg[:head_end] + f"<title>{label}</title>" + svg[head_end:].strip() + "\n"


