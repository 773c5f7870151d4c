"""The figures that compare cache implementations: what a cache buys (speedup) against what it costs (its analytic
KV bytes), and latency against memory (stored bytes and peak above baseline) implementation by implementation."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..results.frame import ok_rows, speedups, with_spread
from .figstyle import (
    MARKERS,
    bytes_axis,
    cycle,
    facets,
    legend,
    mark,
    ordered,
    palette,
    style,
)
from .plots import SCENARIO, VARIANT_FIELDS, NoData, keep, need, variant

QUANT_FIELDS = ["quant_backend", "quant_nbits", "quant_residual_length"]
HOLLOW = Line2D([], [], color="0.35", marker="o", mfc="none", ls="none")


def implementation_label(df: pd.DataFrame) -> pd.Series:
    """The cache as configured: "dynamic", "static", "quantized fp8", "quantized quanto int4 R64", ..."""

    def label(rec) -> str:
        impl = str(rec.get("cache_implementation"))
        if impl != "quantized" or not isinstance(rec.get("quant_backend"), str):
            return impl
        bits = rec.get("quant_nbits")
        out = f"quantized {rec['quant_backend']}" + (f" int{int(bits)}" if bits == bits and bits else "")
        residual = rec.get("quant_residual_length")
        return out + (f" R{int(residual)}" if residual == residual and residual and residual != 128 else "")

    return pd.Series([label(r) for r in df.to_dict("records")], index=df.index, name="cache")


# ------------------------------------------------------------------ speedup against the analytic KV bytes
def cache_tradeoff_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cached scenarios with an uncached twin: the speedup the cache bought and the KV bytes it costs (analytic,
    with the measured bytes beside)."""
    ok = ok_rows(df)
    need(ok, ["use_cache", "total_s", "kv_cache_bytes_estimate", "cache_implementation"], "cache trade-off")
    if ok["use_cache"].astype(bool).all():
        raise NoData("cache trade-off: no scenario ran without the cache (run with --use-cache both)")
    paired = speedups(with_spread(ok.assign(run=ok["run"] if "run" in ok else "")))
    paired = paired[paired["speedup"].notna() & paired["kv_cache_bytes_estimate"].fillna(0).gt(0)].copy()
    if paired.empty:
        raise NoData("cache trade-off: no cached scenario has both an uncached twin and a KV-bytes estimate")
    paired["cache"] = implementation_label(paired)
    return keep(paired, SCENARIO + QUANT_FIELDS + ["cache", "cache_class", "kv_cache_bytes_estimate",
                                                  "kv_cache_bytes", "total_s", "total_s_nocache", "speedup",
                                                  "total_s_spread", "total_s_spread_nocache"])


def plot_cache_tradeoff(df: pd.DataFrame) -> Figure:
    """Speedup (y) against the analytic KV-cache bytes (x), one point per cached scenario; a colour per cache
    implementation, a marker per batch size."""
    table = cache_tradeoff_table(df)
    var = variant(table, VARIANT_FIELDS)
    table = table.assign(variant=var if var is not None else "")
    caches, batches, variants = ordered(table["cache"]), ordered(table["batch_size"]), ordered(table["variant"])
    colors, markers = palette(caches, "deep"), cycle(batches, MARKERS)
    with style():
        fig, axes = facets(len(variants), panel=(5.2, 3.6))
        for ax, var_ in zip(axes, variants):
            part = table[table["variant"] == var_]
            for (cache, batch), dots in part.groupby(["cache", "batch_size"]):
                ax.plot(dots["kv_cache_bytes_estimate"], dots["speedup"], ls="none", marker=markers[batch],
                        color=colors[cache], ms=7, alpha=0.9, zorder=3)
            ax.axhline(1, color="0.4", lw=0.8, ls=":")
            bytes_axis(ax, "x", table["kv_cache_bytes_estimate"])
            ax.set(xlabel="KV-cache bytes (analytic estimate)", ylabel="speedup (x)", title=var_ or None)
        axes[0].set_ylim(0, max(1.1, float(table["speedup"].max()) * 1.1))
        legend(fig, [("cache", [(c, mark("o", colors[c])) for c in caches]),
                     ("batch size", [(b, mark(markers[b])) for b in batches])])
        fig.suptitle("Speedup against KV-cache bytes")
    return fig


