"""The engine axis: a scenario decoded by transformers' generate or by kvbench's plain-torch reference loop, measured
by the same instruments (forward counter, clock, cache bytes) -- in measure, `kvbench run` and the pytest plugin."""

from __future__ import annotations

import json

import pytest
import torch
from bench_support import copy_bench, kv_args, transformers_imported, write_tiny_config  # noqa: F401

import kvbench
from kvbench import Scenario, UserError, grid
from kvbench.cli.app import main
from kvbench.measuring.measure import run_generation
from kvbench.measuring.loading.models import synthetic_inputs

pytest_plugins = ["pytester"]


def test_ids_name_the_engine_only_when_it_is_not_generate():
    assert Scenario(8, 4).engine == "generate" and Scenario(8, 4).id == "P8-N4-B1-cache-dynamic-greedy"
    assert Scenario(8, 4, engine="reference").id == "P8-N4-B1-cache-dynamic-greedy-reference"
    assert Scenario(8, 4, use_cache=False, decoding="sample", top_p=0.9, engine="reference").id == (
        "P8-N4-B1-nocache-sample-p0.9-reference")


@pytest.mark.parametrize("kwargs, named", [
    (dict(engine="vllm"), "vllm"),
    (dict(engine="reference", decoding="beam", num_beams=2), "beam"),
    (dict(engine="reference", cache_implementation="static"), "static"),
])
def test_what_the_reference_engine_cannot_decode_is_refused(kwargs, named):
    with pytest.raises(UserError, match=named):
        Scenario(8, 4, **kwargs)


def test_grid_gives_the_reference_engine_what_it_decodes():
    scenarios = grid([8], [4], decodings=("greedy", "beam"), num_beams=2, cache_implementations=("dynamic", "static"),
                     engines=("generate", "reference"))
    assert [s.id.removeprefix("P8-N4-B1-") for s in scenarios] == [
        "cache-dynamic-greedy", "cache-dynamic-greedy-reference", "cache-dynamic-beam2", "cache-static-greedy",
        "cache-static-beam2", "nocache-greedy", "nocache-greedy-reference", "nocache-beam2"]


@pytest.mark.parametrize("decoding", [dict(), dict(decoding="sample", temperature=0.8, top_k=20, top_p=0.9)],
                         ids=["greedy", "sample"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
def test_both_engines_draw_the_same_tokens_for_a_scenario(tiny_loaded, use_cache, decoding):
    inputs = synthetic_inputs(tiny_loaded.config, 2, 7, "cpu", seed=0)

    def sequences(engine):
        scenario = Scenario(7, 5, 2, use_cache=use_cache, engine=engine, **decoding)
        torch.manual_seed(scenario.seed)  # as measure seeds each repeat
        return run_generation(tiny_loaded.model, inputs, scenario).sequences

    assert torch.equal(sequences("reference"), sequences("generate"))


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
def test_reference_records_count_what_generate_records_count(tiny_loaded, use_cache):
    records = {engine: kvbench.measure(tiny_loaded, Scenario(9, 5, 2, use_cache=use_cache, engine=engine),
                                       repeats=2, warmup=0) for engine in ("generate", "reference")}
    ref, gen = records["reference"], records["generate"]
    assert ref["status"] == "ok" and ref["engine"] == "reference" and ref["scenario_id"].endswith("-reference")
    for key in ("forward_calls", "positions_per_call", "generated_tokens", "kv_cache_bytes",
                "kv_cache_bytes_estimate"):
        assert ref[key] == gen[key], key
    assert ref["kv_cache_bytes"] == ref["kv_cache_bytes_estimate"]
    assert len(ref["decode_steps_s"]) == 4 and 0 < ref["ttft_s"] < ref["total_s"]


def test_run_benchmarks_both_engines(tiny_config_file, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_config_file), "--prompt-len", "8", "--new-tokens", "3", "--batch-size",
                 "1", "--engine", "generate,reference", "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["scenario_id"] for r in records] == [  # interleaved: each cached scenario beside its uncached twin
        "P8-N3-B1-cache-dynamic-greedy", "P8-N3-B1-nocache-greedy", "P8-N3-B1-cache-dynamic-greedy-reference",
        "P8-N3-B1-nocache-greedy-reference"]
    assert all(r["status"] == "ok" and r["forward_calls"] == 3 for r in records)


def test_run_refuses_an_unknown_engine(tiny_config_file, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_config_file), "--engine", "vllm", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'vllm'" in err


@pytest.mark.usefixtures("transformers_imported")
def test_plugin_times_the_reference_loop(pytester, tmp_path):
    copy_bench(pytester, "test_bench_sweep")
    tiny = write_tiny_config(tmp_path)
    result = pytester.runpytest(*kv_args(tiny, batch_size="1", rounds="1"), "--kv-engine=reference",
                                "--benchmark-disable", "-v")
    result.assert_outcomes(passed=2)  # the generation checks (tokens, forwards, positions, KV bytes) passed
    result.stdout.fnmatch_lines(["*test_generate[[]P8-N4-B1-cache-dynamic-greedy-reference[]] PASSED*"])
