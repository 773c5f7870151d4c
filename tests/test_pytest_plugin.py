"""kvbench's pytest plugin: options, fixtures, the bench/ suites, extra_info, machine_info, compare."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from bench_support import (  # noqa: F401
    TINY,
    copy_bench,
    kv_args,
    strict_json,
    transformers_imported,
    write_tiny_config,
)

from kvbench import Scenario, measure
from kvbench.inputs.configs import config_from_dict
from kvbench.measuring.measure import as_loaded
from kvbench.measuring.loading.models import random_model
from kvbench.pytest_plugin import (
    BENCHMARK_OWNED,
    expected_positions,
    extra_info_from,
    generation_problems,
    pair_id,
)

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("transformers_imported")

SCENARIO_TEST = """
from kvbench import Scenario

def test_scenario(kv_scenario):
    assert isinstance(kv_scenario, Scenario)
"""

# What the kvbench record in extra_info must hold (ttft, per-step median, forward calls, positions, KV bytes
# measured / estimated / naive, peak memory and its source), as in a run folder.
RECORD_FIELDS = {
    "scenario_id", "model", "device", "dtype", "prompt_len", "new_tokens", "batch_size", "use_cache",
    "cache_implementation", "ttft_s", "decode_step_s", "decode_steps_s", "forward_calls", "positions_per_call",
    "positions_processed", "positions_processed_estimate", "generated_tokens", "kv_cache_bytes",
    "kv_cache_bytes_estimate", "kv_cache_bytes_naive", "peak_memory_delta_bytes", "peak_memory_source",
    "env_torch", "env_transformers",
}


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_config(tmp_path)


def collected_ids(result) -> list[str]:
    return [line.split("::", 1)[1] for line in result.outlines if "::" in line]


# ---------------------------------------------------------------- options and grid
def test_options_are_registered_with_their_defaults(pytester):
    copy_bench(pytester)
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())
    for option in ("--kv-model", "--kv-device", "--kv-dtype", "--kv-grid", "--kv-prompt-len", "--kv-new-tokens",
                   "--kv-batch-size", "--kv-use-cache", "--kv-cache-implementation", "--kv-decoding",
                   "--kv-rounds", "--kv-warmup-rounds"):
        assert option in text
    assert "Hub id (default: tiny)" in text and "auto (default: cpu)" in text
    assert "{long,quick,small,standard}" in text and "--kv-full" in text


def test_the_quick_grid_and_ids_are_scenario_ids(pytester):
    copy_bench(pytester)
    pytester.makepyfile(test_ids=SCENARIO_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kv-grid=quick")
    ids = collected_ids(result)
    assert len(ids) == 12  # prompts 16,64,256 x 32 new tokens x batch 1,4 x cache on/off
    assert ids[:4] == [
        "test_scenario[P16-N32-B1-cache-dynamic-greedy]", "test_scenario[P16-N32-B1-nocache-greedy]",
        "test_scenario[P16-N32-B4-cache-dynamic-greedy]", "test_scenario[P16-N32-B4-nocache-greedy]",
    ]
    assert ids[-1] == "test_scenario[P256-N32-B4-nocache-greedy]"


def test_axis_options_replace_the_grids_axes(pytester):
    copy_bench(pytester)
    pytester.makepyfile(test_ids=SCENARIO_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v", "--kv-grid=standard", "--kv-prompt-len=8",
                                "--kv-new-tokens=4", "--kv-batch-size=2")
    result.assert_outcomes(passed=3)  # standard sweeps dynamic and static caches; kv_scenario is a Scenario
    assert [i.split(" ")[0] for i in collected_ids(result)] == [
        "test_scenario[P8-N4-B2-cache-dynamic-greedy]", "test_scenario[P8-N4-B2-cache-static-greedy]",
        "test_scenario[P8-N4-B2-nocache-greedy]",
    ]
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kv-grid=quick",
                                "--kv-use-cache=off", "--kv-prompt-len=8,16", "--kv-decoding=beam", "--kv-num-beams=2")
    assert collected_ids(result) == [
        "test_scenario[P8-N32-B1-nocache-beam2]", "test_scenario[P8-N32-B4-nocache-beam2]",
        "test_scenario[P16-N32-B1-nocache-beam2]", "test_scenario[P16-N32-B4-nocache-beam2]",
    ]


@pytest.mark.parametrize("grid, count", [("standard", 36), ("long", 16)])
def test_bigger_grids(pytester, grid, count):
    copy_bench(pytester)
    pytester.makepyfile(test_ids=SCENARIO_TEST)
    ids = collected_ids(pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", f"--kv-grid={grid}"))
    assert len(ids) == len(set(ids)) == count


def test_kvbench_marker_selects_the_kvbench_tests(pytester):
    copy_bench(pytester, "test_bench_sweep")
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    args = ("-p", "no:cacheprovider", "--collect-only", "-q", "--kv-prompt-len=8", "--kv-batch-size=1")
    assert collected_ids(pytester.runpytest(*args, "-m", "kvbench")) == [
        "test_generate[P8-N32-B1-cache-dynamic-greedy]", "test_generate[P8-N32-B1-nocache-greedy]"]
    assert collected_ids(pytester.runpytest(*args, "-m", "not kvbench")) == ["test_other"]
    assert "kvbench: a benchmark of generate" in pytester.runpytest("--markers").stdout.str()


@pytest.mark.parametrize("option, message", [
    ("--kv-prompt-len=16,x", "--kv-prompt-len: 'x' is not a positive integer"),
    ("--kv-batch-size=0", "--kv-batch-size: '0' is not a positive integer"),
    ("--kv-use-cache=maybe", "--kv-use-cache: 'maybe' is not one of on, off, both"),
    ("--kv-cache-implementation=pagedd", "--kv-cache-implementation: 'pagedd' is not one of dynamic, static"),
    ("--kv-rounds=0", "--kv-rounds: '0' is not a positive integer"),
    ("--kv-warmup-rounds=-1", "--kv-warmup-rounds: '-1' is not 0 or a positive integer"),
    ("--kv-device=tpu", "unknown device 'tpu'; use cpu, cuda, cuda:N or auto"),
    ("--kv-dtype=int3", "unknown dtype 'int3'"),
    ("--kv-grid=huge", "invalid choice: 'huge'"),
], ids=lambda value: value.split("=")[0].lstrip("-") if value.startswith("--") else "")
def test_bad_options_stop_the_session_with_one_line(pytester, option, message):
    copy_bench(pytester)
    pytester.makepyfile(test_ids=SCENARIO_TEST)
    result = pytester.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_unknown_model_stops_the_session(pytester):
    copy_bench(pytester, "test_bench_sweep")
    result = pytester.runpytest("-p", "no:cacheprovider", "--kv-model=no-such-model", "--benchmark-disable")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown model 'no-such-model'" in result.stdout.str() + result.stderr.str()


def test_model_is_loaded_once_per_session(pytester, tiny, monkeypatch):
    import kvbench.measuring.loading.models

    loads = []
    real = kvbench.measuring.loading.models.load_model
    monkeypatch.setattr(kvbench.measuring.loading.models, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    copy_bench(pytester, "test_bench_sweep")
    pytester.makepyfile(test_same="""
        seen = []

        def test_a(kv_model):
            seen.append(kv_model)

        def test_b(kv_model, kv_settings):
            assert seen == [kv_model] and kv_model.name == kv_settings.model
    """)
    result = pytester.runpytest(*kv_args(tiny, batch_size="1"), "--benchmark-disable")
    result.assert_outcomes(passed=4)
    assert loads == [(str(tiny),)]


# ---------------------------------------------------------------- the suites
def test_benchmark_json_carries_kvbench_records(pytester, tiny):
    copy_bench(pytester, "test_bench_sweep")
    result = pytester.runpytest(*kv_args(tiny), "--benchmark-only", "--benchmark-json=out.json")
    result.assert_outcomes(passed=4)
    data = strict_json(pytester.path / "out.json")
    assert "UNSERIALIZABLE" not in (pytester.path / "out.json").read_text()
    benches = {b["name"]: b for b in data["benchmarks"]}
    assert sorted(benches) == [
        "test_generate[P8-N4-B1-cache-dynamic-greedy]", "test_generate[P8-N4-B1-nocache-greedy]",
        "test_generate[P8-N4-B2-cache-dynamic-greedy]", "test_generate[P8-N4-B2-nocache-greedy]",
    ]
    for name, bench in benches.items():
        scenario = Scenario(**bench["params"]["kv_scenario"])
        extra = bench["extra_info"]
        assert name == f"test_generate[{scenario.id}]" == f"test_generate[{extra['scenario_id']}]"
        assert bench["group"] == pair_id(scenario)
        assert bench["stats"]["rounds"] == 2 and len(bench["stats"]["data"]) == 2
        assert RECORD_FIELDS <= set(extra) and not set(BENCHMARK_OWNED) & set(extra)
        assert extra["model"] == str(tiny) and extra["device"] == "cpu" and extra["dtype"] == "float32"
        assert extra["positions_per_call"] == expected_positions(scenario)
        assert extra["forward_calls"] == extra["generated_tokens"] == 4
        # 2 layers x K and V x 2 KV heads x head_dim 16 x (8 + 4 - 1) positions x batch x 4 bytes
        assert extra["kv_cache_bytes"] == (2 * 2 * 2 * 16 * 11 * scenario.batch_size * 4 if scenario.use_cache else 0)
        assert extra["peak_memory_source"] == "torch.profiler allocation events"
    info = data["machine_info"]["kvbench"]
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert {"driver", "cuda", "transformers", "device_name", "gpu_memory_bytes"} <= set(info)
    assert "hz_actual" not in data["machine_info"]["cpu"]


def test_original_study_is_its_own_benchmark(pytester, tiny):
    copy_bench(pytester, "test_bench_original_study")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--kv-model={tiny}", "--kv-rounds=1",
                                "--kv-warmup-rounds=0", "--benchmark-json=study.json")
    result.assert_outcomes(passed=2)
    benches = strict_json(pytester.path / "study.json")["benchmarks"]
    assert [b["name"] for b in benches] == [
        "test_original_study[P55-N100-B1-cache-dynamic-greedy]", "test_original_study[P55-N100-B1-nocache-greedy]",
    ]
    assert {b["group"] for b in benches} == {"original-study-P55-N100-B1-greedy"}
    cached, uncached = (b["extra_info"] for b in benches)
    assert cached["positions_processed"] == 154 and uncached["positions_processed"] == 100 * 55 + 4950


def test_original_study_skips_a_model_whose_context_is_too_short(pytester, tmp_path):
    config = write_tiny_config(tmp_path)
    config.write_text(config.read_text().replace('"max_position_embeddings": 256', '"max_position_embeddings": 64'))
    copy_bench(pytester, "test_bench_original_study")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--kv-model={config}", "--benchmark-disable", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*prompt_len + new_tokens = 155 exceeds * context of 64 tokens*"])


def test_benchmark_disable_runs_each_case_once_as_a_correctness_test(pytester, tiny):
    copy_bench(pytester, "test_bench_sweep")
    pytester.makeconftest((pytester.path / "conftest.py").read_text() + """