# ------------------------------------------------------------------ latency against memory, by implementation
def cache_memory_latency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cached scenarios side by side by implementation at each prompt length and batch: stored KV bytes (measured
    and estimated), allocated peak above baseline (named by its source), decode step, TTFT and total latency."""
    ok = ok_rows(df)
    need(ok, ["use_cache", "kv_cache_bytes", "decode_step_s", "cache_implementation"], "latency against memory")
    cached = ok[ok["use_cache"].astype(bool) & ok["decode_step_s"].notna()].copy()
    if cached.empty:
        raise NoData("latency against memory: no cached scenario has a decode step time (one new token only?)")
    cached["cache"] = implementation_label(cached)
    out = keep(cached, SCENARIO + QUANT_FIELDS + [
        "cache", "cache_class", "kv_cache_bytes", "kv_cache_bytes_estimate", "peak_allocated_delta_bytes",
        "peak_allocated_source", "pinned_host_peak_delta_bytes", "decode_step_s", "ttft_s", "total_s"])
    by = [c for c in ["run", "model", "dtype", "prompt_len", "batch_size", "new_tokens", "decoding", "cache"]
          if c in out]
    return out.sort_values(by).reset_index(drop=True)


def cache_memory_latency_display(df: pd.DataFrame) -> pd.DataFrame:
    """The table shown on the page: stored bytes, peak bytes and decode step time side by side."""
    table = cache_memory_latency_table(df)
    return keep(table, ["run", "prompt_len", "new_tokens", "batch_size", "decoding", "cache", "kv_cache_bytes",
                        "kv_cache_bytes_estimate", "peak_allocated_delta_bytes", "decode_step_s", "total_s"])


def plot_cache_memory_latency(df: pd.DataFrame) -> Figure:
    """Decode step time (y) against memory (x): a filled marker at the stored KV bytes, a hollow one at the peak
    above baseline, joined, for each scenario; a panel per batch size, a colour per implementation, a marker per
    prompt length."""
    table = cache_memory_latency_table(df)
    var = variant(table, VARIANT_FIELDS + ["new_tokens"])
    table = table.assign(variant=var if var is not None else "", step_ms=table["decode_step_s"] * 1e3)
    batches, variants = ordered(table["batch_size"]), ordered(table["variant"])
    caches, prompts = ordered(table["cache"]), ordered(table["prompt_len"])
    colors, markers = palette(caches, "deep"), cycle(prompts, MARKERS)
    peak = "peak_allocated_delta_bytes" in table and table["peak_allocated_delta_bytes"].fillna(0).gt(0).any()
    source = ("; ".join(ordered(table["peak_allocated_source"].dropna().astype(str)))
              if peak and "peak_allocated_source" in table else "")
    xs = [*table["kv_cache_bytes"]] + ([*table["peak_allocated_delta_bytes"]] if peak else [])
    with style():
        fig, axes = facets(len(batches) * len(variants), ncols=len(batches), nrows=len(variants), sharex=True)
        for i, ax in enumerate(axes):
            var_, batch = variants[i // len(batches)], batches[i % len(batches)]
            part = table[(table["batch_size"] == batch) & (table["variant"] == var_)]
            for rec in part.to_dict("records"):
                color, marker = colors[rec["cache"]], markers[rec["prompt_len"]]
                if rec["kv_cache_bytes"] > 0:
                    ax.plot(rec["kv_cache_bytes"], rec["step_ms"], ls="none", marker=marker, color=color, ms=7,
                            zorder=3)
                top = rec.get("peak_allocated_delta_bytes")
                if peak and top == top and top and top > 0:
                    ax.plot(top, rec["step_ms"], ls="none", marker=marker, mfc="none", color=color, ms=7, zorder=3)
                    if rec["kv_cache_bytes"] > 0:
                        ax.plot([rec["kv_cache_bytes"], top], [rec["step_ms"]] * 2, color=color, lw=0.8, alpha=0.6)
            bytes_axis(ax, "x", [x for x in xs if x == x and x and x > 0])
            ax.set(title=f"batch size {batch}" + (f"\n{var_}" if var_ else ""), xlabel="bytes",
                   ylabel="decode step (ms)")
        for ax in axes:  # once every panel is drawn: the shared top then covers them all
            ax.set_ylim(bottom=0)
        legend(fig, [("cache", [(c, mark("o", colors[c])) for c in caches]),
                     ("prompt length", [(p, mark(markers[p])) for p in prompts]),
                     ("", [("stored KV bytes", mark("o"))] + ([("peak above baseline", HOLLOW)] if peak else []))])
        fig.suptitle("Latency against memory by cache implementation"
                     + (f"\n(peak above baseline: {source})" if source else ""))
    return fig
