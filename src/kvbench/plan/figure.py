"""The planner's figure: the longest context that fits against the batch size, per GPU or per model, with the
measured out-of-memory frontier where there is one. DataFrames in, a matplotlib Figure out (no pyplot state)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter


def _label(df: pd.DataFrame, by: str | None) -> pd.Series:
    if by is None:
        by = "gpu" if df["gpu"].nunique() > 1 else "model" if df["model"].nunique() > 1 else None
    if by is None:
        return df["model"].astype(str) + " on " + df["gpu"].astype(str)
    return df[by].astype(str)


def _bytes(n) -> str:
    from ..units import fmt_bytes

    return fmt_bytes(n)


def _tokens(value, _pos=None) -> str:
    return f"{value / 1024:g}k" if value >= 1024 else f"{value:g}"


def longest_context_figure(plan: pd.DataFrame, frontier: pd.DataFrame | None = None, by: str | None = None,
                           title: str | None = None) -> Figure:
    """Lines: the planner's longest context per batch size (rows with question == "longest_context"), one per GPU
    (or model, or `by`); dashed: each model's context window. Points with bars: the measured frontier, from the
    longest context that ran to the shortest that ran out of memory (`frontier.compare_frontier` rows)."""
    rows = plan[plan["question"] == "longest_context"].copy()
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if not rows.empty:
        rows["label"] = _label(rows, by)
        rows["longest"] = rows["context_len"].where(rows["fits"])
        nothing = []  # said in words on the axes: a line that is not there has no legend entry
        for label, group in rows.groupby("label", sort=False):
            group = group.sort_values("batch_size")
            if group["longest"].isna().all():
                nothing.append(f"{label}: nothing fits, at any batch size "
                               f"({_bytes(group['total_bytes'].min())} needed, {_bytes(group['usable_bytes'].max())} "
                               "usable)")
                continue
            ax.plot(group["batch_size"], group["longest"], marker="o", label=f"{label} (plan)")
        if nothing:
            ax.text(0.5, 0.5, "\n".join(nothing), transform=ax.transAxes, ha="center", va="center", wrap=True,
                    bbox=dict(facecolor="white", edgecolor="grey", alpha=0.9))
        for window in rows["context_window"].dropna().unique():
            ax.axhline(window, color="grey", linestyle="--", linewidth=0.8)
    if frontier is not None and not frontier.empty:
        for (model, cap), group in frontier.groupby(["model", frontier["memory_cap_bytes"].fillna(-1)], sort=False):
            group = group.sort_values("batch_size")
            ok = group["longest_ok_context"].astype(float)
            oom = group["shortest_oom_context"].astype(float).fillna(ok)
            where = f"cap {cap / 2**30:.2f} GiB" if cap > 0 else str(group["device_name"].iloc[0])
            ax.errorbar(group["batch_size"], ok, yerr=[ok * 0, (oom - ok).clip(lower=0)], fmt="s", capsize=3,
                        label=f"{model} measured ({where})")
            if rows.empty and "predicted_longest_context" in group:
                ax.plot(group["batch_size"], group["predicted_longest_context"].astype(float), linestyle=":",
                        marker=".", label=f"{model} predicted ({where})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(_tokens))
    ax.set_xlabel("batch size (sequences)")
    ax.set_ylabel("longest context that fits (tokens)")
    if title is None:
        title = "Longest context that fits in memory"
        if not rows.empty:  # the model, the GPU and the dtypes, each named (several: listed)
            title += f" on {', '.join(map(str, rows['gpu'].unique()))}"
            title = f"{', '.join(map(str, rows['model'].unique()))}: {title[0].lower()}{title[1:]}"
            kv = rows["kv_dtype"].fillna(rows["dtype"]).astype(str)
            title += f" ({', '.join(map(str, rows['dtype'].unique()))} weights, {', '.join(kv.unique())} KV cache)"
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return fig
