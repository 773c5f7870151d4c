"""Decoding strategies and their parameters as sweep axes: Scenario fields, ids, generate's keyword arguments, the
grid, `kvbench run` and the pytest plugin's options; beams' cache bytes measured against the estimate."""

from __future__ import annotations

import json

import pytest
import torch
from bench_support import copy_bench

import kvbench
from kvbench import Scenario, UserError, grid
from kvbench.cli.app import main
from kvbench.inputs.decoding import SamplingAxes
from kvbench.measuring.loading.models import synthetic_inputs

pytest_plugins = ["pytester"]


def test_existing_ids_and_generate_kwargs_are_unchanged():
    assert Scenario(8, 4).id == "P8-N4-B1-cache-dynamic-greedy"
    assert Scenario(8, 4, decoding="sample").id == "P8-N4-B1-cache-dynamic-sample"
    assert Scenario(8, 4, decoding="beam", num_beams=3).id == "P8-N4-B1-cache-dynamic-beam3"
    assert Scenario(8, 4, decoding="sample").generate_kwargs() == dict(
        max_new_tokens=4, min_new_tokens=4, use_cache=True, num_beams=1, do_sample=True,
        return_dict_in_generate=True, cache_implementation="dynamic", temperature=1.0, top_k=50, top_p=1.0)
    greedy = Scenario(8, 4).generate_kwargs()
    assert not {"temperature", "top_k", "top_p"} & set(greedy)
    assert (Scenario(8, 4).temperature, Scenario(8, 4).top_k, Scenario(8, 4).top_p) == (None, None, None)


def test_ids_carry_the_parameters_that_differ_from_the_defaults():
    s = Scenario(8, 4, decoding="sample", temperature=0.5, top_p=0.9)
    assert s.id == "P8-N4-B1-cache-dynamic-sample-t0.5-p0.9" and s.top_k == 50
    assert Scenario(8, 4, decoding="sample", top_k=0).id == "P8-N4-B1-cache-dynamic-sample-k0"
    assert Scenario(8, 4, decoding="sample", temperature=1.0, top_k=50, top_p=1.0).id.endswith("-sample")
    kw = s.generate_kwargs()
    assert (kw["temperature"], kw["top_k"], kw["top_p"]) == (0.5, 50, 0.9)
    assert Scenario(**s.as_dict()) == s  # records round-trip (the plugin passes scenarios as dicts)


@pytest.mark.parametrize("kwargs, named", [
    (dict(temperature=0.5), "needs decoding='sample'"),
    (dict(decoding="beam", num_beams=2, top_p=0.5), "needs decoding='sample'"),
    (dict(decoding="sample", temperature=0), "temperature"),
    (dict(decoding="sample", temperature=-1.0), "temperature"),
    (dict(decoding="sample", top_k=-1), "top_k"),
    (dict(decoding="sample", top_k=2.5), "top_k"),
    (dict(decoding="sample", top_p=0.0), "top_p"),
    (dict(decoding="sample", top_p=1.5), "top_p"),
])
def test_bad_parameters_are_named(kwargs, named):
    with pytest.raises(UserError, match=named):
        Scenario(8, 4, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(temperature=float("nan")), dict(top_k=-1), dict(top_k=True),
                                    dict(top_p=1.5)])
def test_a_scenario_and_the_reference_loop_refuse_a_bad_sampling_value_in_the_same_words(tiny_loaded, kwargs):
    from kvbench.measuring.engines.reference import decode

    with pytest.raises(UserError) as scenario:
        Scenario(8, 4, decoding="sample", **kwargs)
    with pytest.raises(UserError) as loop:
        next(decode(tiny_loaded.model, torch.ones(1, 4, dtype=torch.long), new_tokens=2, do_sample=True, **kwargs))
    assert str(scenario.value) == str(loop.value)


def test_grid_expands_parameters_only_where_they_apply():
    scenarios = grid([8], [4], use_cache=(True,), decodings=("greedy", "sample", "beam"), num_beams=[2, 3],
                     sampling=SamplingAxes(temperatures=[0.5, 1.5], top_ps=[0.9, 1.0]))
    assert [s.id.removeprefix("P8-N4-B1-cache-dynamic-") for s in scenarios] == [
        "greedy", "sample-t0.5-p0.9", "sample-t0.5", "sample-t1.5-p0.9", "sample-t1.5", "beam2", "beam3"]
    assert grid([8], [4], num_beams=4, decodings=("beam",))[0].num_beams == 4  # one int still works


