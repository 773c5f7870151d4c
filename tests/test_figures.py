"""Every figure, drawn from dense and sparse records, as a reader sees it: no two tick labels of an axis overlap,
every prompt length a sweep ran has its labelled tick, and the title stays clear of the legend, both as a plot
function returns the figure and as `save_figure` writes it (layout frozen)."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from synthetic_runs import GPU_ENV, grid

from kvbench.report import plots
from kvbench.report.compare import compare_table
from kvbench.report.figstyle import freeze_layout, style

FIGURES = ["speedup", "decode_steps", "positions", "memory", "bandwidth"]
CATEGORY_X = {"speedup", "positions"}  # x is the prompt length: one labelled tick per value


def runs(*named) -> pd.DataFrame:
    return pd.concat([pd.DataFrame(records).assign(run=name) for name, records in named], ignore_index=True)


DATA = {
    # prompt lengths 48/55/64 and 1000/1024 lie closer than any label is wide
    "dense": lambda: runs(("dense", grid(prompts=(16, 32, 48, 55, 64, 100, 128, 256, 1000, 1024), news=(8, 32),
                                         batches=(1, 4)))),
    "bench": lambda: runs(("bench", grid(prompts=(16, 55, 64, 256), news=(32,), batches=(1, 4)))),
    "sparse": lambda: runs(("one", grid(prompts=(55,), news=(8,), batches=(1,)))),
    "two runs": lambda: runs(
        ("results/20260101-cpu-run-with-a-long-name", grid(prompts=(16, 55, 64, 256), news=(8,), batches=(1, 4))),
        ("results/20260101-gpu-run-with-a-long-name", grid(prompts=(16, 55, 64, 256), news=(8,), batches=(1, 4),
                                                           env=GPU_ENV, dtype="float16"))),
}


def shown(axis):
    """The tick labels drawn on an axis: ticks inside the view with a visible, non-empty label."""
    lo, hi = sorted(axis.get_view_interval())
    eps = (hi - lo) * 1e-9
    return [t for t in axis.get_major_ticks()
            if lo - eps <= t.get_loc() <= hi + eps and t.label1.get_visible() and t.label1.get_text().strip()]


def clash(a, b) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5


def problems(fig, x_values=None) -> list[str]:
    """What a reader would trip over: overlapping tick labels, prompt lengths without a labelled tick, a title
    over the legend."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    found = []
    for i, ax in enumerate(fig.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            ticks = shown(axis)
            boxes = [t.label1.get_window_extent(renderer) for t in ticks]
            for j, a in enumerate(boxes):
                for k in range(j + 1, len(boxes)):
                    if clash(a, boxes[k]):
                        found.append(f"axes {i} {name}: {ticks[j].label1.get_text()!r} overlaps "
                                     f"{ticks[k].label1.get_text()!r}")
        if x_values is not None:
            labelled = {round(t.get_loc()): t.label1.get_text() for t in shown(ax.xaxis)}
            for value in x_values:
                if labelled.get(value) != str(value):
                    found.append(f"axes {i}: prompt length {value} has no labelled tick ({labelled})")
    if fig._suptitle is not None:
        title = fig._suptitle.get_window_extent(renderer)
        for legend in fig.legends:
            if clash(title, legend.get_window_extent(renderer)):
                found.append(f"the title {fig._suptitle.get_text()!r} covers the legend")
    return found


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("name", FIGURES)
def test_figures_have_readable_ticks_and_a_clear_title(name, data):
    df = DATA[data]()
    x_values = sorted(set(df["prompt_len"])) if name in CATEGORY_X else None
    with style():
        fig = getattr(plots, f"plot_{name}")(df)
        assert problems(fig, x_values) == []
        freeze_layout(fig)  # as the report saves it
        assert problems(fig, x_values) == []


@pytest.mark.parametrize("data", ["dense", "sparse"])
def test_compare_figure_has_readable_ticks(data):
    df = pd.concat([DATA[data]().assign(run="base"), DATA[data]().assign(run="new", total_s=lambda d: d["total_s"] * 3)],
                   ignore_index=True)
    table = compare_table(df, "base", ["new"])
    with style():
        fig = plots_compare(table)
        assert problems(fig) == []


def plots_compare(table):
    from kvbench.report.compare import plot_compare

    return plot_compare(table, 0.05)


def test_the_check_finds_overlapping_labels_and_missing_ticks():
    """The check itself: labels crowded on purpose, a value left without its tick, a title over the legend."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.set_xscale("log", base=2)
    ax.set_xlim(10, 300)
    ax.set_xticks([16, 55, 64, 256], ["16", "55", "64", "256"])
    fig.suptitle("a long title that runs all the way across the figure and beyond")
    fig.legend([Line2D([], [])], ["legend"], loc="upper right")
    found = problems(fig, [16, 55, 64, 100, 256])
    assert "axes 0 x: '55' overlaps '64'" in found
    assert any("prompt length 100 has no labelled tick" in f for f in found)
    assert any("covers the legend" in f for f in found)
