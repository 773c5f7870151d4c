"""kvbench.load_results on pytest-benchmark JSON: the same columns as a run folder, from real files."""

from __future__ import annotations

import json

import pytest
from bench_support import (  # noqa: F401
    copy_bench,
    kv_args,
    strict_json,
    transformers_imported,
    write_tiny_config,
)

from kvbench import Scenario, UserError, load_model, load_results, run_sweep
from kvbench.results.benchjson import records_from_benchmark_json
from kvbench.results.frame import speedups

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("transformers_imported")

PLAIN_BENCHMARK = """
def test_plain(benchmark):  # a benchmark of the same suite that is not kvbench's
    benchmark.pedantic(sum, args=([1, 2, 3],), rounds=2)
"""

# Fields that do not depend on timing: equal in a run folder and in a benchmark file of the same scenarios.
EXACT = [
    "model", "device", "dtype", "prompt_len", "new_tokens", "batch_size", "use_cache", "cache_implementation",
    "decoding", "num_beams", "status", "forward_calls", "positions_per_call", "positions_processed",
    "generated_tokens", "kv_cache_bytes", "kv_cache_bytes_estimate", "kv_cache_bytes_naive", "weight_bytes",
    "weight_bytes_estimate", "env_torch", "env_transformers",
]
SCENARIOS = [Scenario(8, 4, 1, use_cache=True), Scenario(8, 4, 1, use_cache=False)]


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_config(tmp_path)


def run_suite(pytester, config, *options):
    """bench/'s sweep (the two SCENARIOS) beside a plain benchmark, on the tiny model."""
    copy_bench(pytester, "test_bench_sweep")
    pytester.makepyfile(test_plain=PLAIN_BENCHMARK)
    result = pytester.runpytest(*kv_args(config, batch_size="1"), "--benchmark-only", *options)
    result.assert_outcomes(passed=3)


def test_benchmark_json_loads_into_run_folder_columns(pytester, tiny, tmp_path):
    run_suite(pytester, tiny, "--benchmark-json=out.json")
    out_json = pytester.path / "out.json"
    bench = load_results(out_json)
    run_sweep(load_model(str(tiny), device="cpu"), SCENARIOS, tmp_path / "run", repeats=1, warmup=0)
    folder = load_results(tmp_path / "run")

    assert set(folder.columns) <= set(bench.columns)
    assert len(bench) == 2 and set(bench["run"]) == {"out"}  # the plain benchmark is left out
    bench, folder = (df.set_index("scenario_id").sort_index() for df in (bench, folder))
    assert sorted(bench.index) == sorted(s.id for s in SCENARIOS)
    assert bench[EXACT].to_dict("index") == folder[EXACT].to_dict("index")

    data = strict_json(out_json)
    stats = {b["extra_info"]["scenario_id"]: b["stats"] for b in data["benchmarks"] if b["extra_info"]}
    for scenario_id, row in bench.iterrows():
        assert row["total_s"] == stats[scenario_id]["median"]
        assert row["repeats"] == stats[scenario_id]["rounds"] == 2
        assert row["total_s_repeats"] == stats[scenario_id]["data"] and len(row["total_s_repeats"]) == 2
        assert row["tokens_per_s"] == pytest.approx(4 / row["total_s"])
        assert row["benchmark"] == f"test_bench_sweep.py::test_generate[{scenario_id}]"
    pairs = speedups(bench.reset_index())  # a report function works on benchmark files as on run folders
    assert pairs["scenario_id"].tolist() == ["P8-N4-B1-cache-dynamic-greedy"]
    assert pairs["speedup"].tolist() == [pytest.approx(bench["total_s"].iloc[1] / bench["total_s"].iloc[0])]

    # A record without its env_* fields takes them from the file's machine_info.
    for entry in data["benchmarks"]:
        for key in [k for k in entry["extra_info"] if k.startswith("env_")]:
            del entry["extra_info"][key]
    stripped = tmp_path / "stripped.json"
    stripped.write_text(json.dumps(data))
    records = records_from_benchmark_json(stripped)
    machine = data["machine_info"]["kvbench"]
    assert [(r["env_torch"], r["env_device"]) for r in records] == [(machine["torch"], "cpu")] * 2


def test_autosaved_files_load_with_and_without_raw_data(pytester, tiny):
    run_suite(pytester, tiny, "--benchmark-autosave", "--benchmark-save-data")
    run_suite(pytester, tiny, "--benchmark-autosave")
    with_data, without_data = sorted((pytester.path / ".benchmarks").rglob("*.json"))
    df = load_results(with_data, without_data)
    assert len(df) == 4 and set(df["run"]) == {with_data.stem, without_data.stem}
    first, second = (df[df["run"] == path.stem] for path in (with_data, without_data))
    assert first["total_s_repeats"].map(len).tolist() == [2, 2]
    assert second["total_s_repeats"].isna().all()  # saved without --benchmark-save-data
    assert (second["total_s"] > 0).all() and (second["repeats"] == 2).all()
    assert first["kv_cache_bytes"].tolist() == second["kv_cache_bytes"].tolist() == [2 * 2 * 2 * 16 * 11 * 4, 0]


@pytest.mark.parametrize("text, message", [
    ("{not json", "not JSON"),
    ('{"results": []}', "not a pytest-benchmark JSON file (no 'benchmarks' list)"),
    ('{"machine_info": {}, "benchmarks": [{"name": "test_x", "extra_info": {}, "stats": {}}]}',
     "none of its 1 benchmarks carries a kvbench record"),
], ids=["invalid", "not-benchmark", "no-kvbench"])
def test_files_that_are_not_kvbench_benchmarks_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_results(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
