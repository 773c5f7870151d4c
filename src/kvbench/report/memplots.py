"""The report's figures of bytes: the KV cache measured against its estimates (`plot_memory`) and the decode
roofline, the bandwidth a cached decode step achieved (`plot_bandwidth`). Re-exported by `kvbench.report.plots`."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..results.frame import ok_rows, with_spread
from .figrows import CACHE_FIELDS, SCENARIO, VARIANT_FIELDS, NoData, keep, need, variant
from .figstyle import (
    MARKERS,
    bytes_axis,
    cycle,
    dash,
    facets,
    legend,
    mark,
    ordered,
    palette,
    style,
)
from .ticks import fit_figure


# ------------------------------------------------------------------ 4. memory
def memory_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cached scenarios: KV-cache bytes measured, exact estimate, naive formula, peak above baseline, ratios."""
    ok = ok_rows(df)
    need(ok, ["use_cache", "kv_cache_bytes", "kv_cache_bytes_estimate"], "memory")
    cached = ok[ok["use_cache"].astype(bool) & ok["kv_cache_bytes"].fillna(0).gt(0)]
    if cached.empty:
        raise NoData("memory: no cached scenario recorded the bytes its KV cache held")
    out = keep(cached, SCENARIO + ["kv_cache_bytes", "kv_cache_bytes_estimate", "kv_cache_bytes_naive",
                                   "peak_allocated_delta_bytes", "peak_allocated_delta_bytes_estimate",
                                   "peak_allocated_source"])
    out["estimate_over_measured"] = out["kv_cache_bytes_estimate"] / out["kv_cache_bytes"]
    if "kv_cache_bytes_naive" in out:
        out["naive_over_measured"] = out["kv_cache_bytes_naive"] / out["kv_cache_bytes"]
    if "peak_allocated_delta_bytes_estimate" in out:
        out["peak_estimate_over_measured"] = out["peak_allocated_delta_bytes_estimate"] / out[
            "peak_allocated_delta_bytes"]
    return out


MEMORY_SERIES = [  # (label, predicted column, measured column)
    ("KV cache vs exact estimate", "kv_cache_bytes_estimate", "kv_cache_bytes"),
    ("KV cache vs naive formula", "kv_cache_bytes_naive", "kv_cache_bytes"),
    ("peak allocated vs its estimate", "peak_allocated_delta_bytes_estimate", "peak_allocated_delta_bytes"),
]


def plot_memory(df: pd.DataFrame) -> Figure:
    """Left: measured bytes against predicted bytes (log-log) with the y = x line: the KV cache against the
    exact estimate and against the naive formula, and the allocated peak above baseline against its estimate.
    Right: each prediction over the measured KV-cache bytes (1 = exact)."""
    table = memory_table(df)
    var = variant(table, VARIANT_FIELDS + CACHE_FIELDS)
    table = table.assign(variant=var if var is not None else "")
    series = [s for s in MEMORY_SERIES if s[1] in table and s[2] in table]
    colors = palette([s[0] for s in series], "deep")
    variants = ordered(table["variant"])
    markers = cycle(variants, MARKERS)
    source = ("; ".join(ordered(table["peak_allocated_source"].dropna().astype(str)))
              if "peak_allocated_source" in table else "")
    with style():
        fig, (left, right) = facets(2, ncols=2, panel=(4.2, 3.4), sharey=False)
        shown = []
        for label, x, y in series:
            rows = table[(table[x] > 0) & (table[y] > 0)]
            for var_, dots in rows.groupby("variant"):
                left.plot(dots[x], dots[y], ls="none", marker=markers[var_], color=colors[label], ms=6, zorder=3,
                          alpha=0.9)
            shown += [*rows[x], *rows[y]]
        if not shown:
            raise NoData("memory: no scenario has both a measurement and a prediction above zero bytes")
        low, high = min(shown) / 1.5, max(shown) * 1.5
        left.plot([low, high], [low, high], color="0.4", lw=0.8, ls=":")
        left.set(xlabel="predicted bytes", ylabel="measured bytes", title="measured against predicted")
        bytes_axis(left, "x", [low, high])
        bytes_axis(left, "y", [low, high])
        for label, x, y in series[:2]:  # the cache bytes: each formula over the measurement
            for var_, dots in table.groupby("variant"):
                right.plot(dots["kv_cache_bytes"], dots[x] / dots[y], ls="none", marker=markers[var_],
                           color=colors[label], ms=6, zorder=3)
        right.axhline(1, color="0.4", lw=0.8, ls=":")
        right.set(xlabel="measured KV-cache bytes", ylabel="predicted / measured", title="prediction error (1 = exact)")
        bytes_axis(right, "x", table["kv_cache_bytes"])
        ratios = [table[x] / table[y] for _, x, y in series[:2]]
        right.set_ylim(0, max(2.2, float(pd.concat(ratios).max()) * 1.1))
        legend(fig, [("compared", [(s[0], mark("o", colors[s[0]])) for s in series] + [("y = x (exact)", dash(":"))]),
                     (var.name if var is not None else "", [(v, mark(markers[v])) for v in variants]
                      if var is not None else [])])
        fig.suptitle("KV-cache memory: measured against the estimates"
                     + (f"\n(peak allocated: {source})" if source else ""))
        fit_figure(fig)
    return fig


