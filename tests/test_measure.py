"""measure(): counts, positions, exact tokens, cache bytes equal to the estimate, JSON-safe records."""

import json

import pytest
import torch

import kvbench
from kvbench.compat import cache_from_output
from kvbench.measuring.loading.models import synthetic_inputs


@pytest.mark.parametrize("use_cache", [True, False])
def test_forward_calls_and_positions(tiny_loaded, use_cache):
    P, N = 12, 6
    rec = kvbench.measure(tiny_loaded, kvbench.Scenario(P, N, batch_size=2, use_cache=use_cache), repeats=2, warmup=0)
    assert rec["status"] == "ok"
    assert rec["forward_calls"] == N
    expected = [P] + [1] * (N - 1) if use_cache else [P + i for i in range(N)]
    assert rec["positions_per_call"] == expected
    assert rec["positions_processed"] == sum(expected) == rec["positions_processed_estimate"]
    assert rec["generated_tokens"] == N
    assert len(rec["decode_steps_s"]) == N - 1
    assert len(rec["total_s_repeats"]) == 2 and rec["repeats"] == 2
    assert rec["ttft_s"] < rec["total_s"]
    assert rec["kv_cache_bytes"] == rec["kv_cache_bytes_estimate"]
    assert (rec["kv_cache_bytes"] > 0) == use_cache
    assert rec["weight_bytes"] == rec["weight_bytes_estimate"]
    # eager decode, detected as such; compile is not applicable without the cache (None)
    assert rec["compile"] == ("auto" if use_cache else None) and rec["decode_compiled"] is False
    assert rec["kv_cache_reused"] is False and rec["compile_s"] is None and rec["warmup_runs"] == 0
    json.dumps(rec, allow_nan=False)  # flat and JSON-safe
    assert all(not isinstance(v, dict) for v in rec.values())


@pytest.mark.parametrize(
    "scenario",
    [
        kvbench.Scenario(10, 5, batch_size=2, decoding="sample"),
        kvbench.Scenario(10, 5, batch_size=2, decoding="beam", num_beams=3),
        kvbench.Scenario(10, 5, batch_size=1, cache_implementation="static"),
    ],
    ids=lambda s: s.id,
)
def test_variants_give_exactly_n_tokens_and_exact_bytes(tiny_loaded, scenario):
    rec = kvbench.measure(tiny_loaded, scenario, repeats=1, warmup=0)
    assert rec["generated_tokens"] == 5 and rec["forward_calls"] == 5
    assert rec["kv_cache_bytes"] == rec["kv_cache_bytes_estimate"] > 0


def test_one_new_token_has_no_decode_steps(tiny_loaded):
    rec = kvbench.measure(tiny_loaded, kvbench.Scenario(8, 1), repeats=1, warmup=0)
    assert rec["forward_calls"] == 1 and rec["decode_steps_s"] == [] and rec["decode_step_s"] is None
    assert rec["ttft_s"] == rec["total_s"]


def test_instruments_do_not_change_generation(tiny_loaded):
    """The hooks only observe: the same tokens come out as from a bare generate."""
    from kvbench.measuring.instruments.clock import Clock
    from kvbench.measuring.instruments.forwards import record_forwards

    scenario = kvbench.Scenario(9, 4, batch_size=2)
    inputs = synthetic_inputs(tiny_loaded.config, 2, 9, "cpu")
    bare = tiny_loaded.model.generate(**inputs, **scenario.generate_kwargs()).sequences
    with record_forwards(tiny_loaded.model, Clock(torch.device("cpu"))) as log:
        hooked = tiny_loaded.model.generate(**inputs, **scenario.generate_kwargs()).sequences
    assert torch.equal(bare, hooked) and len(log.positions) == 4
    assert not tiny_loaded.model._forward_pre_hooks  # removed afterwards


def test_cache_from_generate_output(tiny_loaded):
    inputs = synthetic_inputs(tiny_loaded.config, 1, 5, "cpu")
    out = tiny_loaded.model.generate(**inputs, **kvbench.Scenario(5, 3).generate_kwargs())
    assert kvbench.cache_nbytes(cache_from_output(out)) > 0


def test_prompt_beyond_context_is_refused(tiny_loaded):
    with pytest.raises(kvbench.UserError, match="exceeds"):
        kvbench.measure(tiny_loaded, kvbench.Scenario(120, 20))


def test_environment_block(tiny_loaded):
    rec = kvbench.measure(tiny_loaded, kvbench.Scenario(4, 2), repeats=1, warmup=0)
    import platform
    import sys

    import transformers

    assert (rec["env_kvbench"], rec["env_torch"], rec["env_transformers"], rec["env_python"]) == (
        kvbench.__version__, torch.__version__, transformers.__version__, platform.python_version())
    if sys.platform.startswith("linux"):  # the CPU's model name as the kernel reports it
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                 if line.startswith("model name")]
        if names:
            assert rec["env_cpu"] == rec["env_device_name"] == names[0]
    assert rec["peak_memory_source"]
