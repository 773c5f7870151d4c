"""The drawing kit the figures share: rc settings for stable bytes, panels, legends, axes of bytes and counts.

Figures are plain `matplotlib.figure.Figure` objects (no pyplot state), drawn under `style()`.
"""

from __future__ import annotations

import contextlib

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from ..units import fmt_bytes

# Stable bytes for the same input (SVG ids salted by a constant, text as paths), and text from data never
# read as mathtext (a "$" in a model name or path is just a character).
RC = {
    "svg.hashsalt": "kvbench",
    "svg.fonttype": "path",
    "text.parse_math": False,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.dpi": 100,
    "savefig.dpi": 110,
}

@contextlib.contextmanager
def style():
    """The rc settings and seaborn style the figures are drawn and saved under."""
    import seaborn as sns

    with matplotlib.rc_context(RC), sns.axes_style("whitegrid"):
        yield


def facets(n: int, ncols: int = 3, panel=(3.6, 2.9), sharey=True, sharex=False, nrows: int | None = None):
    """A constrained-layout Figure with `n` panels (row-major); unused panels removed."""
    ncols = max(1, min(ncols, n))
    nrows = nrows or -(-n // ncols)
    fig = Figure(figsize=(max(6.4, panel[0] * ncols + 1.8), panel[1] * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey, sharex=sharex).ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, list(axes[:n])


def freeze_layout(fig, grid_pt: float = 0.125) -> None:
    """Fix the panels where the layout engine put them, on a grid of 1/8 point, and turn the engine off.

    The same figure then gives the same bytes on any machine: the layout solver's last bits (which vary with the
    CPU's floating-point paths) no longer reach the SVG, whose coordinates are printed to six decimals and flipped
    at a rounding edge (a spine at 32.6401575 pt wrote 32.640157 on one machine and 32.640158 on another). PNG and
    SVG are drawn from the same frozen layout.
    """
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    if fig.get_layout_engine() is None or isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        return
    fig.draw_without_rendering()
    width, height = fig.get_figwidth() * 72, fig.get_figheight() * 72

    def snap(value: float, size: float) -> float:
        return round(value * size / grid_pt) * grid_pt / size

    boxes = [(ax, ax.get_position()) for ax in fig.axes]
    fig.set_layout_engine("none")
    for ax, box in boxes:
        x0, y0 = snap(box.x0, width), snap(box.y0, height)
        ax.set_position([x0, y0, snap(box.x1, width) - x0, snap(box.y1, height) - y0], which="both")


def bytes_axis(ax, which: str, values) -> None:
    """An axis of bytes labelled in KiB/MiB/GiB: logarithmic (ticks at powers of two) over a wide range,
    linear over a narrow one."""
    values = pd.Series(values, dtype=float)
    values = values[values > 0]
    axis = getattr(ax, f"{which}axis")
    if len(values) and values.max() / values.min() > 4:
        getattr(ax, f"set_{which}scale")("log", base=2)
        axis.set_major_locator(LogLocator(base=2, numticks=7))
    else:
        axis.set_major_locator(MaxNLocator(5))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt_bytes(v).replace(".0 ", " ")))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def count_axis(ax, which: str) -> None:
    """A logarithmic axis of counts, labelled 10, 100, 1,000 (no mathtext)."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axis.set_minor_formatter(NullFormatter())


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", ":", "-."]


def palette(values, name: str) -> dict:
    import seaborn as sns

    return dict(zip(values, sns.color_palette(name, len(values))))


def cycle(values, styles) -> dict:
    return {v: styles[i % len(styles)] for i, v in enumerate(values)}


def swatch(color) -> Line2D:
    return Line2D([], [], color=color, lw=2.5)


def mark(marker, color="0.35", ls="none") -> Line2D:
    return Line2D([], [], color=color, marker=marker, ls=ls)


def dash(ls, color="0.35") -> Line2D:
    return Line2D([], [], color=color, ls=ls, lw=1.5)


def legend(fig: Figure, sections: list[tuple[str, list[tuple[str, Line2D]]]], loc="outside right upper") -> None:
    """One legend for the whole figure: a bold title per section, then its entries (empty sections skipped)."""
    handles, labels, titles = [], [], []
    for title, entries in sections:
        if not entries:
            continue
        titles.append(len(labels))
        handles.append(Line2D([], [], ls="none"))
        labels.append(title)
        for label, handle in entries:
            handles.append(handle)
            labels.append(str(label))
    if handles:
        leg = fig.legend(handles, labels, loc=loc, frameon=False, handlelength=2.2)
        for i in titles:
            leg.get_texts()[i].set_fontweight("bold")


def ordered(values) -> list:
    return sorted(pd.unique(values), key=lambda v: (str(type(v)), v))


def empty_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
