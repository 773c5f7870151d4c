"""The analytic side: pure functions of a config and a scenario (no weights, no GPU).

KV-cache bytes live in `kvcache` (they must match real caches to the byte); this module adds the weights,
the positions each generate processes, and the decode roofline.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .kvcache import dtype_nbytes, kv_cache_bytes_at
from .scenario import Scenario


@lru_cache(maxsize=64)
def _param_count(config_json: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM
    import json

    data = json.loads(config_json)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


def param_count(config) -> int:
    """Exact parameter count from the config alone: the model is built on the meta device (no memory)."""
    return _param_count(config.to_json_string(use_diff=False))


def weight_bytes_estimate(config, dtype) -> int:
    return param_count(config) * dtype_nbytes(dtype)


def positions_per_call(prompt_len: int, new_tokens: int, use_cache: bool) -> list[int]:
    """Positions each of generate's N forward calls processes: [P, 1, 1, ...] with the cache, [P, P+1, ...] without."""
    if use_cache:
        return [prompt_len] + [1] * (new_tokens - 1)
    return [prompt_len + k for k in range(new_tokens)]


def positions_processed_estimate(prompt_len: int, new_tokens: int, use_cache: bool) -> int:
    """Sequence positions that forward passes process per sequence during one generate.

    With the cache: the prompt once, then one position per step ([P, 1, 1, ...]).
    Without: every step re-reads the whole sequence ([P, P+1, ..., P+N-1]).
    """
    if use_cache:
        return prompt_len + new_tokens - 1
    return new_tokens * prompt_len + new_tokens * (new_tokens - 1) // 2


def decode_bytes_per_step(config, scenario: Scenario, dtype, weight_bytes: int) -> float | None:
    """Bytes a cached decode step must read, averaged over the N-1 steps: all weights plus the whole cache.

    None without the cache: a step then recomputes the whole sequence and is not a memory-bound read.
    """
    if not scenario.use_cache or scenario.new_tokens < 2:
        return None
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
