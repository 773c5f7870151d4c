"""The bytes of transformers' quantized KV cache (``cache_implementation="quantized"``), exact to the byte.

Rules found by experiment (transformers 5.24, optimum-quanto 0.2.7, hqq 0.2.8; tests/test_caches.py checks them):

* Every layer must be a full-attention layer (``QuantizedCache`` refuses sliding, linear-attention and conv layers).
* Group-wise backends (quanto, hqq; ``q_group_size`` 64, residual R = 128 by default): the prefill quantizes the
  whole prompt at once and leaves the full-precision residual empty; each decode step appends its token to the
  residual, and the step that brings it to R tokens requantizes the whole sequence (quantized + residual + new) and
  empties it. After ``generate`` fed P + N - 1 positions, the residual holds (N - 1) mod R tokens and the quantized
  storage the rest. Quantization happens at lengths P, P + R, P + 2R, ...: at each the group size must divide the
  numbers below, else the backend raises.
* quanto (2 or 4 bits): a tensor [S, H, T, D] is grouped into rows = S*H*T*D / 64 rows of 64 (64 must divide
  H*T*D); its packed data holds ceil(rows / (8 / bits)) x 64 uint8 (4-bit rows padded to an even count); scale
  and shift one value per row in the model dtype (64 values each when there is a single row).
* hqq (1, 2, 3, 4 or 8 bits): the tensor is reshaped to [64, n / 64] (64 must divide S*H*T*D) and packed along the
  64: 64 * bits / 8 rows of uint8, or for 3 bits ceil(64 / 10) rows of int32 (ten 3-bit values in 32 bits);
  scale and zero one value per column, in the model dtype.
* Before 5.20 the step right after a requantization never requantizes (``compat.quantized_requantize_period``):
  R = 1 then requantizes every other step. fp8 needs 5.21, beam search 5.19 (``kvbench.measuring.engines.caches`` refuses
  them on older releases).
* fp8 (per tensor, float8_e4m3fn): every position stored at one byte, no residual, no requantization, and one
  float32 scale per tensor (keys and values: 8 bytes a layer), frozen at the prefill.
* Beam search (quanto, hqq) defers its reordering of the quantized states to the next update, keeping the composed
  beam index (int32 in 5.24, one per sequence) on the layer; generate reorders after every step, the last included, so
  after generate every layer holds one (fp8 reorders its states at once and keeps none).
"""

from __future__ import annotations

import math

from .. import compat

GROUP_SIZE = 64  # transformers' default `q_group_size`, the one kvbench runs
FP8_SCALE_BYTES = 4  # a 0-dim float32 tensor
BEAM_INDEX_BYTES = 4  # int32: the beam indices generate passes (5.24)
KINDS = ("quantized_data", "quantized_scales", "quantized_zero_points", "quantized_residual", "beam_index")


def split_tokens(prompt_len: int, new_tokens: int, residual_length: int | None) -> tuple[int, int]:
    """(quantized, residual) tokens per layer after generate fed ``prompt_len + new_tokens - 1`` positions."""
    steps = new_tokens - 1
    if residual_length is None:  # fp8: everything is stored quantized
        return prompt_len + steps, 0
    residual = steps % compat.quantized_requantize_period(residual_length)
    return prompt_len + steps - residual, residual


def quantization_lengths(prompt_len: int, new_tokens: int, residual_length: int) -> list[int]:
    """The sequence lengths at which a group-wise backend quantizes (the prefill, then every R decode steps)."""
    return list(range(prompt_len, prompt_len + new_tokens, compat.quantized_requantize_period(residual_length)))


def group_problem(backend: str, *, sequences: int, kv_heads: int, head_dims: tuple[int, int], prompt_len: int,
                  new_tokens: int, residual_length: int, group_size: int = GROUP_SIZE) -> str | None:
    """Why the backend would fail to quantize this cache (the group size does not divide a tensor), or None."""
    if backend == "fp8":
        return None
    for length in quantization_lengths(prompt_len, new_tokens, residual_length):
        for dim in head_dims:
            per_sequence = kv_heads * length * dim
            grouped = per_sequence if backend == "quanto" else sequences * per_sequence
            if grouped % group_size:
                return (f"the {backend} backend groups {group_size} values, which does not divide the "
                        f"{grouped} values of a {length}-token tensor ({kv_heads} KV heads x {dim})")
    return None


