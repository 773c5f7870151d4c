"""The Python API names the bad value: each public function checks its arguments and raises ValueError or TypeError
naming the parameter and the value it got (and, for a model name where a config is expected, how to get the
config) -- not an AttributeError or a comparison between str and int deep inside."""

import pytest

import kvbench
from tiny_models import llama_config

SCENARIO = dict(prompt_len=4, new_tokens=2)


@pytest.mark.parametrize("kwargs, error, named", [
    (dict(repeats="3"), TypeError, ["repeats", "'3'", "str"]),
    (dict(repeats=0), ValueError, ["repeats", "0"]),
    (dict(warmup=-1), ValueError, ["warmup", "-1"]),
    (dict(warmup=1.5), TypeError, ["warmup", "1.5"]),
    (dict(profile_steps="yes"), TypeError, ["profile_steps", "'yes'"]),
])
def test_measure_names_a_bad_keyword(tiny_loaded, kwargs, error, named):
    with pytest.raises(error) as caught:
        kvbench.measure(tiny_loaded, kvbench.Scenario(**SCENARIO), **kwargs)
    for needle in named:
        assert needle in str(caught.value)


def test_measure_names_a_dict_where_a_scenario_is_expected(tiny_loaded):
    with pytest.raises(TypeError, match=r"scenario must be a Scenario, got \{'prompt_len': 4.*\(dict\).*"
                                        r"kvbench\.Scenario\(\*\*values\)"):
        kvbench.measure(tiny_loaded, dict(SCENARIO))


def test_measure_names_a_model_name_where_a_model_is_expected():
    with pytest.raises(TypeError, match=r"model must be .*got 'tiny' \(str\); load one with kvbench.load_model"):
        kvbench.measure("tiny", kvbench.Scenario(**SCENARIO))


ESTIMATE = dict(batch_size=1, prompt_len=8, new_tokens=4, dtype="float32")


@pytest.mark.parametrize("override, error, named", [
    (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1, got 0"),
    (dict(prompt_len=-3), ValueError, "prompt_len must be an integer >= 1, got -3"),
    (dict(new_tokens=0), ValueError, "new_tokens must be an integer >= 1, got 0"),
    (dict(num_beams=0), ValueError, "num_beams must be an integer >= 1, got 0"),
    (dict(prompt_len="8"), TypeError, "prompt_len must be an integer, got '8' (str)"),
    (dict(batch_size=2.0), TypeError, "batch_size must be an integer, got 2.0 (float)"),
])
def test_the_estimate_names_the_bad_value(override, error, named):
    with pytest.raises(error) as caught:
        kvbench.estimate_kv_cache_bytes(llama_config(), **{**ESTIMATE, **override})
    assert named in str(caught.value)


def test_kv_cache_bytes_at_and_the_naive_formula_name_the_bad_value():
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 0, got -1"):
        kvbench.kv_cache_bytes_at(llama_config(), batch_size=1, seq_len=-1, dtype="float32")
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 0"):
        kvbench.naive_kv_cache_bytes(llama_config(), batch_size=0, seq_len=4, dtype="float32")


@pytest.mark.parametrize("call", [
    lambda config: kvbench.estimate_kv_cache_bytes(config, **ESTIMATE),
    lambda config: kvbench.kv_cache_bytes_at(config, batch_size=1, seq_len=4, dtype="float32"),
    lambda config: kvbench.naive_kv_cache_bytes(config, batch_size=1, seq_len=4, dtype="float32"),
    lambda config: kvbench.param_count(config),
    lambda config: kvbench.weight_bytes_estimate(config, "float16"),
])
def test_a_preset_name_where_a_config_is_expected_says_how_to_get_the_config(call):
    with pytest.raises(TypeError, match=r"config must be a model config, got the name 'tiny'; get its config with "
                                        r"kvbench\.model_config\('tiny'\)"):
        call("tiny")
    with pytest.raises(TypeError, match=r"config must be a model config .*got 42 \(int\)"):
        call(42)


def test_the_config_the_hint_names_is_the_presets():
    """What the message tells the user to call works, and gives what the estimates take: tiny's bundled config
    (its preset file: 4 layers of 4 key-value heads of head_dim 32, keys and values, float32 = 4,096 B a token)."""
    config = kvbench.model_config("tiny")
    assert kvbench.kv_cache_bytes_at(config, batch_size=1, seq_len=1, dtype="float32") == 4 * 4 * (32 + 32) * 4
