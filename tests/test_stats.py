"""`kvbench.results.stats`: the interval of the median, the spread and the percentiles, checked against figures
worked out by hand and against seeded draws from distributions whose median is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvbench.results.stats import cv, half_width, median_ci, percentiles, repeat_statistics, summary, tpot


def test_interval_of_ten_is_the_second_and_ninth_order_statistics():
    # P(B <= 1), B ~ Binomial(10, 1/2), is 11/1024: the pair (x_(2), x_(9)) covers 1 - 22/1024; (x_(3), x_(8))
    # would cover only 1 - 112/1024 = 0.89.
    values = [7.0, 1.0, 9.0, 3.0, 10.0, 2.0, 8.0, 4.0, 6.0, 5.0]
    assert median_ci(values) == (2.0, 9.0, pytest.approx(1 - 22 / 1024))


def test_too_few_repeats_give_min_and_max_with_the_level_they_reach():
    # three repeats: all three on one side of the median has chance 2 / 8, so (min, max) covers 75%
    assert median_ci([0.3, 0.1, 0.2]) == (0.1, 0.3, pytest.approx(0.75))
    assert median_ci([0.5]) == (0.5, 0.5, 0.0)
    low, high, level = median_ci([])
    assert math.isnan(low) and math.isnan(high) and math.isnan(level)
    assert median_ci([None, 0.2, float("nan"), 0.1, 0.3]) == (0.1, 0.3, pytest.approx(0.75))


@pytest.mark.parametrize("draw,median", [
    (lambda rng, n: rng.exponential(1.0, n), math.log(2)),                      # skewed: median ln 2
    (lambda rng, n: rng.lognormal(math.log(0.05), 0.3, n), 0.05),                # timing-like: median e^mu
    (lambda rng, n: rng.uniform(1.0, 3.0, n), 2.0),
])
def test_the_interval_holds_the_true_median_at_least_95_percent_of_the_time(draw, median):
    rng = np.random.default_rng(7)
    trials, n = 2000, 15
    held = sum(low <= median <= high for low, high, _ in (median_ci(draw(rng, n)) for _ in range(trials)))
    # order statistics are exact: coverage >= 95% (here 1 - 2 P(B <= 3) = 0.965 for n = 15), less sampling error
    assert held / trials >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / trials)


def test_coefficient_of_variation_of_a_known_normal():
    values = np.random.default_rng(3).normal(10.0, 1.0, 20_000)
    assert cv(values) == pytest.approx(0.1, rel=0.03)
    assert cv([2.0, 4.0]) == pytest.approx(math.sqrt(2) / 3)  # sd sqrt(2), mean 3
    assert math.isnan(cv([1.0]))


def test_percentiles_of_0_to_100():
    assert percentiles("x", range(101)) == {"x_p50": 50.0, "x_p90": 90.0, "x_p99": 99.0}
    assert percentiles("x", []) == {"x_p50": None, "x_p90": None, "x_p99": None}


def test_tpot_is_vllms_e2e_minus_ttft_over_the_tokens_after_the_first():
    assert tpot(1.0, 0.1, 10) == pytest.approx(0.1)
    assert tpot(0.2, 0.2, 1) is None


def test_half_width_is_relative_to_the_median():
    # ten values 1..10: interval (2, 9), median 5.5 -> half-width 3.5 / 5.5
    assert half_width(range(1, 11)) == pytest.approx(3.5 / 5.5)


def test_summary_names_every_field_and_keeps_json_nulls():
    out = summary("total_s", [0.1])
    assert out == {"total_s_n": 1, "total_s_ci_low": 0.1, "total_s_ci_high": 0.1, "total_s_ci_level": 0.0,
                   "total_s_cv": None}


def test_repeat_statistics_of_hand_built_repeats():
    # two repeats of 4 tokens: TTFT, then 3 decode intervals each
    runs = [{"total_s": 0.7, "ttft_s": 0.1, "decode_steps_s": [0.2, 0.2, 0.2], "generated_tokens": 4},
            {"total_s": 1.0, "ttft_s": 0.1, "decode_steps_s": [0.3, 0.3, 0.3], "generated_tokens": 4}]
    out = repeat_statistics(runs)
    assert out["tpot_s_repeats"] == pytest.approx([0.2, 0.3])  # (0.7 - 0.1) / 3, (1.0 - 0.1) / 3
    assert out["itl_s_p50"] == pytest.approx(0.25)             # six intervals, three at 0.2 and three at 0.3
    assert out["itl_s_p99"] == pytest.approx(0.3)
    assert out["ttft_s_p90"] == pytest.approx(0.1)
    assert out["total_s_n"] == 2 and out["total_s_ci_low"] == 0.7 and out["total_s_ci_high"] == 1.0
    assert out["total_s_ci_level"] == pytest.approx(0.5)  # two draws straddle the median with chance 1/2
    assert out["decode_step_s_n"] == 2


def test_paired_rounds_cancel_a_load_that_hits_both_sides_alike():
    # the machine slows 1x, 3x, 1x, 2x ... in the rounds; uncached always takes 4x the cached time of its round
    load = [1.0, 3.0, 1.0, 2.0, 1.5, 1.0, 2.5]
    cached = [0.1 * f for f in load]
    uncached = [0.4 * f for f in load]
    from kvbench.results.stats import paired_ratio_interval, ratio_interval

    assert paired_ratio_interval(cached, uncached)[:3] == pytest.approx((4.0, 4.0, 4.0))
    low, high = ratio_interval(cached, uncached)  # unpaired: the rounds' load widens the interval
    assert low < 3.0 and high > 5.0


def test_speedups_use_the_rounds_when_both_sides_share_them():
    import pandas as pd

    from kvbench.results.frame import speedups

    base = {"run": "r", "model": "m", "device": "cpu", "dtype": "float32", "prompt_len": 16, "new_tokens": 4,
            "batch_size": 1, "decoding": "greedy", "num_beams": 1, "status": "ok"}
    rows = [dict(base, use_cache=True, cache_implementation="dynamic", total_s=0.1,
                 total_s_repeats=[0.1, 0.3, 0.1], order_seed=5),
            dict(base, use_cache=False, cache_implementation="none", total_s=0.4,
                 total_s_repeats=[0.4, 1.2, 0.4], order_seed=5)]
    sp = speedups(pd.DataFrame(rows))
    assert sp["speedup"].tolist() == [pytest.approx(4.0)] and sp["speedup_paired"].tolist() == [True]
    assert sp["speedup_ci_low"].tolist() == [pytest.approx(4.0)] and sp["speedup_ci_high"].tolist() == [pytest.approx(4.0)]
    # 3 rounds: (min, max) of the ratios covers the median with 1 - 2 (1/2)^3 = 75%, not 95%, and says so
    assert sp["speedup_ci_level"].tolist() == [pytest.approx(0.75)]
    rows[1]["order_seed"] = None  # grouped: independent samples, a bootstrap interval
    sp = speedups(pd.DataFrame(rows))
    assert not sp["speedup_paired"].iloc[0] and sp["speedup_ci_low"].iloc[0] < 4.0 < sp["speedup_ci_high"].iloc[0]
    assert sp["speedup_ci_level"].tolist() == [pytest.approx(0.95)]


def test_an_interval_below_95_percent_says_what_it_covers():
    from kvbench.report.caveats import interval_text

    assert interval_text(1.42, 1.61, 0.75) == " [1.42-1.61] 75%"
    assert interval_text(1.42, 1.61, 0.95) == interval_text(1.42, 1.61) == " [1.42-1.61]"
    assert interval_text(float("nan"), 1.61, 0.75) == ""


def test_auto_repeats_stop_at_the_target_or_the_budget():
    from kvbench.results.stats import auto_stop

    assert auto_stop([1.0, 1.0], 0.05, 0.1) is None                    # fewer than 3
    # 3 equal repeats: a zero-width interval, but (min, max) of 3 covers only 75%: go on until 6
    assert auto_stop([1.0] * 5, 0.05, 0.1) is None
    assert auto_stop([1.0] * 6, 0.05, 0.1) == "interval within ±5% (±0.0% after 6 repeats)"
    # 1..10 around 5.5: interval (2, 9), half-width 3.5 / 5.5 = 64%: only the budget stops it
    assert auto_stop(range(1, 11), 0.05, 1.0, budget_s=30) is None
    assert auto_stop(range(1, 11), 0.05, 31.0, budget_s=30) == ("time budget of 30 s spent "
                                                              "(interval ±63.6% after 10 repeats)")