def tensor_bytes(backend: str, nbits: int | None, numel: int, dtype_bytes: int,
                 group_size: int = GROUP_SIZE) -> dict[str, int]:
    """Bytes of one quantized tensor of ``numel`` values, by kind (data, scales, zero points)."""
    if numel == 0:
        return dict.fromkeys(KINDS[:3], 0)
    if backend == "fp8":
        return {"quantized_data": numel, "quantized_scales": FP8_SCALE_BYTES, "quantized_zero_points": 0}
    if backend == "quanto":
        rows = numel // group_size
        per_row = rows if rows > 1 else group_size  # a single row is quantized per tensor: one scale per column
        data = math.ceil(rows / (8 // nbits)) * group_size
        return {"quantized_data": data, "quantized_scales": per_row * dtype_bytes,
                "quantized_zero_points": per_row * dtype_bytes}
    if backend == "hqq":
        columns = numel // group_size
        data = math.ceil(group_size / 10) * 4 if nbits == 3 else group_size * nbits // 8
        return {"quantized_data": data * columns, "quantized_scales": columns * dtype_bytes,
                "quantized_zero_points": columns * dtype_bytes}
    raise ValueError(f"unknown quantization backend {backend!r}")


def quantized_layer_bytes(backend: str, nbits: int | None, residual_length: int | None, *, sequences: int,
                          kv_heads: int, head_dims: tuple[int, int], prompt_len: int, new_tokens: int,
                          dtype_bytes: int, num_beams: int = 1) -> dict[str, int]:
    """Bytes one full-attention layer of a quantized cache holds after generate, by kind."""
    if backend == "fp8":
        residual_length = None
    quantized, residual = split_tokens(prompt_len, new_tokens, residual_length)
    out = dict.fromkeys(KINDS, 0)
    for dim in head_dims:  # keys, then values
        for kind, nbytes in tensor_bytes(backend, nbits, sequences * kv_heads * quantized * dim, dtype_bytes).items():
            out[kind] += nbytes
        out["quantized_residual"] += sequences * kv_heads * residual * dim * dtype_bytes
    if backend != "fp8" and num_beams > 1:
        out["beam_index"] = sequences * BEAM_INDEX_BYTES
    return out


def quantized_cache_bytes(specs, backend: str | None, nbits: int | None, residual_length: int | None, *,
                          sequences: int, prompt_len: int, new_tokens: int, dtype_bytes: int,
                          num_beams: int = 1) -> dict[str, int]:
    """Bytes of a whole quantized cache after generate, by kind, from the layer specs of
    `kvbench.estimate.kvcache.kv_layer_specs`; None options take transformers' defaults (quanto, 4 bits, 128).
    ValueError where transformers would refuse or the backend fail."""
    backend = backend or "quanto"
    if backend == "fp8":
        if nbits is not None or residual_length is not None:
            raise ValueError("the fp8 quantized cache takes neither nbits nor residual_length")
    else:
        nbits, residual_length = nbits or 4, residual_length or 128
    if any(s.kind != "full" or s.state is not None for s in specs):
        raise ValueError("transformers' quantized cache holds full-attention layers only")
    out = dict.fromkeys(KINDS, 0)
    for spec in specs:
        dims = (spec.k_head_dim, spec.v_head_dim)
        problem = group_problem(backend, sequences=sequences, kv_heads=spec.kv_heads, head_dims=dims,
                                prompt_len=prompt_len, new_tokens=new_tokens, residual_length=residual_length)
        if problem:
            raise ValueError(problem)
        layer = quantized_layer_bytes(backend, nbits, residual_length, sequences=sequences, kv_heads=spec.kv_heads,
                                      head_dims=dims, prompt_len=prompt_len, new_tokens=new_tokens,
                                      dtype_bytes=dtype_bytes, num_beams=num_beams)
        for kind, n in layer.items():
            out[kind] += n
    return out
