"""What a whole kvbench sweep costs beside a bare transformers loop over the same grid.

Each round times `kvbench.run_sweep` over the --kv-grid (records written to a run folder, estimates, environment,
instruments: everything `kvbench run` does once the model is loaded) and a bare loop that calls `model.generate`
with the same inputs and keyword arguments, the same warm-up and repeats per scenario, and nothing else. The bare
loop runs before the sweep in even rounds and after it in odd ones, so neither always finds the machine warmer.
pytest-benchmark's statistics are the sweep's; `extra_info` holds both loops' round times, their medians and the
ratio `kvbench_over_bare` (read from the JSON, never asserted: timing is not a test).

    PYTHONPATH=src python -m pytest bench/test_bench_sweep_cost.py --benchmark-only --kv-full \
        --benchmark-json results/bench-sweep-cost/bench.json

It is timed under --kv-full only (the quick grid unless --kv-grid; many minutes on a 2-core CPU): without it,
`--benchmark-only` skips it with that reason. Under --benchmark-disable (the test command) one pass over a tiny
grid with one repeat checks that both loops generated the same tokens.
"""

import statistics
from time import perf_counter

import pytest
import torch

from kvbench import Scenario, grid, run_sweep
from kvbench.measuring.loading.models import synthetic_inputs
from kvbench.measuring.harness.rounds import synchronize

REPEATS, WARMUP = 3, 1  # per scenario, as `kvbench run` does by default
QUICK_CHECK = grid([8], [4], [1, 2])  # cache on and off: the --benchmark-disable pass


def bare_loop(loaded, scenarios: list[Scenario], repeats: int, warmup: int) -> list[list[int]]:
    """`generate` over the grid with nothing around it; the new tokens per sequence of every call, per scenario."""
    model, device, tokens = loaded.model, loaded.device, []
    for scenario in scenarios:
        inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, device, scenario.seed)
        kwargs = scenario.generate_kwargs()
        counts = []
        with torch.inference_mode():
            for _ in range(warmup + repeats):
                torch.manual_seed(scenario.seed)
                out = model.generate(**inputs, **kwargs)
                synchronize(device)
                counts.append(out.sequences.shape[1] - scenario.prompt_len)
                del out
        tokens.append(counts)
    return tokens


@pytest.mark.benchmark(group="sweep-cost")
def test_sweep_cost(benchmark, kv_model, kv_settings, tmp_path):
    quick = benchmark.disabled
    if not (quick or kv_settings.full):
        pytest.skip("the whole sweep's cost is timed with --kv-full (minutes on a CPU; docs/bench.md)")
    scenarios = QUICK_CHECK if quick else list(kv_settings.scenarios)
    repeats, warmup = (1, 0) if quick else (REPEATS, WARMUP)
    times = {"bare": [], "kvbench": []}
    seen = {"rounds": 0, "bare_done": False, "bare_tokens": None, "records": None}

    def time_bare():
        start = perf_counter()
        seen["bare_tokens"] = bare_loop(kv_model, scenarios, repeats, warmup)
        times["bare"].append(perf_counter() - start)
        seen["bare_done"] = True

    def setup():  # even rounds: the bare loop first
        seen["bare_done"] = False
        if seen["rounds"] % 2 == 0:
            time_bare()

    def sweep():
        start = perf_counter()
        seen["records"] = run_sweep(kv_model, scenarios, tmp_path / f"round-{seen['rounds']}", repeats=repeats,
                                    warmup=warmup)
        times["kvbench"].append(perf_counter() - start)

    def teardown():  # odd rounds: the bare loop after the sweep
        if not seen["bare_done"]:
            time_bare()
        seen["rounds"] += 1

    benchmark.pedantic(sweep, setup=setup, teardown=teardown, rounds=kv_settings.rounds,
                       warmup_rounds=kv_settings.warmup_rounds, iterations=1)

    records = seen["records"]
    assert [r["status"] for r in records] == ["ok"] * len(scenarios), [r.get("error") for r in records]
    assert [r["scenario_id"] for r in records] == [s.id for s in scenarios]
    # the same tokens from both loops: every bare call and kvbench's record give exactly N new tokens per sequence
    assert seen["bare_tokens"] == [[s.new_tokens] * (warmup + repeats) for s in scenarios]
    assert [(r["generated_tokens"], r["repeats"]) for r in records] == [(s.new_tokens, repeats) for s in scenarios]
    assert len(times["bare"]) == len(times["kvbench"])

    timed = slice(0 if quick else kv_settings.warmup_rounds, None)  # pedantic's warm-up rounds ran both loops too
    bare, swept = times["bare"][timed], times["kvbench"][timed]
    benchmark.extra_info.update(
        scenarios=[s.id for s in scenarios], repeats=repeats, warmup=warmup,
        bare_sweep_s=statistics.median(bare), kvbench_sweep_s=statistics.median(swept),
        bare_sweep_s_rounds=bare, kvbench_sweep_s_rounds=swept,
        kvbench_over_bare=statistics.median(swept) / statistics.median(bare),
        kvbench_over_bare_rounds=[k / b for k, b in zip(swept, bare)],
    )
