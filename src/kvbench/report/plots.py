"""The report's figures: each `plot_*` takes a results DataFrame (`kvbench.load_results`) and returns a matplotlib
Figure; each `*_table` returns the table that figure draws. Usable from a notebook:

    df = kvbench.load_results("results/my-run")
    kvbench.plots.plot_speedup(df)

No pyplot state is touched (figures are plain `matplotlib.figure.Figure` objects); a figure that the records
cannot support (a column missing, no uncached twin, ...) raises `NoData` with the reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..results.frame import DECODING_AXES, SPREAD_LIMIT, ok_rows, speedups, with_spread
from .figstyle import (
    LINESTYLES,
    MARKERS,
    bytes_axis,
    count_axis,
    cycle,
    dash,
    empty_panel,
    facets,
    legend,
    log2_ticks,
    mark,
    ordered,
    palette,
    style,
    swatch,
)

SCENARIO = ["run", "model", "dtype", "device", "scenario_id", "prompt_len", "new_tokens", "batch_size",
            "use_cache", "cache_implementation", "decoding", "num_beams", *DECODING_AXES]
VARIANT_FIELDS = ["run", "model", "dtype", "device", "decoding", "num_beams", *DECODING_AXES]


class NoData(ValueError):
    """The records cannot support this figure; the message says why (shown in place of the figure)."""


# ------------------------------------------------------------------ rows and labels
def need(df: pd.DataFrame, columns: list[str], figure: str) -> None:
    missing = [c for c in columns if c not in df.columns or df[c].isna().all()]
    if missing:
        raise NoData(f"{figure}: the records have no {', '.join(missing)}")
    if df.empty:
        raise NoData(f"{figure}: no scenario ran successfully")


def keep(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return df[[c for c in dict.fromkeys(columns) if c in df.columns]].reset_index(drop=True)


def variant(df: pd.DataFrame, fields=VARIANT_FIELDS) -> pd.Series | None:
    """A label for what tells lines apart beyond the figure's own axes (run, dtype, ...), None if nothing does.

    Fields that only follow the run (each run has one model, one dtype) are left to the run's name. The
    Series is named after the fields it joins (the legend's title).
    """
    text = df[[f for f in fields if f in df.columns]].astype(object)
    text = text.where(text.notna(), "-").astype(str)  # a field some rows lack (sampling parameters) reads "-"
    varying = [f for f in text.columns if text[f].nunique() > 1]
    if "run" in varying:
        runs = text.groupby(text["run"])
        varying = ["run"] + [f for f in varying if f != "run" and (runs[f].nunique(dropna=False) > 1).any()]
    if not varying:
        return None
    return text[varying].agg(" · ".join, axis=1).rename(" · ".join(varying))


def cache_label(df: pd.DataFrame) -> pd.Series:
    """ "with cache" / "without cache", naming the implementation when the records hold several."""
    cached = df["use_cache"].astype(bool)
    impl = df["cache_implementation"].astype(str) if "cache_implementation" in df else pd.Series("", index=df.index)
    several = impl[cached].nunique() > 1
    return pd.Series(
        np.where(cached, "with cache" + ((" (" + impl + ")") if several else ""), "without cache"), index=df.index
    )


# ------------------------------------------------------------------ 1. speedup
def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cached scenarios beside their uncached twin: latencies, speedup, and the larger spread of the two."""
    ok = ok_rows(df)
    need(ok, ["use_cache", "total_s", "prompt_len", "new_tokens", "batch_size", "cache_implementation"], "speedup")
    if ok["use_cache"].astype(bool).all():
        raise NoData("speedup: no scenario ran without the cache (run with --use-cache both)")
    if not ok["use_cache"].astype(bool).any():
        raise NoData("speedup: no scenario ran with the cache")
    paired = speedups(with_spread(ok.assign(run=ok["run"] if "run" in ok else "")))
    paired = paired[paired["speedup"].notna()].copy()
    if paired.empty:
        raise NoData("speedup: no cached scenario has an uncached twin with the same prompt, tokens and batch")
    return keep(paired, SCENARIO + ["scenario_id_nocache", "total_s", "total_s_nocache", "speedup",
                                    "ttft_s", "ttft_s_nocache", "total_s_spread", "total_s_spread_nocache"])


def plot_speedup(df: pd.DataFrame) -> Figure:
    """Speedup (latency without cache / with cache) against prompt length; a panel per batch size,
    a colour per new-token count, a marker and line style per run or cache implementation where there are several."""
    table = speedup_table(df)
    var = variant(table, VARIANT_FIELDS + ["cache_implementation"])
    table = table.assign(variant=var if var is not None else "")
    batches, news, variants = ordered(table["batch_size"]), ordered(table["new_tokens"]), ordered(table["variant"])
    colors, markers, styles = palette(news, "viridis"), cycle(variants, MARKERS), cycle(variants, LINESTYLES)
    with style():
        fig, axes = facets(len(batches))
        for ax, batch in zip(axes, batches):
            part = table[table["batch_size"] == batch]
            for (new, var_), line in part.groupby(["new_tokens", "variant"], sort=True):
                line = line.sort_values("prompt_len")
                ax.plot(line["prompt_len"], line["speedup"], color=colors[new], marker=markers[var_],
                        ls=styles[var_], lw=1.6, ms=5)
            ax.axhline(1, color="0.4", lw=0.8, ls=":")
            log2_ticks(ax, table["prompt_len"])
            ax.set(title=f"batch size {batch}", xlabel="prompt length (tokens)", ylabel="speedup (x)")
        axes[0].set_ylim(0, max(1.1, float(table["speedup"].max()) * 1.08))
        legend(fig, [("new tokens", [(n, swatch(colors[n])) for n in news]),
                     (var.name if var is not None else "", [(v, mark(markers[v], ls=styles[v])) for v in variants]
                      if var is not None else [])])
        fig.suptitle("Speedup of the KV cache: latency without it / with it")
    return fig


# ------------------------------------------------------------------ 2. per-step decode latency
def decode_steps_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per decode step (long form): step k of a scenario feeds position prompt_len + k.

    Of scenarios that differ only in their number of new tokens, the longest is kept (the others overlap it).
    """
    ok = ok_rows(df)
    need(ok, ["decode_steps_s", "prompt_len", "new_tokens", "batch_size", "use_cache"], "per-step latency")
    ok = ok[ok["decode_steps_s"].map(lambda s: isinstance(s, list) and len(s) > 0)]
    if ok.empty:
        raise NoData("per-step latency: no scenario has per-step latencies (one new token only?)")
    group = [c for c in SCENARIO if c in ok.columns and c not in ("new_tokens", "scenario_id")]
    longest = ok.sort_values("new_tokens").groupby(group, dropna=False, sort=False).tail(1)
    if "total_s_repeats" in longest:
        longest = with_spread(longest)
    rows = []
    for rec in longest.to_dict("records"):
        for k, step_s in enumerate(rec["decode_steps_s"]):
            rows.append({**{c: rec.get(c) for c in SCENARIO + ["total_s_spread"] if c in rec},
                         "step": k, "position": rec["prompt_len"] + k, "step_s": step_s})
    return pd.DataFrame(rows)


def decode_steps_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per scenario: the first, median and last decode step, and how much the last is slower than the first."""
    steps = decode_steps_table(df)
    group = [c for c in SCENARIO if c in steps.columns]
    out = steps.groupby(group, dropna=False, sort=False).agg(
        steps=("step_s", "size"), first_step_s=("step_s", "first"), median_step_s=("step_s", "median"),
        last_step_s=("step_s", "last"),
        **({"total_s_spread": ("total_s_spread", "first")} if "total_s_spread" in steps else {}),
    ).reset_index()
    out.insert(out.columns.get_loc("last_step_s") + 1, "last_over_first", out["last_step_s"] / out["first_step_s"])
    return out


def plot_decode_steps(df: pd.DataFrame) -> Figure:
    """Decode step latency against the position it feeds: flat with the cache, growing without it.
    A panel per batch size (columns) and run (rows, where there are several); a colour per prompt length."""
    table = decode_steps_table(df)
    var = variant(table)
    table = table.assign(cache=cache_label(table), variant=var if var is not None else "",
                         step_ms=table["step_s"] * 1e3)
    batches, variants, prompts = ordered(table["batch_size"]), ordered(table["variant"]), ordered(table["prompt_len"])
    caches = ordered(table["cache"])  # "with cache ..." before "without cache"
    colors, styles = palette(prompts, "viridis"), cycle(caches, LINESTYLES)
    if "without cache" in styles and len(caches) <= 2:
        styles = {c: "--" if c == "without cache" else "-" for c in caches}
    with style():
        fig, axes = facets(len(batches) * len(variants), ncols=len(batches), nrows=len(variants), sharey="row",
                           sharex=True)
        for i, ax in enumerate(axes):
            var_, batch = variants[i // len(batches)], batches[i % len(batches)]
            part = table[(table["batch_size"] == batch) & (table["variant"] == var_)]
            for (prompt, cache), line in part.groupby(["prompt_len", "cache"], sort=True):
                ax.plot(line["position"], line["step_ms"], color=colors[prompt], ls=styles[cache], lw=1.3)
            if part.empty:
                empty_panel(ax, "no scenario")
            ax.set(title=f"batch size {batch}" + (f"\n{var_}" if var_ else ""), xlabel="position fed (tokens)",
                   ylabel="decode step (ms)")
        for ax in axes:  # after every panel is drawn: the shared top then covers them all
            ax.set_ylim(bottom=0)
        legend(fig, [("prompt length", [(p, swatch(colors[p])) for p in prompts]),
                     ("cache", [(c, dash(styles[c])) for c in caches])])
        fig.suptitle("Decode step latency by position: with and without the cache")
    return fig


# ------------------------------------------------------------------ 3. positions processed
def positions_table(df: pd.DataFrame) -> pd.DataFrame:
    """Positions the forward passes processed per sequence and generate, beside the analytic count."""
    ok = ok_rows(df)
    need(ok, ["positions_processed", "positions_processed_estimate", "prompt_len", "new_tokens", "use_cache"],
         "positions processed")
    out = keep(ok, SCENARIO + ["forward_calls", "positions_processed", "positions_processed_estimate"])
    out = out[out["positions_processed"].notna()]
    out["measured_over_estimate"] = out["positions_processed"] / out["positions_processed_estimate"]
    return out


def plot_positions(df: pd.DataFrame) -> Figure:
    """Measured positions (markers) on the analytic count (dashed lines), with and without the cache;
    a panel per new-token count."""
    table = positions_table(df)
    var = variant(table)
    table = table.assign(cache=cache_label(table), variant=var if var is not None else "")
    news, caches, variants = ordered(table["new_tokens"]), ordered(table["cache"]), ordered(table["variant"])
    colors, markers = palette(caches, "deep"), cycle(variants, MARKERS)
    with style():
        fig, axes = facets(len(news))
        for ax, new in zip(axes, news):
            part = table[table["new_tokens"] == new]
            for cache, rows in part.groupby("cache"):
                estimate = rows.drop_duplicates("prompt_len").sort_values("prompt_len")
                ax.plot(estimate["prompt_len"], estimate["positions_processed_estimate"], color=colors[cache],
                        ls="--", lw=1)
                for var_, dots in rows.groupby("variant"):
                    ax.plot(dots["prompt_len"], dots["positions_processed"], color=colors[cache], ls="none",
                            marker=markers[var_], ms=6, zorder=3)
            count_axis(ax, "y")
            log2_ticks(ax, table["prompt_len"])
            ax.set(title=f"{new} new tokens", xlabel="prompt length (tokens)",
                   ylabel="positions processed per sequence")
        legend(fig, [("cache", [(c, swatch(colors[c])) for c in caches]),
                     ("", [("measured", mark("o")), ("analytic", dash("--"))]),
                     (var.name if var is not None else "", [(v, mark(markers[v])) for v in variants]
                      if var is not None else [])])
        fig.suptitle("Positions processed per generate: measured and analytic")
    return fig


# ------------------------------------------------------------------ 4. memory
def memory_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cached scenarios: KV-cache bytes measured, exact estimate, naive formula, peak above baseline, ratios."""
    ok = ok_rows(df)
    need(ok, ["use_cache", "kv_cache_bytes", "kv_cache_bytes_estimate"], "memory")
    cached = ok[ok["use_cache"].astype(bool) & ok["kv_cache_bytes"].fillna(0).gt(0)]
    if cached.empty:
        raise NoData("memory: no cached scenario recorded the bytes its KV cache held")
    out = keep(cached, SCENARIO + ["kv_cache_bytes", "kv_cache_bytes_estimate", "kv_cache_bytes_naive",
                                   "peak_memory_delta_bytes", "peak_memory_source"])
    out["estimate_over_measured"] = out["kv_cache_bytes_estimate"] / out["kv_cache_bytes"]
    if "kv_cache_bytes_naive" in out:
        out["naive_over_measured"] = out["kv_cache_bytes_naive"] / out["kv_cache_bytes"]
    if "peak_memory_delta_bytes" in out:
        out["peak_over_estimate"] = out["peak_memory_delta_bytes"] / out["kv_cache_bytes_estimate"]
    return out


MEMORY_SERIES = [  # (label, predicted column, measured column)
    ("KV cache vs exact estimate", "kv_cache_bytes_estimate", "kv_cache_bytes"),
    ("KV cache vs naive formula", "kv_cache_bytes_naive", "kv_cache_bytes"),
    ("peak above baseline vs exact estimate", "kv_cache_bytes_estimate", "peak_memory_delta_bytes"),
]


def plot_memory(df: pd.DataFrame) -> Figure:
    """Left: measured bytes against predicted bytes (log-log) with the y = x line: the KV cache against the
    exact estimate and against the naive formula, and the peak memory above baseline against the estimate.
    Right: each prediction over the measured KV-cache bytes (1 = exact)."""
    table = memory_table(df)
    var = variant(table, VARIANT_FIELDS + ["cache_implementation"])
    table = table.assign(variant=var if var is not None else "")
    series = [s for s in MEMORY_SERIES if s[1] in table and s[2] in table]
    colors = palette([s[0] for s in series], "deep")
    variants = ordered(table["variant"])
    markers = cycle(variants, MARKERS)
    source = ("; ".join(ordered(table["peak_memory_source"].dropna().astype(str)))
              if "peak_memory_source" in table else "")
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
                     + (f"\n(peak above baseline: {source})" if source else ""))
    return fig


def memory_note(table: pd.DataFrame) -> str | None:
    if "peak_memory_delta_bytes" not in table:
        return "The records hold no peak memory, only the cache's bytes."
    flat = int((table["peak_memory_delta_bytes"].fillna(0) <= 0).sum())
    if flat:
        return (f"{flat} of {len(table)} scenarios show no peak memory above the baseline (zero or unreadable; the "
                "process can reuse memory it already holds), so they have no green point.")
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
    return fig


def spread_warnings(table: pd.DataFrame, limit: float = SPREAD_LIMIT) -> list[str]:
    """One line per scenario of a figure's table whose timed repeats lie more than `limit` apart
    (`total_s_spread`, and `total_s_spread_nocache` for the uncached twin of a speedup)."""
    lines = []
    for suffix in ("", "_nocache"):
        if f"total_s_spread{suffix}" not in table:
            continue
        for rec in table[table[f"total_s_spread{suffix}"] > limit].to_dict("records"):
            name = rec.get(f"scenario_id{suffix}") or (
                f"P{rec.get('prompt_len')}-N{rec.get('new_tokens')}-B{rec.get('batch_size')}"
                + ("-nocache" if suffix else ""))
            line = f"{rec['run']}: {name}" if rec.get("run") else name
            lines.append(f"{line}: repeats spread {rec[f'total_s_spread{suffix}']:.0%}")
    return list(dict.fromkeys(lines))