def memory_note(table: pd.DataFrame) -> str | None:
    if "peak_allocated_delta_bytes" not in table:
        return "The records hold no allocated peak (older CPU runs recorded process RSS only), only the cache's bytes."
    flat = int((table["peak_allocated_delta_bytes"].fillna(0) <= 0).sum())
    if flat:
        return f"{flat} of {len(table)} scenarios have no allocated peak, so they have no green point."
    return None


# ------------------------------------------------------------------ 5. bandwidth
def bandwidth_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cached decode steps: bytes a step must read, its median time, the bandwidth achieved and the GPU's peak."""
    ok = ok_rows(df)
    need(ok, ["achieved_bandwidth_gbps"], "bandwidth")
    rows = ok[ok["achieved_bandwidth_gbps"].notna()]
    if "total_s_repeats" in rows:
        rows = with_spread(rows)
    out = keep(rows, SCENARIO + ["env_device_name", "decode_step_s", "decode_bytes_per_step_estimate",
                                 "achieved_bandwidth_gbps", "env_gpu_bandwidth_gbps", "bandwidth_fraction",
                                 "decode_roofline_s", "total_s_spread"])
    return out


def bandwidth_note(table: pd.DataFrame) -> str | None:
    if "env_gpu_bandwidth_gbps" not in table or table["env_gpu_bandwidth_gbps"].isna().all():
        return ("No peak memory bandwidth is known for this device (a CPU run, or a GPU that neither NVML nor "
                "the GPU table describes): the achieved bandwidth is shown without its roof.")
    return None


def plot_bandwidth(df: pd.DataFrame) -> Figure:
    """Achieved memory bandwidth of cached decode steps (bytes a step must read / its time) against the bytes
    read per step, under the GPU's peak bandwidth (dashed) where it is known."""
    table = bandwidth_table(df)
    need(table, ["decode_bytes_per_step_estimate"], "bandwidth")
    var = variant(table)
    table = table.assign(variant=var if var is not None else "")
    batches, variants = ordered(table["batch_size"]), ordered(table["variant"])
    colors, markers = palette(batches, "flare"), cycle(variants, MARKERS)
    with style():
        fig, (ax,) = facets(1, panel=(5.6, 3.6))
        for (batch, var_), dots in table.groupby(["batch_size", "variant"]):
            ax.plot(dots["decode_bytes_per_step_estimate"], dots["achieved_bandwidth_gbps"], ls="none",
                    marker=markers[var_], color=colors[batch], ms=7, zorder=3)
        top = float(table["achieved_bandwidth_gbps"].max())
        peaks = table.dropna(subset=["env_gpu_bandwidth_gbps"]) if "env_gpu_bandwidth_gbps" in table else table[:0]
        by = [c for c in ["run", "env_device_name"] if c in peaks]
        for _, peak in peaks.drop_duplicates(by + ["env_gpu_bandwidth_gbps"]).iterrows():
            gbps = float(peak["env_gpu_bandwidth_gbps"])
            ax.axhline(gbps, color="0.3", lw=1, ls="--")
            name = " · ".join(str(peak[c]) for c in by if c == "env_device_name" or peaks[c].nunique() > 1)
            ax.annotate(f"peak {gbps:,.0f} GB/s  {name}", (0.01, gbps), xycoords=("axes fraction", "data"),
                        va="bottom", fontsize=7, color="0.3")
            top = max(top, gbps)
        ax.set_ylim(0, top * 1.12)
        ax.set(xlabel="bytes a decode step reads (weights + KV cache)", ylabel="achieved bandwidth (GB/s)")
        bytes_axis(ax, "x", table["decode_bytes_per_step_estimate"])
        legend(fig, [("batch size", [(b, mark("o", colors[b])) for b in batches]),
                     (var.name if var is not None else "", [(v, mark(markers[v])) for v in variants]
                      if var is not None else [])])
        fig.suptitle("Decode roofline: achieved memory bandwidth"
                     + (" (no peak known)" if bandwidth_note(table) else " against the peak"))
        fit_figure(fig)
    return fig
