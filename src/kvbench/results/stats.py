"""Statistics of timed repeats, in every record: n, the median, the 95% interval of the median, the coefficient of
variation, and the percentiles of TTFT, of the per-token decode latency (TPOT) and of the inter-token latency.

The interval of the median is distribution-free: the order statistics (x_(k), x_(n-k+1)) whose coverage
1 - 2·P(B <= k-1), B ~ Binomial(n, 1/2), is at least 95% (`scipy.stats.quantile_test`). Below 6 repeats no pair of
order statistics reaches 95%; the interval is then (min, max) and its level says what it covers (75% for 3 repeats).
Definitions follow vLLM's benchmark: TPOT = (E2E - TTFT) / (N - 1) per generate, inter-token latency (ITL) = every
interval between consecutive tokens, over repeats x steps. Pure functions of numbers: numpy and scipy, no torch.
"""

from __future__ import annotations

import math

import numpy as np

from ..inputs.options import AUTO_MAX_REPEATS  # noqa: F401 - the cap of --repeats auto

LEVEL = 0.95
PERCENTILES = (50, 90, 99)
# Enough repeats for the order statistics of the median to cover 95%: 2 · 2^-n <= 0.05.
MIN_REPEATS_FOR_LEVEL = 6
BOOTSTRAP_SEED = 0


def clean(values) -> np.ndarray:
    """The finite numbers of `values` (None, NaN and infinities dropped), as floats."""
    if values is None:
        return np.array([], dtype=float)
    out = np.array([np.nan if v is None else v for v in values], dtype=float)
    return out[np.isfinite(out)]


def coverage(n: int, k: int) -> float:
    """The probability that (x_(k), x_(n-k+1)) of n draws holds the median of any continuous distribution."""
    from scipy.stats import binom

    return float(1 - 2 * binom.cdf(k - 1, n, 0.5))


def median_ci(values, level: float = LEVEL) -> tuple[float, float, float]:
    """(low, high, the level the interval reaches) of the median of `values`; NaNs when there are none."""
    x = np.sort(clean(values))
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    if n == 1:
        return float(x[0]), float(x[0]), 0.0
    from scipy.stats import quantile_test

    ci = quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(confidence_level=level)
    if not (np.isfinite(ci.low) and np.isfinite(ci.high)):  # too few for `level`: the widest interval there is
        return float(x[0]), float(x[-1]), coverage(n, 1)
    k = int(np.searchsorted(x, ci.low, side="left")) + 1  # ci.low is x_(k)
    return float(ci.low), float(ci.high), coverage(n, k)


def cv(values) -> float:
    """The coefficient of variation: the sample standard deviation over the mean (NaN below 2 values)."""
    x = clean(values)
    if len(x) < 2 or x.mean() == 0:
        return math.nan
    return float(x.std(ddof=1) / x.mean())


def half_width(values) -> float:
    """Half the width of the median's interval, over the median: the relative precision `--repeats auto` targets."""
    low, high, _ = median_ci(values)
    median = float(np.median(clean(values))) if len(clean(values)) else math.nan
    return (high - low) / 2 / median if median else math.nan


def summary(name: str, values) -> dict:
    """`<name>_n`, `_ci_low`, `_ci_high`, `_ci_level`, `_cv` of a list of repeats (the median is the record's
    `<name>` itself)."""
    x = clean(values)
    low, high, level = median_ci(x)
    nan_none = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v  # noqa: E731
    return {f"{name}_n": int(len(x)), f"{name}_ci_low": nan_none(low), f"{name}_ci_high": nan_none(high),
            f"{name}_ci_level": nan_none(level), f"{name}_cv": nan_none(cv(x))}


def percentiles(name: str, values) -> dict:
    """`<name>_p50`, `_p90`, `_p99` (linear interpolation between order statistics; None without values)."""
    x = clean(values)
    return {f"{name}_p{p}": (float(np.percentile(x, p)) if len(x) else None) for p in PERCENTILES}


def ratio_interval(base, new, level: float = LEVEL) -> tuple[float, float]:
    """The percentile-bootstrap interval of median(new) / median(base) of two independent samples
    (`scipy.stats.bootstrap`, 2000 resamples, seeded: the same data give the same interval); NaNs with fewer than
    2 values a side."""
    base, new = clean(base), clean(new)
    if len(base) < 2 or len(new) < 2:
        return math.nan, math.nan
    from scipy.stats import bootstrap

    def ratio(b, n, axis=-1):
        return np.median(n, axis=axis) / np.median(b, axis=axis)

    res = bootstrap((base, new), ratio, n_resamples=2000, confidence_level=level, method="percentile",
                    vectorized=True, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_ratio_interval(base, new, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(median, low, high, the level reached) of the per-round ratios new_i / base_i of repeats paired by round
    (interleaved), the interval of their median from order statistics (`median_ci`: below 6 rounds it cannot
    reach 95%, and says what it covers); NaNs without pairs."""
    pairs = [(b, n) for b, n in zip(base, new) if b and n and b > 0 and math.isfinite(b) and math.isfinite(n)]
    ratios = [n / b for b, n in pairs]
    if not ratios:
        return math.nan, math.nan, math.nan, math.nan
    low, high, reached = median_ci(ratios, level)
    return float(np.median(ratios)), low, high, reached


AUTO_MIN_REPEATS = 3
AUTO_BUDGET_S = 60.0  # per scenario, from its first timed repeat


def auto_stop(totals, target: float, elapsed_s: float, budget_s: float = AUTO_BUDGET_S) -> str | None:
    """Why `--repeats auto` stops after these repeats, or None to go on: at least `AUTO_MIN_REPEATS`, then the median's
    95% interval (its level reached) within ±`target` of the median, or the time budget spent."""
    x = clean(totals)
    if len(x) < AUTO_MIN_REPEATS:
        return None
    low, high, level = median_ci(x)
    width = (high - low) / 2 / float(np.median(x))
    if level >= LEVEL and width <= target:
        return f"interval within ±{target:.0%} (±{width:.1%} after {len(x)} repeats)"
    if elapsed_s >= budget_s:
        return f"time budget of {budget_s:g} s spent (interval ±{width:.1%} after {len(x)} repeats)"
    return None


def tpot(total_s: float, ttft_s: float, tokens: int) -> float | None:
    """vLLM's time per output token after the first: (E2E - TTFT) / (N - 1); None for one token."""
    return (total_s - ttft_s) / (tokens - 1) if tokens > 1 else None


def repeat_statistics(runs: list[dict]) -> dict:
    """The statistics of a scenario's timed repeats (each a dict with `total_s`, `ttft_s`, `decode_steps_s` and
    `generated_tokens`): the interval and spread of total, TTFT and decode step; percentiles of TTFT, TPOT and ITL."""
    totals = [r["total_s"] for r in runs]
    ttfts = [r["ttft_s"] for r in runs]
    steps = [float(np.median(r["decode_steps_s"])) if r["decode_steps_s"] else None for r in runs]
    tpots = [tpot(r["total_s"], r["ttft_s"], r["generated_tokens"]) for r in runs]
    itl = [s for r in runs for s in r["decode_steps_s"]]
    return {
        **summary("total_s", totals), **summary("ttft_s", ttfts), **summary("decode_step_s", steps),
        "tpot_s_repeats": tpots, **percentiles("ttft_s", ttfts), **percentiles("tpot_s", tpots),
        **percentiles("itl_s", itl),
    }
