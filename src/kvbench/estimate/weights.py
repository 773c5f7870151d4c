"""Weights: the exact parameter count of a config (built on the meta device: no memory) and their bytes."""

from __future__ import annotations

from functools import lru_cache

import torch

from .kvcache import dtype_nbytes


@lru_cache(maxsize=64)
def _param_count(config_json: str) -> int:
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

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
