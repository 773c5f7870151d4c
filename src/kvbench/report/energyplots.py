"""The report's energy figure: joules per generated token beside tokens per second, per scenario. Records without
energy (a CPU without a readable RAPL counter) leave the figure out, and the reason they give is said in its place."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..results.frame import ok_rows
from .figrows import SCENARIO, NoData, cache_label, keep, need
from .figstyle import MARKERS, cycle, facets, legend, mark, ordered, palette, style, swatch
from .ticks import category_ticks, fit_figure

COLUMNS = ["tokens_per_s", "energy_per_token_j", "mean_power_w", "energy_source", "energy_unavailable"]


def energy_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario with tokens per second, joules per generated token and mean power; NoData (saying the
    records' own reason) where no row has an energy figure."""
    rows = ok_rows(df)
    need(rows, ["tokens_per_s"], "energy")
    energy = rows["energy_per_token_j"] if "energy_per_token_j" in rows else pd.Series(dtype=float)
    if energy.isna().all():
        reasons = rows["energy_unavailable"].dropna().unique() if "energy_unavailable" in rows else []
        why = f" ({'; '.join(map(str, reasons))})" if len(reasons) else ""
        raise NoData(f"no scenario has an energy reading, so joules per token cannot be drawn{why}")
    return keep(rows.assign(cache=cache_label(rows)), [*SCENARIO, "cache", *COLUMNS])


def plot_energy(df: pd.DataFrame) -> Figure:
    """Left: tokens per second; right: joules per generated token; both against prompt length, a colour per
    cache setting, a marker per batch size."""
    table = energy_table(df)
    caches, batches = ordered(table["cache"]), ordered(table["batch_size"])
    colors, markers = palette(caches, "tab10"), cycle(batches, MARKERS)
    with style():
        fig, axes = facets(2, ncols=2, sharey=False)
        for ax, column, label in [(axes[0], "tokens_per_s", "generated tokens per second"),
                                  (axes[1], "energy_per_token_j", "joules per generated token")]:
            for (cache, batch), line in table.groupby(["cache", "batch_size"], sort=True):
                line = line.dropna(subset=[column]).sort_values("prompt_len")
                ax.plot(line["prompt_len"], line[column], color=colors[cache], marker=markers[batch], lw=1.4, ms=5)
            category_ticks(ax, table["prompt_len"])
            ax.set(xlabel="prompt length (tokens)", ylabel=label, title=label)
            ax.set_ylim(bottom=0)
        legend(fig, [("cache", [(c, swatch(colors[c])) for c in caches]),
                     ("batch size", [(b, mark(markers[b])) for b in batches])])
        fig.suptitle("Throughput and energy: tokens per second beside joules per generated token")
        fit_figure(fig)
    return fig