import pytest

CALLS = []

@pytest.fixture(scope="session")
def kv_model(kv_model):
    generate = kv_model.model.generate
    kv_model.model.generate = lambda **kw: CALLS.append(kw["max_new_tokens"]) or generate(**kw)
    return kv_model

def pytest_sessionfinish(session):
    print(f"generate calls: {CALLS}")
""")
    result = pytester.runpytest(*kv_args(tiny, batch_size="1"), "--benchmark-disable", "-s")
    result.assert_outcomes(passed=2)
    # once each as the benchmark's target (kvbench's record comes from that very round), once untimed for its
    # allocated peak: 2 scenarios x 2
    result.stdout.fnmatch_lines(["*generate calls: [[]4, 4, 4, 4[]]"])


def test_a_wrong_generation_fails_the_correctness_test(pytester, tiny):
    copy_bench(pytester, "test_bench_sweep")
    pytester.makeconftest((pytester.path / "conftest.py").read_text() + """
import pytest

@pytest.fixture(scope="session")
def kv_model(kv_model):  # one token short, as a model stopping early on EOS would be
    generate = kv_model.model.generate
    def short(**kw):
        return generate(**{**kw, "max_new_tokens": kw["max_new_tokens"] - 1,
                           "min_new_tokens": kw["min_new_tokens"] - 1})
    kv_model.model.generate = short
    return kv_model
