"""The transient working set of transformers' quantized KV cache: what one layer's ``update`` holds at its peak, above
the bytes the cache stores (`kvbench.estimate.quantized`). The planner adds it to the stored bytes.

Read in transformers 5.24's ``cache_utils.py`` and measured on the CPU (torch's profiler with ``profile_memory``,
tests/test_plan_caches.py; optimum-quanto 0.2.7, hqq 0.2.8). S sequences, H KV heads, head dims Dk / Dv, e bytes of
the model dtype; ``n(T)`` is the S x H x T x D values of one tensor of T tokens.

* ``QuantizedLayer.update`` (quanto, hqq) at a decode step, with Q quantized and r residual tokens before it and
  T = Q + r + 1 after: ``dequant_keys`` and ``dequant_values`` (e x n(Q) each) stay alive, as locals, until the
  update returns; ``torch.cat([dequant, self.keys, key_states])`` builds ``keys_to_return`` and
  ``values_to_return`` (e x n(T) each) beside them. Then either
  - the residual grows (r + 1 < R): ``torch.cat([self.keys, key_states])`` makes a residual of r + 1 tokens beside
    the old one, keys first, then values (the old keys freed in between); or
  - the step requantizes (r + 1 >= R): ``self._quantize(keys_to_return)`` builds new quantized keys while the old
    ones are still referenced, then the values (the old keys freed in between), each with the backend's own working
    set (``quantize_peak_bytes``).
  Before that, ``_dequantize`` of the values runs beside the dequantized keys, with the backend's own temporaries
  (``dequantize_peak_bytes``: where the residual is short, hqq's 3-bit unpacking peaks there). A pending beam
  reorder (``_apply_pending_reorder``) copies the dequantized states while the originals live: 4 e x n(Q), never
  above the concatenation that follows.
* ``Fp8QuantizedLayer.update``: the new token is quantized (kept as locals ``new_keys``, ``new_values``), the
  quantized states grow by ``torch.cat`` while the old ones stay referenced by locals until the update returns, and
  ``_dequantize`` (``(q.float() * scale).to(dtype)``) holds, for one tensor, its float32 copy and the float32
  product (8 bytes a value) beside the keys already dequantized (e x n(T)).
* the prefill quantizes the whole prompt (``_quantize(key_states)``, then values): the quantized keys and the
  values' quantizer working set are alive at once.

The backends' dequantization, at its peak, for one tensor of n values (its result included): quanto
``(2e + 1) n`` (the unpacked uint8 values, the shifted float copy and the scaled result); hqq ``3 e n`` (the
unpacked values in the model dtype, the shifted copy and the result), for 3 bits ``(2 + 70 / 64) e n`` (ten 3-bit
values an int32 unpack to 70 rows for 64); fp8 ``8 n`` (below).

The backends' quantizer working set, at its peak, for one tensor of n values (its own scales included):
quanto ``(2e + 1) n + 2 e n / 64`` (the shifted and scaled float copies and the unpacked uint8 values, a scale and
a shift per group of 64); hqq ``291 n / 8 + 16`` in fp16/bf16 and ``259 n / 8 + 16`` in fp32 (its optimizer's
float32 copies: measured on hqq 0.2.8, the same for every bit width); fp8 ``8 n`` (float copy and quotient; ``5 n``
in fp32, whose ``.float()`` copies nothing) plus its 4-byte scale.
"""

from __future__ import annotations

from .quantized import FP8_SCALE_BYTES, GROUP_SIZE, split_tokens, tensor_bytes

HQQ_BYTES_PER_VALUE_X8 = {2: 291, 4: 259}  # measured on hqq 0.2.8 (CPU): x 1/8 bytes per value, plus 16 bytes
HQQ_CONSTANT_BYTES = 16


