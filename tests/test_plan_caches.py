"""The planner with every cache implementation: its KV bytes are the exact estimators', and the quantized cache's
transient working set (kvbench.estimate.quant_peak) equals the peak torch's CPU profiler measures in transformers'
own quantized layers."""

import importlib.util

import pytest
import torch

from kvbench import compat
from kvbench.estimate import quant_peak
from kvbench.measuring.engines.caches import needs
from kvbench.estimate.quantized import split_tokens, tensor_bytes

BACKENDS = [("fp8", None), ("quanto", 4), ("quanto", 2), ("hqq", 4), ("hqq", 3), ("hqq", 8)]
PACKAGES = {"quanto": "optimum.quanto", "hqq": "hqq"}


def _installed(backend):
    try:
        return backend not in PACKAGES or importlib.util.find_spec(PACKAGES[backend]) is not None
    except ModuleNotFoundError:
        return False


def _measured_peaks(backend, nbits, dtype, sequences, heads, dim, prompt_len, steps, residual_length):
    """Peak bytes above the live level before each update (prefill, then each decode step), from the profiler's
    allocation events: every tensor is made inside the profile, so every free is seen."""
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import cache_utils

    cls = getattr(cache_utils, {"quanto": "QuantoQuantizedLayer", "hqq": "HQQQuantizedLayer",
                                "fp8": "Fp8QuantizedLayer"}[backend])
    torch.manual_seed(0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        layer = cls() if backend == "fp8" else cls(nbits=nbits, residual_length=residual_length)
        for step in range(steps + 1):
            tokens = prompt_len if step == 0 else 1
            k, v = (torch.randn(sequences, heads, tokens, dim, dtype=dtype) for _ in range(2))
            with record_function(f"kvbench-update-{step}"):
                out = layer.update(k, v)
            del out, k, v
    events = sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns())
    memory = [(e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"]
    peaks = []
    for step in range(steps + 1):
        mark = next(e for e in events if e.name() == f"kvbench-update-{step}")
        start, end = mark.start_ns(), mark.start_ns() + mark.duration_ns()
        level = sum(n for t, n in memory if t < start)
        now = best = level
        for t, n in memory:
            if start <= t <= end:
                now += n
                best = max(best, now)
        peaks.append(best - level)
    return peaks


@pytest.mark.parametrize("backend,nbits", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_transient_equals_the_measured_peak_of_each_update(backend, nbits, dtype):
    if not _installed(backend):
        pytest.skip(f"{PACKAGES[backend]} is not installed")
    if backend not in compat.quantized_backends():  # fp8 before 5.21: refused (tests/test_caches.py)
        pytest.skip(needs(f"the {backend} quantized cache", compat.FP8_QUANTIZED_SINCE))
    e, residual = dtype.itemsize, None if backend == "fp8" else 4
    for sequences, heads, dim, prompt in [(1, 2, 64, 32), (2, 1, 128, 60)]:
        steps = 9  # two requantizations with R = 4 (steps 4 and 8)
        peaks = _measured_peaks(backend, nbits, dtype, sequences, heads, dim, prompt, steps, residual or 4)
        stored = 2 * sum(tensor_bytes(backend, nbits, sequences * heads * prompt * dim, e).values())
        assert peaks[0] - stored == quant_peak.prefill_transient_bytes(
            backend, nbits, sequences=sequences, kv_heads=heads, head_dims=(dim, dim), prompt_len=prompt,
            dtype_bytes=e)
        for k in range(1, steps + 1):
            q, r = split_tokens(prompt, k, residual)
            assert peaks[k] == quant_peak.decode_transient_bytes(
                backend, nbits, residual, sequences=sequences, kv_heads=heads, head_dims=(dim, dim),
                quantized_tokens=q, residual_tokens=r, dtype_bytes=e), (sequences, heads, dim, prompt, k)


def test_transient_by_hand_from_quantized_layer_update():
    """quanto 4 bits, fp16, 1 sequence x 2 heads x 64, 32 tokens quantized and 1 in the residual, R = 128:
    dequantized keys and values (32 tokens), keys_to_return and values_to_return (34 tokens), then the residual
    grows to 2 tokens: keys beside the old 1-token keys, freed before the values grow beside theirs."""
    token = 1 * 2 * 64 * 2  # bytes of one token of one tensor
    expected = 2 * 32 * token + 2 * 34 * token + (2 * token - token + 2 * token)
    assert quant_peak.decode_transient_bytes("quanto", 4, 128, sequences=1, kv_heads=2, head_dims=(64, 64),
                                             quantized_tokens=32, residual_tokens=1, dtype_bytes=2) == expected
    # the step that requantizes (r + 1 = R): instead of the residual, the new quantized keys beside the old ones
    # and the quantizer's working set on the values: (2e + 1) n + a scale and shift per 64 values
    n = 2 * 64 * 36
    new_k, old_k = (sum(tensor_bytes("quanto", 4, 2 * 64 * t, 2).values()) for t in (36, 32))
    expected = 2 * 32 * token + 2 * 36 * token + new_k - old_k + 5 * n + 2 * 2 * n // 64
    assert quant_peak.decode_transient_bytes("quanto", 4, 4, sequences=1, kv_heads=2, head_dims=(64, 64),
                                             quantized_tokens=32, residual_tokens=3, dtype_bytes=2) == expected


def test_decode_step_states():
    # R = 4, 10 new tokens: steps 1..9; the last (9: 8 positions fed after the prompt, residual 0) and the last
    # that requantized (8: residual 3 before it)
    assert quant_peak.decode_step_states(100, 10, 4) == [(8, 104, 3), (9, 108, 0)]
    assert quant_peak.decode_step_states(100, 3, 128) == [(2, 100, 1)]
    assert quant_peak.decode_step_states(100, 10, None) == [(9, 108, 0)]  # fp8: no residual
    assert quant_peak.decode_step_states(100, 1, 128) == []


# ---------------------------------------------------------------------------------------------- the planner
from kvbench.errors import UserError  # noqa: E402
from kvbench.estimate import capacity, offload, paged  # noqa: E402
from kvbench.estimate.kvcache import estimate_kv_cache_bytes, kv_layer_specs  # noqa: E402
from kvbench.inputs.configs import resolve_spec  # noqa: E402
from kvbench.plan.plan import plan_capacity  # noqa: E402

QUANT = [dict(quant_backend="quanto", quant_nbits=4), dict(quant_backend="quanto", quant_nbits=2,
                                                          quant_residual_length=32),
         dict(quant_backend="hqq", quant_nbits=3), dict(quant_backend="fp8")]


def _config(model):
    return resolve_spec(model)[1]


@pytest.mark.parametrize("model", ["tiny", "llama-3.1-8b", "gpt2"])
@pytest.mark.parametrize("impl", ["dynamic", "static", "hybrid", "sliding_window", "hybrid_chunked"])
def test_float_caches_equal_the_estimate(model, impl):
    w = capacity.make_workload(model, "float16", cache_implementation=impl)
    p, n, b = 900, 124, 3
    expected = estimate_kv_cache_bytes(_config(model), batch_size=b, prompt_len=p, new_tokens=n, dtype="float16",
                                       cache_implementation=impl)
    assert capacity.kv_decode_bytes(w, b, p + n, n) == expected  # the cache after generate: the last step
    row = capacity.breakdown(w, capacity.Target("x", 2**40, None), b, p + n, n)
    assert row["kv_transient_bytes"] == 0 and row["kv_host_bytes"] == 0


@pytest.mark.parametrize("model", ["tiny", "llama-3.1-8b"])
@pytest.mark.parametrize("quant", QUANT)
def test_quantized_plan_equals_the_estimate_plus_the_transient(model, quant):
    w = capacity.make_workload(model, "bfloat16", cache_implementation="quantized", **quant)
    config, p, n, b = _config(model), 1000, 100, 2
    residual = None if quant["quant_backend"] == "fp8" else quant.get("quant_residual_length", 128)
    options = dict(cache_implementation="quantized", quant_backend=w.quant_backend, quant_nbits=w.quant_nbits,
                   residual_length=w.quant_residual_length)
    (h, dk, dv), = {(s.kv_heads, s.k_head_dim, s.v_head_dim) for s in kv_layer_specs(config)}
    # the prefill: the prompt quantized, the last layer's quantization on top
    prefill = capacity.plan_kv.prefill_kv(w, b, p, p + n)
    assert prefill["kv_cache_bytes"] == estimate_kv_cache_bytes(config, batch_size=b, prompt_len=p, new_tokens=1,
                                                                dtype="bfloat16", **options)
    assert prefill["kv_transient_bytes"] == quant_peak.prefill_transient_bytes(
        w.quant_backend, w.quant_nbits, sequences=b, kv_heads=h, head_dims=(dk, dv), prompt_len=p, dtype_bytes=2)
    # decode: the larger of the candidate steps, each the estimate at that step plus its update's working set
    totals = []
    for step, q, r in quant_peak.decode_step_states(p, n, residual):
        stored = estimate_kv_cache_bytes(config, batch_size=b, prompt_len=p, new_tokens=step, dtype="bfloat16",
                                         **options)
        totals.append(stored + quant_peak.decode_transient_bytes(
            w.quant_backend, w.quant_nbits, residual, sequences=b, kv_heads=h, head_dims=(dk, dv),
            quantized_tokens=q, residual_tokens=r, dtype_bytes=2))
    decode = capacity.plan_kv.decode_kv(w, b, p + n, n)
    assert decode["kv_cache_bytes"] + decode["kv_transient_bytes"] == max(totals)
    assert len(totals) == (2 if residual == 32 else 1)  # R = 32 requantized at step 96 before the last, 99
    row = capacity.breakdown(w, capacity.Target("x", 2**40, None), b, p + n, n)
    assert row["total_bytes"] == (row["weights_bytes"] + row["kv_cache_bytes"] + row["kv_transient_bytes"]
                                  + row["activation_bytes"] + row["overhead_bytes"])


def test_quantized_plans_fit_longer_contexts_than_dynamic():
    target = capacity.Target("x", 24 * 2**30, 300)
    dynamic = capacity.longest_context(capacity.make_workload("llama-3.1-8b", "bfloat16"), target, 1, 128)
    for quant in QUANT:
        w = capacity.make_workload("llama-3.1-8b", "bfloat16", cache_implementation="quantized", **quant)
        longest = capacity.longest_context(w, target, 1, 128)
        assert longest["limit"] == "memory" and longest["context_len"] > dynamic["context_len"], quant
        assert longest["kv_transient_bytes"] > 0


@pytest.mark.parametrize("model,impl", [("llama-3.1-8b", "offloaded"), ("llama-3.1-8b", "offloaded_static"),
                                        ("gemma-2-9b", "offloaded"), ("gemma-2-9b", "offloaded_static"),
                                        ("tiny", "offloaded_hybrid")])
def test_offloaded_plans_count_only_the_gpu_part(model, impl):
    w = capacity.make_workload(model, "float16", cache_implementation=impl)
    config, p, n, b = _config(model), 2000, 48, 2
    decode = capacity.plan_kv.decode_kv(w, b, p + n, n)
    total = estimate_kv_cache_bytes(config, batch_size=b, prompt_len=p, new_tokens=n, dtype="float16",
                                    cache_implementation=impl)
    by_device = offload.estimate_kv_cache_bytes_by_device(config, device="cuda", batch_size=b, prompt_len=p,
                                                          new_tokens=n, dtype="float16", cache_implementation=impl)
    layers = offload.layer_bytes(config, batch_size=b, prompt_len=p, new_tokens=n, dtype="float16",
                                 cache_implementation=impl)
    moved = [n_ for n_, m in zip(layers, offload.offloadable(config, impl)) if m]
    # after generate the by-device estimate; at the peak of an update, the layer being updated beside the prefetched
    assert decode["kv_cache_bytes"] == by_device["cuda0"] + max(moved)
    assert decode["kv_cache_bytes"] + decode["kv_host_bytes"] == total
    assert decode["kv_host_bytes"] == by_device["cpu"] - max(moved) > 0
    row = capacity.breakdown(w, capacity.Target("x", 2**40, None), b, p + n, n)
    assert row["kv_host_bytes"] > 0 and row["kv_cache_bytes"] < total


def test_paged_plans_count_the_pool():
    w = capacity.make_workload("tiny", "float32", cache_implementation="paged")
    config, p, n, b = _config("tiny"), 1000, 24, 3
    pool = paged.paged_pool_bytes(config, dtype="float32", num_blocks=paged.paged_sizing(b, p, n).num_blocks)
    assert pool == (3 * 4 + 2) * 4 * 2 * 4 * 32 * 4 * 256  # 3 x ceil(1023 / 256) blocks + 2 trash, 4 layers
    row = capacity.breakdown(w, capacity.Target("x", 2**40, None), b, p + n, n)
    assert row["kv_prefill_bytes"] == row["kv_decode_bytes"] == row["kv_cache_bytes"] == pool
    with pytest.raises(UserError, match="full-attention"):
        capacity.make_workload("gemma-2-9b", "float16", cache_implementation="paged")


@pytest.mark.parametrize("kwargs,message", [
    (dict(cache_implementation="quantized", quant_nbits=3), "quant_nbits=3 is not one of the widths the quanto"),
    (dict(cache_implementation="quantized", quant_backend="hqq", quant_nbits=5), "hqq backend takes"),
    (dict(cache_implementation="quantized", quant_backend="fp8", quant_residual_length=64), "fp8"),
    (dict(cache_implementation="quantized", quant_residual_length=0), "quant_residual_length must be a positive"),
    (dict(cache_implementation="offload"), "cache_implementation must be one of"),
    (dict(cache_implementation="paged", num_beams=2), "beam"),
    (dict(kv_dtype="int4", cache_implementation="quantized", quant_nbits=2), "one or the other"),
    (dict(kv_dtype="float32", cache_implementation="quantized"), "residual in the model's dtype"),
])
def test_bad_cache_options_are_one_line(kwargs, message):
    with pytest.raises(UserError, match=message):
        plan_capacity("llama-3.1-8b", "h100", dtype="bfloat16", batch_sizes=[1], contexts=[4096], **kwargs)
