"""The planner with every cache implementation: its KV bytes are the exact estimators', and the quantized cache's
transient working set (kvbench.estimate.quant_peak) equals the peak torch's CPU profiler measures in transformers'
own quantized layers."""

import importlib.util

import pytest
import torch

from kvbench.estimate import quant_peak
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
    from transformers.cache_utils import Fp8QuantizedLayer, HQQQuantizedLayer, QuantoQuantizedLayer

    cls = {"quanto": QuantoQuantizedLayer, "hqq": HQQQuantizedLayer, "fp8": Fp8QuantizedLayer}[backend]
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