""")
    for mode in ("--benchmark-disable", "--benchmark-json=out.json"):
        result = pytester.runpytest(*kv_args(tiny, batch_size="1", rounds="1"), mode)
        result.assert_outcomes(failed=2)
        result.stdout.fnmatch_lines([
            "*P8-N4-B1-cache-dynamic-greedy: generated 3 new tokens, not 4; 3 forward calls, not 4; "
            "positions per call [[]8, 1, 1[]], not [[]8, 1, 1, 1[]]*",
        ])
    assert strict_json(pytester.path / "out.json")["benchmarks"] == []  # no timings of a wrong generation


def test_two_saved_runs_compare(pytester, tiny):
    copy_bench(pytester, "test_bench_sweep")
    args = kv_args(tiny, batch_size="1", rounds="1") + ["--kv-warmup-rounds=0", "--benchmark-only"]
    for _ in range(2):
        pytester.runpytest(*args, "--benchmark-autosave").assert_outcomes(passed=2)
    saved = sorted(p.name for p in (pytester.path / ".benchmarks").rglob("*.json"))
    assert [name[:4] for name in saved] == ["0001", "0002"]
    # No --benchmark-compare-fail: one round each on a shared CPU can differ by any factor (a test checks no speed)
    result = pytester.runpytest(*args, "--benchmark-compare=0001")
    result.assert_outcomes(passed=2)
    out = result.stdout.str() + result.stderr.str()
    assert "Comparing against benchmarks from" in out
    assert "machine_info is different" not in out
    rows = {" ".join(line.split()[:2]) for line in result.outlines if line.startswith("test_generate[")}
    assert {row.split(" (")[0] + " " + row.split(" (")[1][:4] for row in rows} == {
        f"test_generate[P8-N4-B1-{cache}-greedy] {run}"  # each saved benchmark beside its new run
        for cache in ("cache-dynamic", "nocache") for run in ("0001", "NOW)")
    }
    elsewhere = pytester.mkdir("elsewhere")  # (the command imports a conftest.py in its folder)
    cli = subprocess.run(
        [sys.executable, "-m", "pytest_benchmark", f"--storage=file://{pytester.path / '.benchmarks'}",
         "compare", "0001", "0002", "--group-by=name"],
        cwd=elsewhere, capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    for run in ("0001", "0002"):
        assert f"test_generate[P8-N4-B1-cache-dynamic-greedy] ({run}" in cli.stdout


# ---------------------------------------------------------------- units
def test_extra_info_is_json_safe():
    record = {
        "scenario_id": "P8-N4-B1-cache-dynamic-greedy", "ttft_s": float("nan"), "decode_step_s": np.float64(0.5),
        "kv_cache_bytes": np.int64(1024), "dtype_obj": torch.float16, "positions_per_call": (8, 1, 1),
        "peak": float("inf"), "tensor": torch.tensor(3), "total_s": 1.0, "total_s_repeats": [1.0], "repeats": 1,
        "tokens_per_s": 4.0,
    }
    info = extra_info_from(record)
    assert json.loads(json.dumps(info, allow_nan=False)) == info
    assert info == {
        "scenario_id": "P8-N4-B1-cache-dynamic-greedy", "ttft_s": None, "decode_step_s": 0.5,
        "kv_cache_bytes": 1024, "dtype_obj": "torch.float16", "positions_per_call": [8, 1, 1], "peak": None,
        "tensor": 3,
    }


def test_a_real_record_becomes_plain_json_types():
    config = config_from_dict(dict(TINY))
    loaded = as_loaded(random_model(config, torch.device("cpu"), torch.float32).eval())
    info = extra_info_from(measure(loaded, Scenario(8, 4), repeats=1, warmup=0))

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        if isinstance(value, float):
            return math.isfinite(value)
        return value is None or isinstance(value, (bool, int, str))

    assert plain(info) and RECORD_FIELDS <= set(info)
    assert json.loads(json.dumps(info, allow_nan=False)) == info


def test_generation_problems_name_each_mismatch():
    scenario = Scenario(8, 4, batch_size=2)
    good = {"generated_tokens": 4, "forward_calls": 4, "positions_per_call": [8, 1, 1, 1],
            "kv_cache_bytes": 100, "kv_cache_bytes_estimate": 100}
    assert generation_problems(good, scenario, [(2, 12)] * 3) == []
    assert generation_problems({**good, "kv_cache_bytes_estimate": None}, scenario) == []  # no exact estimate
    assert generation_problems({**good, "kv_cache_bytes": 96}, scenario) == [
        "KV cache holds 96 bytes, estimate says 100"]
    assert generation_problems(good, scenario, [(2, 11)]) == [
        "timed generate returned sequences of shape (2, 11), not (2, 12)"]
    uncached = Scenario(8, 4, use_cache=False)
    assert expected_positions(uncached) == [8, 9, 10, 11]
    assert generation_problems({**good, "kv_cache_bytes": 0}, uncached) == [
        "positions per call [8, 1, 1, 1], not [8, 9, 10, 11]"]
    assert generation_problems({**good, "positions_per_call": [8, 9, 10, 11]}, uncached) == [
        "no cache asked for, but 100 bytes of cache came back"]


def test_pair_id_groups_cached_and_uncached_twins():
    assert pair_id(Scenario(16, 32, 4)) == pair_id(Scenario(16, 32, 4, use_cache=False)) == "P16-N32-B4-greedy"
    assert pair_id(Scenario(16, 32, 1, cache_implementation="static")) == "P16-N32-B1-greedy"
    assert pair_id(Scenario(16, 32, 1, decoding="beam", num_beams=2)) == "P16-N32-B1-beam2"


def test_each_measure_sizes_its_own_static_cache():
    """transformers keeps the longest static cache on the model; measure forgets it before each scenario."""
    loaded = as_loaded(random_model(config_from_dict(dict(TINY)), torch.device("cpu"), torch.float32).eval())
    small, big = Scenario(8, 4, cache_implementation="static"), Scenario(64, 16, cache_implementation="static")
    fresh = measure(loaded, small, repeats=1, warmup=0)["kv_cache_bytes"]
    assert measure(loaded, big, repeats=1, warmup=0)["kv_cache_bytes"] > fresh
    assert measure(loaded, small, repeats=1, warmup=0)["kv_cache_bytes"] == fresh
