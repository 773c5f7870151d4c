"""Tick labels that neither overlap nor hide, and a title clear of the legend, settled after the layout.

Two kinds of axes. A category axis (`category_ticks`: the prompt lengths a sweep ran) labels every value it
holds: labels too close for one row move down to a second or third row (a larger pad per tick), and only if three
rows are not enough does the font shrink. A continuous axis (bytes, counts, ratios) keeps fewer ticks until its
labels fit. `fit_figure` does both for every axis of a figure, once the layout has placed the panels, and centres
the title over the panels (wrapping it) so that it never runs into a legend beside them.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib
from matplotlib.ticker import (
    FixedFormatter,
    FixedLocator,
    LogLocator,
    MaxNLocator,
    NullLocator,
)

GAP_PT = 2.0  # the least space between two labels of one row
MAX_ROWS = 3
MIN_FONT_PT = 6.0


def category_ticks(ax, values) -> None:
    """A base-2 logarithmic x axis (where there are several values) with a labelled tick at each value, spanning
    them all (panels that hold some of the values still show where the others lie)."""
    values = sorted({int(v) for v in values})
    if len(values) > 1:
        ax.set_xscale("log", base=2)
        margin = 2 ** max(0.15, 0.05 * math.log2(values[-1] / values[0]))
        ax.set_xlim(values[0] / margin, values[-1] * margin)
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FixedFormatter([str(v) for v in values]))  # what marks a category axis
    ax.xaxis.set_minor_locator(NullLocator())


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def shown_labels(axis) -> list:
    """(tick, label) of the major ticks drawn: inside the view, label visible and not empty."""
    lo, hi = sorted(axis.get_view_interval())
    span = (hi - lo) * 1e-9
    return [(t, t.label1) for t in axis.get_major_ticks()
            if lo - span <= t.get_loc() <= hi + span and t.label1.get_visible() and t.label1.get_text()]


def overlaps(boxes, gap_px: float = 0.0) -> bool:
    """Whether any two boxes (display Bboxes) come closer than `gap_px` in both directions."""
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if min(a.x1, b.x1) - max(a.x0, b.x0) > -gap_px and min(a.y1, b.y1) - max(a.y0, b.y0) > -gap_px:
                return True
    return False


def _rows(spans, gap: float) -> list[int] | None:
    """Rows for labels spanning (left, right), in order: each in the first row where it clears the last label
    by `gap`; None if `MAX_ROWS` rows are not enough."""
    ends: list[float] = []
    rows = []
    for left, right in sorted(spans):
        row = next((r for r, end in enumerate(ends) if left >= end + gap), None)
        if row is None:
            if len(ends) == MAX_ROWS:
                return None
            ends.append(right)
            row = len(ends) - 1
        ends[row] = right
        rows.append(row)
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    out = [0] * len(spans)
    for rank, i in enumerate(order):
        out[i] = rows[rank]
    return out


def _fit_categories(axis, renderer, px_per_pt: float) -> bool:
    """Every label kept: x labels spread over rows, then smaller type; y labels smaller type only."""
    shown = shown_labels(axis)
    if len(shown) < 2:
        return False
    which = "x" if axis.axis_name == "x" else "y"
    pad = matplotlib.rcParams[f"{which}tick.major.pad"]
    changed = False
    while True:
        size = shown[0][1].get_fontsize()
        if which == "x":  # a label's width does not depend on its row
            boxes = [label.get_window_extent(renderer) for _, label in shown]
            rows = _rows([(b.x0, b.x1) for b in boxes], GAP_PT * px_per_pt)
            if rows is not None:
                pads = [pad + row * size * 1.25 for row in rows]
                moved = [tick.get_pad() for tick, _ in shown] != pads
                for (tick, _), new in zip(shown, pads):
                    tick.set_pad(new)
                return changed or moved
        elif not overlaps([label.get_window_extent(renderer) for _, label in shown], GAP_PT * px_per_pt / 2):
            return changed
        if size <= MIN_FONT_PT:
            return changed
        for _, label in shown:
            label.set_fontsize(size - 1)
        axis.set_tick_params(labelsize=size - 1)
        changed = True


def _thin(axis, count: int) -> bool:
    """Fewer ticks on a continuous axis (`count` were shown); False where its locator cannot give fewer."""
    locator = axis.get_major_locator()
    if count <= 2:
        return False
    if isinstance(locator, LogLocator):
        locator.set_params(numticks=count - 1)
    elif isinstance(locator, MaxNLocator):
        locator.set_params(nbins=max(1, count - 2))
    elif isinstance(locator, FixedLocator):
        locs = sorted(locator.locs)
        anchor = locs.index(1) if 1 in locs else 0  # a ratio axis keeps its 1x, and every other tick from it
        keep = [v for i, v in enumerate(locs) if (i - anchor) % 2 == 0]
        if len(keep) == len(locs):
            return False
        axis.set_major_locator(FixedLocator(keep))
    else:
        return False
    return True


def _fit_axis(axis, renderer, px_per_pt: float) -> bool:
    if isinstance(axis.get_major_formatter(), FixedFormatter):
        return _fit_categories(axis, renderer, px_per_pt)
    shown = shown_labels(axis)
    if not overlaps([label.get_window_extent(renderer) for _, label in shown], GAP_PT * px_per_pt):
        return False
    return _thin(axis, len(shown))


def _clear_title(fig, renderer) -> bool:
    """Centre the title over the panels and wrap it to their width where it would run into a legend."""
    title = fig._suptitle
    if title is None or not fig.legends or not fig.axes:
        return False
    boxes = [ax.get_position() for ax in fig.axes]
    x0, x1 = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    title.set_x((x0 + x1) / 2)
    legends = [leg.get_window_extent(renderer) for leg in fig.legends]
    original = title.get_text()
    lines = original.split("\n")
    chars = max(len(line) for line in lines)
    while any(overlaps([title.get_window_extent(renderer), leg]) for leg in legends) and chars > 20:
        chars = int(chars * 0.9)
        title.set_text("\n".join(textwrap.fill(line, chars) for line in lines))
    return title.get_text() != original


def fit_figure(fig, passes: int = 4) -> None:
    """Lay the figure out and settle its labels: no tick labels overlapping, none hidden, the title clear of the
    legend. Repeats while a change (a second label row, a wrapped title) moves the layout."""
    renderer = _renderer(fig)
    px_per_pt = fig.dpi / 72
    for _ in range(passes):
        fig.draw_without_rendering()
        changed = _clear_title(fig, renderer)
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                changed = _fit_axis(axis, renderer, px_per_pt) or changed
        if not changed:
            break
    fig.draw_without_rendering()