def test_parameters_reach_generate():
    """top-k 1 samples the argmax (greedy's tokens); temperatures change the draw."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    torch.manual_seed(0)
    loaded = kvbench.load_model(config, device="cpu", dtype="float32")
    with torch.no_grad():
        loaded.model.lm_head.weight.mul_(30)  # a peaked distribution
    inputs = synthetic_inputs(config, 2, 6, "cpu", seed=0)

    def tokens(scenario):
        torch.manual_seed(0)
        return loaded.model.generate(**inputs, **scenario.generate_kwargs()).sequences

    greedy = tokens(Scenario(6, 5, 2))
    assert torch.equal(tokens(Scenario(6, 5, 2, decoding="sample", top_k=1)), greedy)
    hot, cold = (tokens(Scenario(6, 5, 2, decoding="sample", temperature=t, top_k=0)) for t in (3.0, 0.05))
    assert not torch.equal(hot, cold)


@pytest.mark.parametrize("num_beams", [2, 3])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_beams_kv_bytes_measured_equal_the_estimate(tiny_loaded, num_beams, batch_size):
    beam = kvbench.measure(tiny_loaded, Scenario(9, 4, batch_size, decoding="beam", num_beams=num_beams),
                           repeats=1, warmup=0)
    greedy = kvbench.measure(tiny_loaded, Scenario(9, 4, batch_size), repeats=1, warmup=0)
    assert beam["kv_cache_bytes"] == beam["kv_cache_bytes_estimate"] == num_beams * greedy["kv_cache_bytes"] > 0


def test_run_sweeps_sampling_parameters_and_beams(tiny_config_file, tmp_path):
    out = tmp_path / "run"
    code = main(["run", "--model", str(tiny_config_file), "--prompt-len", "8", "--new-tokens", "3", "--batch-size",
                 "1", "--use-cache", "on", "--decoding", "sample,beam", "--temperature", "0.5,1.5", "--top-p", "0.9",
                 "--num-beams", "2,3", "--repeats", "1", "--warmup", "0", "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["scenario_id"] for r in records] == [
        "P8-N3-B1-cache-dynamic-sample-t0.5-p0.9", "P8-N3-B1-cache-dynamic-sample-t1.5-p0.9",
        "P8-N3-B1-cache-dynamic-beam2", "P8-N3-B1-cache-dynamic-beam3"]
    assert [(r["temperature"], r["top_k"], r["top_p"]) for r in records] == [
        (0.5, 50, 0.9), (1.5, 50, 0.9), (None, None, None), (None, None, None)]
    assert all(r["status"] == "ok" and r["kv_cache_bytes"] == r["kv_cache_bytes_estimate"] for r in records)


@pytest.mark.parametrize("args, named", [
    (["--temperature", "hot"], "'hot'"), (["--temperature", "0"], "temperature"), (["--top-k", "-3"], "'-3'"),
    (["--top-p", "2"], "top_p"), (["--num-beams", "2,x"], "'x'"), (["--decoding", "beam", "--num-beams", "1"],
                                                                    "num_beams"),
])
def test_run_refuses_bad_parameters_in_one_line(tiny_config_file, tmp_path, capsys, args, named):
    argv = ["run", "--model", str(tiny_config_file), "--out", str(tmp_path / "never"), "--decoding", "sample"]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and not (tmp_path / "never").exists()


def test_plugin_options_expand_the_sampling_axes(pytester):
    copy_bench(pytester)
    pytester.makepyfile(test_ids="def test_scenario(kv_scenario):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kv-use-cache=on",
                                "--kv-prompt-len=8", "--kv-batch-size=1", "--kv-decoding=sample,beam",
                                "--kv-temperature=0.7", "--kv-top-k=0,5", "--kv-num-beams=2,3")
    ids = [line.split("::")[-1] for line in result.stdout.lines if "::" in line]
    assert ids == ["test_scenario[P8-N32-B1-cache-dynamic-sample-t0.7-k0]",
                   "test_scenario[P8-N32-B1-cache-dynamic-sample-t0.7-k5]",
                   "test_scenario[P8-N32-B1-cache-dynamic-beam2]", "test_scenario[P8-N32-B1-cache-dynamic-beam3]"]
    bad = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kv-decoding=sample",
                             "--kv-top-p=1.5")
    assert bad.ret != 0 and "top_p" in bad.stderr.str()
