"""`kvbench compare BASE NEW... [--threshold 5%]`: the same scenarios across runs, as ratios new / base.

Scenarios match on every axis Scenario declares (`kvbench.inputs.axes`), and on model, device, dtype and the
cache-only axes (cache implementation, compile, quantization) unless those are what tells the runs apart (one value
per run, different between runs: two dtypes, two cache implementations). Latency and memory beyond the threshold
are marked; a regression in a gated metric makes the command exit 1, so it can gate CI. By default the gate is the latency and the memory
figures whose source is exact (the cache's bytes, allocated-bytes peaks on every device); the process's peak RSS moves with what
the allocator and the OS happen to do, so it gates only when asked (`--gate peak_rss_delta_bytes`).
"""

from __future__ import annotations

import math

import pandas as pd

from ..errors import UserError
from ..inputs import axes
from ..results.frame import ok_rows, with_axis_defaults
from .metrics import GATED, METRICS
from .pages import fmt_ratio
from .verdicts import (
    ALPHA,
    CANT_TELL,
    IMPROVEMENT,
    NO_CHANGE,
    REGRESSION,
    TEST,
    VERDICT_FIELDS,
    machine_of,
    metric_verdict,
    noise_notes,
    verdict_inputs,
)



def keys_always() -> list[str]:
    """What scenarios always match on: every axis but the cache-only ones."""
    return axes.names(axes.SIZE, axes.SWITCH, axes.DECODING, axes.INPUT)


def run_level() -> list[str]:
    """What scenarios match on unless it tells the runs apart: model, device, dtype, the cache-only axes."""
    return [*axes.RUN_FIELDS, *axes.names(axes.CACHE_ONLY)]

PEAKS = ("peak_allocated_delta_bytes", "peak_rss_delta_bytes")
# Records that name their peak only as peak_memory_delta_bytes (older runs, other writers): its source says which.
PEAK_SOURCES = {"torch.cuda.max_memory_allocated": "peak_allocated_delta_bytes",
                "torch.profiler allocation events": "peak_allocated_delta_bytes",
                "process peak RSS (VmHWM)": "peak_rss_delta_bytes"}
# Peak memory above baseline moves by a few pages between identical runs (RSS on CPU, allocator rounding):
# a change smaller than this is never a regression or an improvement.
PEAK_MEMORY_FLOOR_BYTES = 1 << 20


def parse_threshold(text: str) -> float:
    """ "5%" or "0.05" -> 0.05."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UserError(f"--threshold: {text!r} is not a percentage like 5% or a fraction like 0.05") from None
    if not raw.endswith("%") and value >= 1:
        raise UserError(f"--threshold: {text!r} reads as {value:.0%}; write {raw}% for {raw} percent")
    if not 0 <= value < 10:
        raise UserError(f"--threshold: {text!r} must be between 0% and 1000%")
    return value


def parse_gate(text: str) -> tuple[str, ...]:
    if text.strip() == "none":
        return ()
    metrics = tuple(m.strip() for m in text.split(","))
    for metric in metrics:
        if metric not in METRICS:
            raise UserError(f"--gate: {metric!r} is not one of {', '.join(METRICS)}")
    return metrics


def with_peaks_by_source(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the peaks of `PEAKS` filled from `peak_memory_delta_bytes` where a record names its peak only
    there (its `peak_memory_source` tells which it is)."""
    if "peak_memory_delta_bytes" not in df or "peak_memory_source" not in df:
        return df
    df = df.copy()
    for source, column in PEAK_SOURCES.items():
        rows = df["peak_memory_source"] == source
        current = df[column] if column in df else pd.Series(float("nan"), index=df.index)
        df[column] = current.where(current.notna() | ~rows, df["peak_memory_delta_bytes"])
    return df


