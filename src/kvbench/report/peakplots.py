"""The allocated peak of generate against the planner's estimate of it (`plot_peak_parity`): one point per scenario,
measured (`peak_allocated_delta_bytes`) against estimated (`peak_allocated_delta_bytes_estimate`), the ±5% band,
and the error per model (`peak_error_by_model`). The process's RSS is never drawn against an estimate."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..results.frame import ok_rows
from .figrows import SCENARIO, NoData, cache_label, keep, need
from .figstyle import MARKERS, bytes_axis, cycle, dash, facets, legend, mark, ordered, palette, style
from .ticks import fit_figure

BAND = 0.05  # the band drawn around y = x; the error each model reaches is in the table beside the figure
EXTRA = ["model", "model_type", "dtype", "peak_allocated_phase", "peak_allocated_phase_estimate",
         "peak_allocated_source"]


def peak_parity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Scenarios with a measured allocated peak and its estimate, and the estimate's error (estimate / measured - 1)."""
    ok = ok_rows(df)
    need(ok, ["peak_allocated_delta_bytes", "peak_allocated_delta_bytes_estimate"], "peak_parity")
    rows = ok[ok["peak_allocated_delta_bytes"].fillna(0).gt(0) & ok["peak_allocated_delta_bytes_estimate"].notna()]
    if rows.empty:
        raise NoData("peak_parity: no scenario has both an allocated peak and its estimate")
    out = keep(rows, SCENARIO + EXTRA + ["peak_allocated_delta_bytes", "peak_allocated_delta_bytes_estimate"])
    out["cache"] = cache_label(rows).values
    out["estimate_error"] = out["peak_allocated_delta_bytes_estimate"] / out["peak_allocated_delta_bytes"] - 1
    return out


def peak_error_by_model(df: pd.DataFrame) -> pd.DataFrame:
    """Per model (family): scenarios, the largest and the median |error|, and the signed range."""
    table = peak_parity_table(df)
    group = table.groupby(["model", "model_type"] if "model_type" in table else ["model"], dropna=False)
    err = group["estimate_error"]
    return pd.DataFrame({
        "scenarios": group.size(),
        "max_abs_error": err.apply(lambda e: e.abs().max()),
        "median_abs_error": err.apply(lambda e: e.abs().median()),
        "min_error": err.min(),
        "max_error": err.max(),
    }).reset_index()


def plot_peak_parity(df: pd.DataFrame) -> Figure:
    """Left: measured allocated peak (y) against the estimate (x), log-log, y = x and the ±5% band; right: the error
    per scenario, by model."""
    table = peak_parity_table(df)
    models = ordered(table["model"])
    colors = palette(models, "deep")
    caches = ordered(table["cache"])
    markers = cycle(caches, MARKERS)
    x, y = table["peak_allocated_delta_bytes_estimate"], table["peak_allocated_delta_bytes"]
    low, high = min(x.min(), y.min()) / 1.5, max(x.max(), y.max()) * 1.5
    with style():
        fig, (left, right) = facets(2, ncols=2, panel=(4.2, 3.4), sharey=False)
        grid = pd.Series([low * (high / low) ** (i / 50) for i in range(51)])
        left.fill_between(grid, grid * (1 - BAND), grid * (1 + BAND), color="0.85", zorder=1)
        left.plot([low, high], [low, high], color="0.4", lw=0.8, ls=":")
        for (model, cache), dots in table.groupby(["model", "cache"], sort=False):
            left.plot(dots["peak_allocated_delta_bytes_estimate"], dots["peak_allocated_delta_bytes"], ls="none",
                      marker=markers[cache], color=colors[model], ms=6, zorder=3, alpha=0.9)
        left.set(xlabel="estimated peak (planner's model)", ylabel="measured peak (allocated bytes)",
                 title="allocated peak above the level before generate")
        bytes_axis(left, "x", [low, high])
        bytes_axis(left, "y", [low, high])
        for i, model in enumerate(models):
            dots = table[table["model"] == model]
            for cache, part in dots.groupby("cache", sort=False):
                right.plot([i] * len(part), 100 * part["estimate_error"], ls="none", marker=markers[cache],
                           color=colors[model], ms=6, zorder=3, alpha=0.8)
        right.axhspan(-100 * BAND, 100 * BAND, color="0.85", zorder=1)
        right.axhline(0, color="0.4", lw=0.8, ls=":")
        right.set_xticks(range(len(models)), [str(m).rsplit("/", 1)[-1].removesuffix(".json") for m in models],
                         rotation=30, ha="right")
        right.set(ylabel="estimate / measured - 1 (%)", title="error per scenario, by model")
        legend(fig, [("model", [(str(m).rsplit("/", 1)[-1], mark("o", colors[m])) for m in models]),
                     ("cache", [(c, mark(markers[c])) for c in caches]),
                     ("", [(f"±{BAND:.0%} band", mark("s", "0.85")), ("y = x", dash(":"))])])
        source = "; ".join(ordered(table["peak_allocated_source"].dropna().astype(str))) \
            if "peak_allocated_source" in table else ""
        fig.suptitle("Peak allocated memory: measured against the planner's estimate"
                     + (f"\n(measured: {source})" if source else ""))
        fit_figure(fig)
    return fig


def peak_parity_display(df: pd.DataFrame) -> pd.DataFrame:
    """The error per model, shown beside the figure (the CSV keeps every scenario)."""
    table = peak_parity_table(df)
    group = table.groupby("model", sort=False)["estimate_error"]
    return pd.DataFrame({"scenarios": group.size(), "largest |error|": group.apply(lambda e: f"{e.abs().max():.1%}"),
                         "median |error|": group.apply(lambda e: f"{e.abs().median():.1%}"),
                         "range": group.apply(lambda e: f"{e.min():+.1%} to {e.max():+.1%}")}).reset_index()


def peak_parity_note(table: pd.DataFrame) -> str | None:
    worst = table["estimate_error"].abs().max()
    inside = int((table["estimate_error"].abs() <= BAND).sum())
    return (f"{inside} of {len(table)} scenarios within ±{BAND:.0%}; the largest error is {worst:.1%}.")
