"""The report's figures: each `plot_*` takes a results DataFrame (`kvbench.load_results`) and returns a matplotlib
Figure; each `*_table` returns the table that figure draws. Usable from a notebook:

    df = kvbench.load_results("results/my-run")
    kvbench.plots.plot_speedup(df)

No pyplot state is touched (figures are plain `matplotlib.figure.Figure` objects); a figure that the records
cannot support (a column missing, no uncached twin, ...) raises `NoData` with the reason.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..results.frame import SPREAD_LIMIT, ok_rows, speedups, with_spread
from .figrows import CACHE_FIELDS, SCENARIO, VARIANT_FIELDS, NoData, cache_label, keep, need, variant  # noqa: F401
from .figstyle import (
    LINESTYLES,
    MARKERS,
    count_axis,
    cycle,
    dash,
    empty_panel,
    facets,
    legend,
    mark,
    ordered,
    palette,
    style,
    swatch,
)
from .memplots import (  # noqa: F401 - the figures of bytes, drawn beside these
    MEMORY_SERIES,
    bandwidth_note,
    bandwidth_table,
    memory_note,
    memory_table,
    plot_bandwidth,
    plot_memory,
)
from .ticks import category_ticks, fit_figure


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
                                    "speedup_ci_low", "speedup_ci_high", "speedup_ci_level", "speedup_paired",
                                    "ttft_s", "ttft_s_nocache", "total_s_spread", "total_s_spread_nocache",
                                    "contention", "contention_reason", "contention_nocache",
                                    "contention_reason_nocache"])


def plot_speedup(df: pd.DataFrame) -> Figure:
    """Speedup (latency without cache / with cache) against prompt length; a panel per batch size,
    a colour per new-token count, a marker and line style per run or cache implementation where there are several."""
    table = speedup_table(df)
    var = variant(table, VARIANT_FIELDS + CACHE_FIELDS)
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
            category_ticks(ax, table["prompt_len"])
            ax.set(title=f"batch size {batch}", xlabel="prompt length (tokens)", ylabel="speedup (x)")
        axes[0].set_ylim(0, max(1.1, float(table["speedup"].max()) * 1.08))
        legend(fig, [("new tokens", [(n, swatch(colors[n])) for n in news]),
                     (var.name if var is not None else "", [(v, mark(markers[v], ls=styles[v])) for v in variants]
                      if var is not None else [])])
        fig.suptitle("Speedup of the KV cache: latency without it / with it")
        fit_figure(fig)
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
        fit_figure(fig)
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
            category_ticks(ax, table["prompt_len"])
            ax.set(title=f"{new} new tokens", xlabel="prompt length (tokens)",
                   ylabel="positions processed per sequence")
        legend(fig, [("cache", [(c, swatch(colors[c])) for c in caches]),
                     ("", [("measured", mark("o")), ("analytic", dash("--"))]),
                     (var.name if var is not None else "", [(v, mark(markers[v])) for v in variants]
                      if var is not None else [])])
        fig.suptitle("Positions processed per generate: measured and analytic")
        fit_figure(fig)
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
