"""The decode roofline: the bytes a cached decode step must read, the floor that sets at the memory bandwidth,
and the bandwidth a measured step achieved."""

from __future__ import annotations

from ..inputs.scenario import Scenario
from .kvcache import estimate_kv_cache_bytes, kv_cache_bytes_at


def decode_bytes_per_step(config, scenario: Scenario, dtype, weight_bytes: int) -> float | None:
    """Bytes a cached decode step must read, averaged over the N-1 steps: all weights plus the whole cache.

    None without the cache: a step then recomputes the whole sequence and is not a memory-bound read.
    """
    if not scenario.use_cache or scenario.new_tokens < 2:
        return None
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
        return weight_bytes + sum(kv) / len(kv)
    kv = [
        kv_cache_bytes_at(
            config, batch_size=scenario.batch_size, seq_len=scenario.prompt_len + k, dtype=dtype,
            num_beams=scenario.num_beams, cache_implementation=scenario.cache_implementation,
            max_cache_len=scenario.total_len,
        )
        for k in range(1, scenario.new_tokens)
    ]
    return weight_bytes + sum(kv) / len(kv)


def roofline(bytes_per_step: float | None, bandwidth_gbps: float | None, step_s: float | None) -> dict:
    """The decode step's floor at the memory bandwidth, and the bandwidth the measured step achieved."""
    achieved = bytes_per_step / step_s / 1e9 if bytes_per_step and step_s else None
    known = bool(bytes_per_step and bandwidth_gbps)
    return {
        "decode_roofline_s": bytes_per_step / (bandwidth_gbps * 1e9) if known else None,
        "achieved_bandwidth_gbps": achieved,
        "bandwidth_fraction": achieved / bandwidth_gbps if known and achieved else None,
    }
