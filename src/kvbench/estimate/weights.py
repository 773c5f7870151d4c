"""Weights: the exact parameter count of a config (built on the meta device: no memory), their bytes, and the bytes
of them a cached decode step reads."""

from __future__ import annotations

from functools import lru_cache

import torch

from ..inputs.args import check_config
from .kvcache import dtype_nbytes


@lru_cache(maxsize=64)
def _layout(config_json: str) -> tuple[int, int, int]:
    """(parameters, parameters of embedding tables a decode step gathers rows from instead of reading whole,
    elements one sequence gathers from the embedding tables per step), from a model built on the meta device."""
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once
    head = getattr(model.get_output_embeddings(), "weight", None)
    tables = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    # The input embedding (GPT-2's position table too) is gathered; a table tied to the LM head is read whole.
    gathered_only = sum(t.numel() for t in tables.values() if t is not head)
    row_elements = sum(t.shape[-1] for t in tables.values())
    return params, gathered_only, row_elements


def param_count(config) -> int:
    """Exact parameter count from the config alone: the model is built on the meta device (no memory)."""
    return _layout(check_config("config", config).to_json_string(use_diff=False))[0]


def weight_bytes_estimate(config, dtype) -> int:
    return param_count(config) * dtype_nbytes(dtype)


def decode_weight_bytes(config, dtype, sequences: int) -> int:
    """Bytes of the weights one cached decode step of `sequences` sequences (batch x beams) reads: every parameter
    once, except that the embedding tables give one row per sequence instead of the whole table (the LM head is read
    whole; a table tied to it is read whole once, as the LM head, and gathered from besides)."""
    params, gathered_only, row_elements = _layout(config.to_json_string(use_diff=False))
    return (params - gathered_only + sequences * row_elements) * dtype_nbytes(dtype)
