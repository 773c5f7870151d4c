"""Weights: the exact parameter count of a config (built on the meta device: no memory), their bytes (in a float
dtype, or with the linear layers quantized to 8 or 4 bits), and the bytes of them a cached decode step reads.

Quantized weights follow optimum-quanto, as transformers' ``QuantoConfig(weights="int8" | "int4")`` loads them
(checked byte for byte against real quantized models in tests/test_weight_quant.py): every ``nn.Linear`` but the LM
head is converted; embeddings, norms, biases, GPT-2's ``Conv1D`` and fused expert tensors (MoE layers that hold
their experts as 3-D parameters, not ``nn.Linear``) stay in the model's dtype.

* int8 (qint8): one byte per weight, one scale per output feature in the model's dtype.
* int4 (qint4): half a byte per weight, a scale and a shift in the model's dtype per group of input features: 128,
  or the largest of 96, 64 that divides the layer's input features (``in > 128``); per output feature otherwise.
* each converted layer also registers float32 scalars for activation quantization (its input and output scales;
  how many differs between transformers releases): 4 to 8 bytes a layer, buffers rather than weights, not counted."""

from __future__ import annotations

from functools import lru_cache

import torch

from ..inputs.args import check_config
from .kvcache import dtype_nbytes


WEIGHT_QUANT_BITS = {"int8": 8, "int4": 4}  # --weight-quant: optimum-quanto's qint8 and qint4


@lru_cache(maxsize=64)
def _layout(config_json: str) -> tuple[int, int, int, tuple[tuple[int, int], ...]]:
    """(parameters, parameters of embedding tables a decode step gathers rows from instead of reading whole,
    elements one sequence gathers from the embedding tables per step, (out, in) features of each linear layer that
    weight quantization converts), from a model built on the meta device."""
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
    linears, seen = [], {id(head)}
    for module in model.modules():  # a linear layer tied to another (or to the LM head) is converted once, or not
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            linears.append((module.out_features, module.in_features))
    return params, gathered_only, row_elements, tuple(linears)


def _quanto_group(in_features: int) -> int | None:
    """optimum-quanto's int4 group size for a layer of `in_features` inputs (its QModuleMixin's rule)."""
    group = 128
    if in_features <= group:
        return None
    while in_features % group and group > 32:
        group -= 32
    return group if in_features % group == 0 else None


def quantized_linear_bytes(out_features: int, in_features: int, bits: int, dtype_bytes: int) -> int:
    """Bytes one linear layer's weight holds once quantized (data, scales, shifts)."""
    if bits == 8:
        return out_features * in_features + out_features * dtype_bytes
    group = _quanto_group(in_features)
    groups = out_features * (in_features // group if group else 1)
    return -(-out_features // 2) * in_features + 2 * groups * dtype_bytes

def param_count(config) -> int:
    """Exact parameter count from the config alone: the model is built on the meta device (no memory)."""
    return _layout(check_config("config", config).to_json_string(use_diff=False))[0]


def weight_bytes_estimate(config, dtype, weight_quant: str | None = None) -> int:
    """Bytes of the weights in `dtype`, or with the linear layers quantized (`weight_quant` "int8" or "int4")."""
    params, _, _, linears = _layout(check_config("config", config).to_json_string(use_diff=False))
    size = dtype_nbytes(dtype)
    if weight_quant in (None, "none"):
        return params * size
    if weight_quant not in WEIGHT_QUANT_BITS:
        raise ValueError(f"weight_quant: {weight_quant!r} is not one of none, {', '.join(WEIGHT_QUANT_BITS)}")
    bits = WEIGHT_QUANT_BITS[weight_quant]
    converted = sum(o * i for o, i in linears)
    return (params - converted) * size + sum(quantized_linear_bytes(o, i, bits, size) for o, i in linears)


def decode_weight_bytes(config, dtype, sequences: int, weight_quant: str | None = None) -> int:
    """Bytes of the weights one cached decode step of `sequences` sequences (batch x beams) reads: every parameter
    once, except that the embedding tables give one row per sequence instead of the whole table (the LM head is read
    whole; a table tied to it is read whole once, as the LM head, and gathered from besides). Quantized linear
    layers are read as stored (embeddings are never quantized)."""
    _, gathered_only, row_elements, _ = _layout(config.to_json_string(use_diff=False))
    return (weight_bytes_estimate(config, dtype, weight_quant)
            + (sequences * row_elements - gathered_only) * dtype_nbytes(dtype))