def run_level_fields(df: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Fields with one value in each run that differ between runs: {field: {run: value}}."""
    out = {}
    for field in run_level():
        if field not in df:
            continue
        cache_only = field not in axes.RUN_FIELDS and "use_cache" in df
        rows = df[df["use_cache"].astype(bool)] if cache_only else df
        per_run = rows.groupby(rows["run"].astype(str), sort=False)[field].agg(lambda s: list(pd.unique(s.dropna())))
        if per_run.map(len).eq(1).all() and per_run.map(lambda v: str(v[0])).nunique() > 1:
            out[field] = {run: str(v[0]) for run, v in per_run.items()}
    return out


def match_keys(ok: pd.DataFrame) -> list[str]:
    """The columns scenarios are matched on: `keys_always`, and the run-level fields that do not tell the runs
    apart."""
    compared = run_level_fields(ok)
    return [k for k in keys_always() + run_level() if k in ok and k not in compared]


def scenario_label(rows: pd.DataFrame, keys: list[str]) -> pd.Series:
    """A readable name from the match keys: the scenario id without the axes compared across the runs
    (P16-N32-B1-cache-dynamic-greedy), and the model, device or dtype where they vary."""
    leave_out = [name for name in axes.names() if name not in keys]
    label = pd.Series([axes.scenario_id(rec, leave_out) for rec in rows.to_dict("records")], index=rows.index,
                      dtype=object)
    for key in ["dtype", "device", "model"]:
        if key in keys and rows[key].nunique() > 1:
            label = label + "-" + rows[key].astype(str)
    return label


def matched(base_rows: pd.DataFrame, new_rows: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Each scenario of NEW beside the scenario of BASE equal to it on every key (null matches null: an uncached
    row's cache-only axes), metrics (and the verdicts' inputs) suffixed _base and _new; a column a run lacks is null."""
    cols = keys + metrics
    return base_rows.reindex(columns=cols).merge(new_rows.reindex(columns=cols), on=keys, suffixes=("_base", "_new"))


def compare_table(df: pd.DataFrame, base: str, news: list[str], threshold: float = 0.05,
                  gated=GATED) -> pd.DataFrame:
    """One row per scenario of each NEW run matched in BASE: each metric's base, new, ratio and verdict, and the
    scenario's verdict (regression if any gated metric regressed, else improvement if any improved)."""
    ok = ok_rows(df)
    missing = [k for k in axes.names(axes.SIZE, axes.SWITCH) if k not in ok]
    if missing:
        raise UserError(f"cannot match scenarios: the records have no {', '.join(missing)}")
    ok = with_axis_defaults(with_peaks_by_source(ok.assign(use_cache=ok["use_cache"].astype(bool))))
    keys = match_keys(ok)
    metrics = [m for m in METRICS if m in ok and ok[m].notna().any()]
    base_rows = ok[ok["run"].astype(str) == base]
    frames = []
    for new in news:
        new_rows = ok[ok["run"].astype(str) == new]
        extra = [c for c in verdict_inputs(metrics) if c in base_rows or c in new_rows]
        merged = matched(base_rows, new_rows, keys, metrics + extra)
        if merged.empty:
            continue
        merged.insert(0, "scenario", scenario_label(merged, keys))
        merged.insert(0, "new_run", new)
        merged.insert(0, "base_run", base)
        machine = machine_of(merged, metrics)
        verdicts = pd.Series(NO_CHANGE, index=merged.index)
        regressed = pd.Series("", index=merged.index)
        for metric in metrics:
            floor = PEAK_MEMORY_FLOOR_BYTES if metric in PEAKS else 0
            found = [metric_verdict(row, metric, base, new, threshold, machine, floor)
                     for row in merged.to_dict("records")]
            for field in VERDICT_FIELDS:
                merged[f"{metric}_{field}"] = [f.get(field, math.nan) for f in found]
            verdict = merged[f"{metric}_verdict"]
            if metric in gated:
                verdicts[(verdict == CANT_TELL) & (verdicts == NO_CHANGE)] = CANT_TELL
                verdicts[(verdict == IMPROVEMENT) & verdicts.isin([NO_CHANGE, CANT_TELL])] = IMPROVEMENT
                verdicts[verdict == REGRESSION] = REGRESSION
                regressed[verdict == REGRESSION] += ", " + metric
        merged["machine_scale"] = machine.scale
        merged["verdict"] = verdicts
        merged["regressed"] = regressed.str.removeprefix(", ")
        frames.append(merged)
    if not frames:
        raise UserError(f"no scenario of {', '.join(news)} matches one of {base} (matched on {', '.join(keys)})")
    table = pd.concat(frames, ignore_index=True)
    order = ["base_run", "new_run", "scenario", *[k for k in keys if k not in keys_always()]]
    for metric in metrics:
        order += [f"{metric}_base", f"{metric}_new", *(f"{metric}_{f}" for f in VERDICT_FIELDS)]
    return table[order + ["verdict", "regressed", "machine_scale"]]


def regression_lines(table: pd.DataFrame) -> list[str]:
    """One line per regressed scenario naming each gated metric that regressed and its ratio:
    "new: P16-N8-B1-cache-dynamic-greedy: total_s 1.200x, kv_cache_bytes 1.500x"."""
    lines = []
    for rec in table[table["verdict"] == "regression"].to_dict("records"):
        metrics = rec["regressed"].split(", ")
        lines.append(f"{rec['new_run']}: {rec['scenario']}: "
                     + ", ".join(f"{m} {fmt_ratio(rec[f'{m}_ratio'])}" for m in metrics))
    return lines


def verdict_line(table: pd.DataFrame, threshold: float, gated) -> str:
    """The comparison's outcome in one line, naming the metrics that failed and how many scenarios each."""
    gates = [m for m in gated if f"{m}_ratio" in table]
    regressed = table.loc[table["verdict"] == "regression", "regressed"].str.split(", ").explode()
    if not len(regressed):
        return (f"pass: no gated metric ({', '.join(gates) or 'none'}) regressed beyond ±{threshold:.0%} "
                f"in {len(table)} matched scenario(s) ({TEST}, p < {ALPHA:g}, on the timed repeats)")
    counts = regressed.value_counts()
    named = ", ".join(f"{m} in {counts[m]} scenario(s)" for m in gates if m in counts)
    return (f"FAIL: {int((table['verdict'] == 'regression').sum())} of {len(table)} matched scenario(s) regressed "
            f"beyond ±{threshold:.0%}: {named}")


def unmatched(df: pd.DataFrame, base: str, news: list[str], table: pd.DataFrame) -> list[str]:
    """Lines naming the scenarios that did not run, and those of one run without a counterpart in the other."""
    lines = []
    if "status" in df:
        for rec in df[df["status"].fillna("ok") != "ok"].to_dict("records"):
            lines.append(f"{rec['run']}: {rec.get('scenario_id') or '?'} did not run ({rec['status']})")
    ok = with_axis_defaults(ok_rows(df).assign(use_cache=lambda d: d["use_cache"].astype(bool)))
    keys = match_keys(ok)

    def labels(run):
        rows = ok[ok["run"].astype(str) == run]
        return set(scenario_label(rows, keys)) if len(rows) else set()

    for new in news:
        matched = set(table.loc[table["new_run"] == new, "scenario"])
        for run, other in ((base, new), (new, base)):
            extra = sorted(labels(run) - matched)
            if extra:
                lines.append(f"{run}: no counterpart in {other} for {', '.join(extra)}")
    return lines


# ------------------------------------------------------------------ figure
def ratio_axis(ax, ratio: pd.Series, threshold: float) -> None:
    """A logarithmic axis of ratios (halving and doubling equally far from 1), ticks at powers of two and
    at the threshold band's edges."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    positive = ratio[ratio > 0]
    lo = min([1 - threshold, *positive]) / 1.15 if threshold < 1 else min([0.5, *positive]) / 1.15
    hi = max([1 + threshold, *positive]) * 1.15
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    powers = [k for k in range(-30, 31) if lo <= 2.0 ** k <= hi]
    step = max(1, math.ceil(len(powers) / 5))  # at most about five ticks, 1x among them
    ticks = [2.0 ** k for k in powers if k % step == 0]
    if len(ticks) < 3:
        ticks = sorted({*ticks, *(t for t in (1 - threshold, 1 + threshold) if lo <= t <= hi)})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}x"))
    ax.xaxis.set_minor_locator(NullLocator())


def plot_compare(table: pd.DataFrame, threshold: float = 0.05):
    """Ratios new / base side by side: a panel per metric, a bar per scenario (and new run), coloured by
    verdict, the threshold band shaded; left of 1 is faster or smaller."""
    from matplotlib.patches import Patch

    from .figstyle import facets, legend, style
    from .ticks import fit_figure

    metrics = [m for m in METRICS if f"{m}_ratio" in table and table[f"{m}_ratio"].notna().any()]
    several = table["new_run"].nunique() > 1
    labels = table["scenario"] + ((" · " + table["new_run"].astype(str)) if several else "")
    colors = {"regression": "#c0392b", "improvement": "#2e8b57", "no change": "#8c8c8c", "can't tell": "#d4a017",
              "": "#8c8c8c"}
    y = range(len(table))[::-1]
    with style():
        fig, axes = facets(len(metrics), ncols=len(metrics), panel=(2.6, 0.8 + 0.24 * len(table)), sharey=False)
        for ax, metric in zip(axes, metrics):
            ratio = table[f"{metric}_ratio"]
            ax.axvspan(1 - threshold, 1 + threshold, color="0.9", zorder=0)
            ax.barh(list(y), (ratio.where(ratio > 0) - 1).fillna(0), left=1, height=0.7,
                    color=[colors[v] for v in table[f"{metric}_verdict"]], zorder=2)
            ax.axvline(1, color="0.3", lw=0.8)
            ax.set_yticks(list(y), labels if ax is axes[0] else [""] * len(table))
            ratio_axis(ax, ratio, threshold)
            ax.set(title=metric, xlabel="new / base")
            ax.grid(axis="y", visible=False)
        legend(fig, [("verdict", [(k, Patch(color=c))
                                  for k, c in colors.items() if k]),
                     ("", [(f"±{threshold:.0%} band", Patch(color="0.9"))])])
        fig.suptitle("New run over base, per scenario (lower is better)")
        fit_figure(fig)
    return fig


# ------------------------------------------------------------------ command
def compare_page(df: pd.DataFrame, base: str, news: list[str], table: pd.DataFrame, threshold: float,
                 sources: list[str], gated=GATED):
    from .pages import Page, Section, Table
    from .report import environment_differences, figure_source

    regressions, improvements = (table["verdict"] == "regression").sum(), (table["verdict"] == "improvement").sum()
    gates = ", ".join(m for m in gated if f"{m}_ratio" in table) or "nothing"
    compared = run_level_fields(ok_rows(df))
    summary = Section("Verdict", "verdict", text=[
        verdict_line(table, threshold, gated) + ".",
        f"{regressions} regression(s) and {improvements} improvement(s) beyond ±{threshold:.0%} in "
        f"{len(table)} matched scenario(s); gated on {gates} (lower is better; peak memory changes under "
        f"{PEAK_MEMORY_FLOOR_BYTES >> 20} MiB are ignored; the peak RSS gates only when --gate names it).",
        "Matched across: " + (", ".join(f"{f} ({' vs '.join(v.values())})" for f, v in compared.items())
                              if compared else "nothing (same model, device, dtype and cache implementation)") + ".",
    ], notes=unmatched(df, base, news, table) + noise_notes(table, threshold, gated), figure="compare", tables=[
        Table("Ratios new / base per scenario", table, name="compare", collapsed=False)])
    summary.caption = f"Figure: ratios new / base per scenario, base {base}, of {figure_source(df)}."
    if regressions:
        summary.warning_title = "these scenarios regressed (gated metric, ratio new / base):"
        summary.warnings = regression_lines(table)
    env = environment_differences(df)
    env_section = Section("Environment differences", "environment", text=[
        "Fields whose values differ between the runs." if len(env) else "No environment field differs."],
        tables=[Table("Differing fields", env, name="environment_differences", collapsed=False, text=True)]
        if len(env) else [])
    page = Page(f"kvbench compare: {base} vs {', '.join(news)}",
                [f"Base: {base}. New: {', '.join(news)}.", f"Read from: {', '.join(sources)}."],
                [summary, env_section])
    return page
