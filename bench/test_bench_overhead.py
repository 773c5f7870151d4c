"""kvbench's instruments add almost nothing: its `total_s` beside a bare timed `generate` of the same inputs.

pytest-benchmark times `model.generate` with no kvbench hook attached (the benchmark's own statistics), in the same
conditions as `kvbench.measure` (inference mode, a garbage collection before each call, outside the timing); then
`kvbench.measure` measures the same scenario with the same number of repeats. `extra_info` carries both medians and
their ratio (`kvbench_over_bare`); the figure is read from the JSON, never asserted (timing is not a test).
"""

import gc

import pytest
import torch

from kvbench import Scenario, measure
from kvbench.measuring.loading.models import synthetic_inputs
from kvbench.measuring.harness.rounds import synchronize

SCENARIOS = [Scenario(64, 32, 1, use_cache=True), Scenario(64, 32, 1, use_cache=False), Scenario(256, 32, 4)]


@pytest.mark.benchmark(group="instrument-overhead")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_instrument_overhead(benchmark, kv_model, kv_settings, scenario):
    model, device = kv_model.model, kv_model.device
    inputs = synthetic_inputs(kv_model.config, scenario.batch_size, scenario.prompt_len, device, scenario.seed)
    kwargs = scenario.generate_kwargs()
    lengths = []

    def bare():
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
        synchronize(device)
        lengths.append(out.sequences.shape[1])

    benchmark.pedantic(bare, setup=lambda: gc.collect() and None, rounds=kv_settings.rounds, warmup_rounds=kv_settings.warmup_rounds,
                       iterations=1)
    record = measure(kv_model, scenario, repeats=kv_settings.rounds, warmup=kv_settings.warmup_rounds)
    assert set(lengths) == {scenario.total_len} and record["generated_tokens"] == scenario.new_tokens
    benchmark.extra_info.update(scenario_id=scenario.id, kvbench_total_s=record["total_s"],
                                kvbench_total_s_repeats=record["total_s_repeats"])
    if benchmark.stats is not None:  # None under --benchmark-disable
        bare_median = benchmark.stats.stats.median
        benchmark.extra_info.update(bare_total_s=bare_median, kvbench_over_bare=record["total_s"] / bare_median)
