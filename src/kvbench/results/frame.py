"""Tables derived from records: the speedup of the cache per scenario (cached rows matched to uncached), and the
spread of repeated timings."""

from __future__ import annotations

import statistics

import pandas as pd

# The axes a sweep varies, in the order tables show them. A new axis (a record field a `kvbench run` option sets)
# is added here: the run summary shows it as a column where it varies, and cached rows pair with uncached ones on it.
# The decoding parameters and the engine are axes too: sampling at two temperatures is two scenarios, and so is one
# scenario decoded by generate and by the reference loop (kvbench.inputs.decoding).
DECODING_AXES = ["temperature", "top_k", "top_p", "engine"]
AXES = ["prompt_len", "new_tokens", "batch_size", "cache_implementation", "decoding", "num_beams", "compile",
        *DECODING_AXES]

# What identifies a scenario apart from the cache setting (uncached rows have cache_implementation "none").
PAIR_KEYS = ["run", "model", "device", "dtype"] + [a for a in AXES if a != "cache_implementation"]


# Repeats further apart than this, (max - min) / median, make a timing noisy (the report warns).
SPREAD_LIMIT = 0.10


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of scenarios that ran (status "ok"; records without a status are taken as ok)."""
    return df[df["status"].fillna("ok") == "ok"] if "status" in df else df


def with_decoding_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the decoding axes filled where records predate them: engine "generate", and sampling rows the
    parameters they ran with (temperature 1.0, top-k 50, top-p 1.0)."""
    from ..inputs.decoding import SAMPLING_DEFAULTS

    out = df.copy()
    out["engine"] = out["engine"].fillna("generate") if "engine" in out else "generate"
    sample = out["decoding"].astype(str) == "sample" if "decoding" in out else pd.Series(False, index=out.index)
    for name, default in SAMPLING_DEFAULTS.items():
        column = out[name] if name in out else pd.Series(None, index=out.index, dtype=object)
        out[name] = column.where(~sample | column.notna(), default)
    return out


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cached scenario that has an uncached twin: latencies, speedup, positions, KV bytes."""
    ok = ok_rows(df)
    keys = [k for k in PAIR_KEYS if k in ok.columns]
    cached = ok[ok["use_cache"].astype(bool)]
    uncached = ok[~ok["use_cache"].astype(bool)]
    cols = [c for c in ["total_s", "ttft_s", "decode_step_s", "positions_processed", "total_s_spread", "scenario_id",
                        "total_s_repeats", "order_seed", "contention", "contention_reason"] if c in ok.columns]
    merged = cached.merge(uncached[keys + cols], on=keys, suffixes=("", "_nocache"), how="left")
    merged["speedup"] = merged["total_s_nocache"] / merged["total_s"]
    merged = with_speedup_interval(merged)
    return merged.sort_values(keys + ["cache_implementation"]).reset_index(drop=True)


def with_speedup_interval(merged: pd.DataFrame) -> pd.DataFrame:
    """`speedup_ci_low`, `speedup_ci_high` (95%) and `speedup_paired`: where both sides were measured interleaved in
    the same rounds, the speedup is the median of the per-round ratios and its interval their order statistics (`results.stats.paired_ratio_interval`), else a bootstrap of the
    ratio of the medians (`ratio_interval`); NaN without repeats on both sides."""
    from .stats import paired_ratio_interval, ratio_interval

    speedup, low, high, paired = list(merged["speedup"]), [], [], []
    for rec in merged.to_dict("records"):
        cached, uncached = rec.get("total_s_repeats"), rec.get("total_s_repeats_nocache")
        if not isinstance(cached, (list, tuple)) or not isinstance(uncached, (list, tuple)):
            low.append(float("nan")), high.append(float("nan")), paired.append(False)
            continue
        same_rounds = (rec.get("order_seed") is not None and rec.get("order_seed") == rec.get("order_seed_nocache")
                       and len(cached) == len(uncached))
        if same_rounds:  # the speedup itself is the median of the rounds' ratios
            speedup[len(low)], *interval = paired_ratio_interval(cached, uncached)
        else:
            interval = ratio_interval(cached, uncached)
        low.append(interval[0]), high.append(interval[1]), paired.append(bool(same_rounds))
    return merged.assign(speedup=speedup, speedup_ci_low=low, speedup_ci_high=high, speedup_paired=paired)


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
