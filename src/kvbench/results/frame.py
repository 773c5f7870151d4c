"""Tables derived from records: the speedup of the cache per scenario (cached rows matched to uncached), and the
spread of repeated timings."""

from __future__ import annotations

import statistics

import pandas as pd

from ..inputs import axes
from ..inputs.axes import RUN_FIELDS

# The axes a sweep varies are declared once, on Scenario (kvbench.inputs.axes): tables show them in that order,
# and a cached row pairs with the uncached row that matches it on every axis but the cache switch and the
# cache-only axes (`axes.pair_keys`), in the same run, model, device and dtype.


# Repeats further apart than this, (max - min) / median, make a timing noisy (the report warns).
SPREAD_LIMIT = 0.10


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of scenarios that ran (status "ok"; records without a status are taken as ok)."""
    return df[df["status"].fillna("ok") == "ok"] if "status" in df else df


def pair_keys() -> list[str]:
    """The columns a cached row and its uncached twin share."""
    return ["run", *RUN_FIELDS, *axes.pair_keys()]


def with_axes(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the cache-only axes of uncached rows null, as records of schema 2 store them (schema 1 stored
    cache_implementation "none" and compile "auto" there: a default that looked like a choice)."""
    if "use_cache" not in df:
        return df
    out = df.copy()
    uncached = ~out["use_cache"].astype(bool)
    for name in axes.names(axes.CACHE_ONLY):
        if name in out:
            out[name] = out[name].astype(object).where(~uncached, None)
    return out


def with_axis_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the axes filled where records predate them, with the values they ran with: engine "generate",
    compile "auto" on cached rows, and sampling rows the parameters they sampled with (temperature 1.0, top-k 50,
    top-p 1.0); the cache-only axes of uncached rows null (`with_axes`)."""
    from ..inputs.decoding import SAMPLING_DEFAULTS

    out = with_axes(df)
    out["engine"] = out["engine"].fillna("generate") if "engine" in out else "generate"
    if "use_cache" in out:
        cached = out["use_cache"].astype(bool)
        column = out["compile"] if "compile" in out else pd.Series(None, index=out.index, dtype=object)
        out["compile"] = column.astype(object).where(~cached | column.notna(), "auto")
    sample = out["decoding"].astype(str) == "sample" if "decoding" in out else pd.Series(False, index=out.index)
    for name, default in SAMPLING_DEFAULTS.items():
        column = out[name] if name in out else pd.Series(None, index=out.index, dtype=object)
        out[name] = column.where(~sample | column.notna(), default)
    return out


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cached scenario that has an uncached twin: latencies, speedup, positions, KV bytes."""
    ok = with_axis_defaults(ok_rows(df)) if "decoding" in df else with_axes(ok_rows(df))
    keys = [k for k in pair_keys() if k in ok.columns]
    cached = ok[ok["use_cache"].astype(bool)]
    uncached = ok[~ok["use_cache"].astype(bool)]
    cols = [c for c in ["total_s", "ttft_s", "decode_step_s", "positions_processed", "total_s_spread", "scenario_id",
                        "total_s_repeats", "order_seed", "contention", "contention_reason"] if c in ok.columns]
    merged = cached.merge(uncached[keys + cols], on=keys, suffixes=("", "_nocache"), how="left")
    merged["speedup"] = merged["total_s_nocache"] / merged["total_s"]
    merged = with_speedup_interval(merged)
    order = keys + [name for name in axes.names(axes.CACHE_ONLY) if name in merged]
    return merged.sort_values(order).reset_index(drop=True)


def with_speedup_interval(merged: pd.DataFrame) -> pd.DataFrame:
    """`speedup_ci_low`, `speedup_ci_high`, `speedup_ci_level` (what the interval covers: 95%, or less where the
    rounds are too few) and `speedup_paired`: where both sides were measured interleaved in
    the same rounds, the speedup is the median of the per-round ratios and its interval their order statistics (`results.stats.paired_ratio_interval`), else a bootstrap of the
    ratio of the medians (`ratio_interval`); NaN without repeats on both sides."""
    from .stats import LEVEL, paired_ratio_interval, ratio_interval

    speedup, low, high, levels, paired = list(merged["speedup"]), [], [], [], []
    for rec in merged.to_dict("records"):
        cached, uncached = rec.get("total_s_repeats"), rec.get("total_s_repeats_nocache")
        if not isinstance(cached, (list, tuple)) or not isinstance(uncached, (list, tuple)):
            low.append(float("nan")), high.append(float("nan")), levels.append(float("nan")), paired.append(False)
            continue
        same_rounds = (rec.get("order_seed") is not None and rec.get("order_seed") == rec.get("order_seed_nocache")
                       and len(cached) == len(uncached))
        if same_rounds:  # the speedup itself is the median of the rounds' ratios
            speedup[len(low)], *interval = paired_ratio_interval(cached, uncached)
        else:
            interval = (*ratio_interval(cached, uncached), LEVEL)  # the bootstrap's
        low.append(interval[0]), high.append(interval[1]), levels.append(interval[2]), paired.append(bool(same_rounds))
    return merged.assign(speedup=speedup, speedup_ci_low=low, speedup_ci_high=high, speedup_ci_level=levels,
                         speedup_paired=paired)


def spread(repeats) -> float:
    """How far the repeats of one measurement lie apart: (max - min) / median; NaN without two repeats."""
    values = [v for v in repeats if v is not None] if isinstance(repeats, (list, tuple)) else []
    if len(values) < 2:
        return float("nan")
    median = statistics.median(values)
    return (max(values) - min(values)) / median if median else float("nan")


def noisy(value, limit: float = SPREAD_LIMIT) -> bool:
    """Whether a spread (as `spread` gives it) is over the limit; NaN (no repeats to compare) is not."""
    return value == value and value is not None and value > limit


def with_spread(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with `total_s_spread` (the spread of `total_s_repeats`), NaN where the repeats are absent."""
    repeats = df["total_s_repeats"] if "total_s_repeats" in df else pd.Series([None] * len(df), index=df.index)
    return df.assign(total_s_spread=[spread(r) for r in repeats])