def quantize_peak_bytes(backend: str, numel: int, dtype_bytes: int) -> int:
    """Bytes alive at the peak of quantizing one tensor of ``numel`` values, above the tensor itself."""
    if numel == 0:
        return 0
    if backend == "fp8":
        return (5 if dtype_bytes == 4 else 8) * numel + FP8_SCALE_BYTES
    if backend == "quanto":
        return (2 * dtype_bytes + 1) * numel + 2 * dtype_bytes * (numel // GROUP_SIZE)
    if backend == "hqq":
        if dtype_bytes not in HQQ_BYTES_PER_VALUE_X8:
            raise ValueError(f"the hqq quantizer's working set is known for 2- and 4-byte dtypes, not {dtype_bytes}")
        return HQQ_BYTES_PER_VALUE_X8[dtype_bytes] * numel // 8 + HQQ_CONSTANT_BYTES
    raise ValueError(f"unknown quantization backend {backend!r}")


def dequantize_peak_bytes(backend: str, nbits: int | None, numel: int, dtype_bytes: int) -> int:
    """Bytes alive at the peak of dequantizing one tensor of ``numel`` values (its result included)."""
    if backend == "fp8":
        return 8 * numel
    if backend == "quanto":
        return (2 * dtype_bytes + 1) * numel
    if backend == "hqq":
        return dtype_bytes * numel * (198 if nbits == 3 else 192) // 64
    raise ValueError(f"unknown quantization backend {backend!r}")


def _stored(backend: str, nbits: int | None, numel: int, dtype_bytes: int) -> int:
    return sum(tensor_bytes(backend, nbits, numel, dtype_bytes).values())


def prefill_transient_bytes(backend: str, nbits: int | None, *, sequences: int, kv_heads: int,
                            head_dims: tuple[int, int], prompt_len: int, dtype_bytes: int) -> int:
    """One layer's quantization of the prompt: the peak above the bytes the cache stores after the prefill."""
    nk, nv = (sequences * kv_heads * prompt_len * d for d in head_dims)
    qk, qv = _stored(backend, nbits, nk, dtype_bytes), _stored(backend, nbits, nv, dtype_bytes)
    keys = quantize_peak_bytes(backend, nk, dtype_bytes)  # keys first: neither stored yet
    values = qk + quantize_peak_bytes(backend, nv, dtype_bytes)
    return max(0, max(keys, values) - qk - qv)


def decode_transient_bytes(backend: str, nbits: int | None, residual_length: int | None, *, sequences: int,
                           kv_heads: int, head_dims: tuple[int, int], quantized_tokens: int, residual_tokens: int,
                           dtype_bytes: int) -> int:
    """One layer's decode-step update: its peak above the bytes the cache stores before the step."""
    sh, e, (dk, dv) = sequences * kv_heads, dtype_bytes, head_dims
    q, r = quantized_tokens, residual_tokens
    t = q + r + 1
    if backend == "fp8":  # the new token's fp8 (locals), the grown fp8 states beside the old, then the dequantization
        grown = sh * (dk + dv) + sh * t * (dk + dv)
        return grown + max(8 * sh * t * dk, e * sh * t * dk + 8 * sh * t * dv)
    dequantizing = max(dequantize_peak_bytes(backend, nbits, sh * q * dk, e),
                       e * sh * q * dk + dequantize_peak_bytes(backend, nbits, sh * q * dv, e))
    dequantized_and_returned = e * sh * (q + t) * (dk + dv)
    if r + 1 < residual_length:  # the residual grows, keys then values
        return max(dequantizing, dequantized_and_returned + e * sh * max((r + 1) * dk, dk + (r + 1) * dv))
    old_k, new_k = _stored(backend, nbits, sh * q * dk, e), _stored(backend, nbits, sh * t * dk, e)
    keys = quantize_peak_bytes(backend, sh * t * dk, e)
    values = new_k - old_k + quantize_peak_bytes(backend, sh * t * dv, e)
    return max(dequantizing, dequantized_and_returned + max(keys, values))


def decode_step_states(prompt_len: int, new_tokens: int, residual_length: int | None) -> list[tuple[int, int, int]]:
    """The decode steps where a quantized cache can peak, as (step, quantized tokens, residual tokens) before it.

    Step k (1 .. N - 1) finds P + k - 1 positions in the cache. Within a run of R steps the stored bytes and the
    working set both grow with r, and the step that requantizes adds the quantizer's working set: the peak is at the
    last step, or at the last step that requantized (fp8 never does: its last step)."""
    last = new_tokens - 1
    if last < 1:
        return []
    steps = {last}
    if residual_length is not None and last >= residual_length:
        steps.add(last // residual_length * residual_length)
    return [(k, *split_tokens(prompt_len, k, residual_length)) for k in sorted(steps)]
