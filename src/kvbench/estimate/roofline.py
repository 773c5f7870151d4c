"""The decode roofline: the bytes a cached decode step must read, the floor that sets at the memory bandwidth,
and the bandwidth a measured step achieved."""

from __future__ import annotations

from ..inputs.scenario import Scenario
from .kvcache import estimate_kv_cache_bytes, kv_cache_bytes_at
from .weights import decode_weight_bytes


def decode_bytes_per_step(config, scenario: Scenario, dtype) -> float | None:
    """Bytes a cached decode step must read, averaged over the N-1 steps: a pure function of config, scenario and
    dtype. The weights (`weights.decode_weight_bytes`: every parameter once, one embedding row per sequence, the LM
    head whole) plus the whole cache after the step's update (P + k positions at step k; a static cache holds its
    preallocated P + N - 1). Left out: the dynamic cache's `torch.cat` traffic (each step copies the layer's keys
    and values into a new tensor), grouped-query attention's key/value expansion where the attention kernel
    materializes it, and activations (logits, hidden states, masks).

    None without the cache: a step then recomputes the whole sequence and is not a memory-bound read.
    """
    if not scenario.use_cache or scenario.new_tokens < 2:
        return None
    sequences = scenario.batch_size * scenario.num_beams
    if scenario.cache_implementation == "quantized":  # its bytes depend on when it last requantized
        kv = [
            estimate_kv_cache_bytes(
                config, batch_size=scenario.batch_size, prompt_len=scenario.prompt_len, new_tokens=k + 1,
                dtype=dtype, num_beams=scenario.num_beams, cache_implementation="quantized",
                quant_backend=scenario.quant_backend, quant_nbits=scenario.quant_nbits,
                residual_length=scenario.quant_residual_length,
            )
            for k in range(1, scenario.new_tokens)
        ]
        return decode_weight_bytes(config, dtype, sequences) + sum(kv) / len(kv)
    kv = [
        kv_cache_bytes_at(
            config, batch_size=scenario.batch_size, seq_len=scenario.prompt_len + k, dtype=dtype,
            num_beams=scenario.num_beams, cache_implementation=scenario.cache_implementation,
            max_cache_len=scenario.total_len - 1,  # generate preallocates max_length - 1: the last token is never fed
        )
        for k in range(1, scenario.new_tokens)
    ]
    return decode_weight_bytes(config, dtype, sequences) + sum(kv) / len(kv)


def roofline(bytes_per_step: float | None, bandwidth_gbps: float | None, step_s: float | None,
             device_step_s: float | None = None) -> dict:
    """The decode step's floor at the memory bandwidth, and the bandwidth the measured step achieved: over the
    wall-clock step (`step_s`) and, where profiled, over the device-busy time of the step (`device_step_s`)."""
    achieved = bytes_per_step / step_s / 1e9 if bytes_per_step and step_s else None
    known = bool(bytes_per_step and bandwidth_gbps)
    return {
        "decode_roofline_s": bytes_per_step / (bandwidth_gbps * 1e9) if known else None,
        "achieved_bandwidth_gbps": achieved,
        "bandwidth_fraction": achieved / bandwidth_gbps if known and achieved else None,
        "achieved_bandwidth_device_gbps": bytes_per_step / device_step_s / 1e9 if bytes_per_step and device_step_s
        else None,
    }
