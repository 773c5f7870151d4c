"""The KV cache at the plan's two moments (end of the prefill, last decode steps), implementation by implementation,
from the exact estimators: what sits in GPU memory, what the update holds on top for a moment, what sits in host
memory. `kvbench.estimate.capacity` adds weights, activations and overhead.

* dynamic, static and the deprecated names: `kvcache.kv_cache_bytes_at` (their rules: `kvcache.cache_rules`).
* quantized: `kvcache.estimate_kv_cache_bytes` at the step where the cache peaks (`quant_peak.decode_step_states`:
  the last decode step, or the last one that requantized), plus one layer's update working set
  (`quant_peak.decode_transient_bytes`; at the prefill `quant_peak.prefill_transient_bytes`).
* offloaded, offloaded_static (and offloaded_hybrid*): the bytes of `offload.layer_bytes`; in GPU memory the layers
  never offloaded and, at the peak of a layer's update, that layer and the next one (prefetched before the update,
  `Cache.prefetch`): one offloadable layer more than `offload.estimate_kv_cache_bytes_by_device` leaves on the GPU
  after generate; the rest is in pinned host memory.
* paged: the pool `paged.paged_pool_bytes` reserves for the batch (kvbench's sizing, `paged.paged_sizing`), from
  the start of the call.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from . import offload, paged, quant_peak
from .kvcache import dtype_nbytes, estimate_kv_cache_bytes, kv_cache_bytes_at, kv_layer_specs


def _moment(stored: int, transient: int = 0, host: int = 0) -> dict:
    return {"kv_cache_bytes": stored, "kv_transient_bytes": transient, "kv_host_bytes": host}


def _quant_options(w) -> dict:
    return dict(cache_implementation="quantized", quant_backend=w.quant_backend, quant_nbits=w.quant_nbits,
                residual_length=w.quant_residual_length)


def _quantized_stored(w, batch_size: int, num_beams: int, prompt_len: int, new_tokens: int) -> int:
    try:
        return estimate_kv_cache_bytes(w.config, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
                                       dtype=w.dtype, num_beams=num_beams, **_quant_options(w))
    except ValueError as exc:
        raise UserError(f"--cache-implementation quantized at batch {batch_size}, prompt {prompt_len}: {exc}") from None


def _shapes(w) -> set[tuple[int, int, int]]:
    return {(s.kv_heads, s.k_head_dim, s.v_head_dim) for s in kv_layer_specs(w.config) if s.kind != "none"}


def _offloaded(w, layers: list[int]) -> dict:
    moved = offload.offloadable(w.config, w.cache_implementation)
    resident = sum(n for n, m in zip(layers, moved) if not m)
    movable = sorted((n for n, m in zip(layers, moved) if m), reverse=True)
    gpu = resident + sum(movable[:2])  # the layer being updated and the next one, prefetched
    return _moment(gpu, 0, sum(layers) - gpu)


def prefill_kv(w, batch_size: int, prompt_len: int, context_len: int) -> dict:
    """The cache right after the prefill: batch x beams sequences of the whole prompt (no beam reorder yet; a dynamic
    sliding layer still holds the prompt's full tensor); a static cache preallocated to context - 1 tokens; a
    quantized cache with the prompt quantized (its last layer's quantization on top); a paged pool reserved."""
    sequences, new_tokens, e = batch_size * w.num_beams, context_len - prompt_len, dtype_nbytes(w.dtype)
    if w.rules == "paged":
        return _moment(paged_pool(w, batch_size, prompt_len, new_tokens))
    if w.rules == "quantized":
        stored = _quantized_stored(w, sequences, 1, prompt_len, 1)
        transient = max(quant_peak.prefill_transient_bytes(
            w.quant_backend, w.quant_nbits, sequences=sequences, kv_heads=h, head_dims=(dk, dv),
            prompt_len=prompt_len, dtype_bytes=e) for h, dk, dv in _shapes(w))
        return _moment(stored, transient)
    static = w.rules == "static"
    if w.offloaded:
        return _offloaded(w, offload.layer_bytes(
            w.config, batch_size=sequences, prompt_len=prompt_len, new_tokens=new_tokens if static else 1,
            dtype=w.kv_dtype, cache_implementation=w.cache_implementation))
    return _moment(kv_cache_bytes_at(
        w.config, batch_size=sequences, seq_len=prompt_len, dtype=w.kv_dtype, cache_implementation=w.rules,
        max_cache_len=context_len - 1 if static else None, last_step_tokens=prompt_len))


def decode_kv(w, batch_size: int, context_len: int, new_tokens: int) -> dict:
    """The cache at the last decode steps (context - 1 positions fed, one at a time); for a quantized cache the step
    where stored bytes and working set together peak."""
    prompt_len, e = context_len - new_tokens, dtype_nbytes(w.dtype)
    if w.rules == "paged":
        return _moment(paged_pool(w, batch_size, prompt_len, new_tokens))
    if w.rules == "quantized":
        residual = None if w.quant_backend == "fp8" else w.quant_residual_length
        best = None
        for step, quantized, res in quant_peak.decode_step_states(prompt_len, new_tokens, residual):
            stored = _quantized_stored(w, batch_size, w.num_beams, prompt_len, step)
            transient = max(quant_peak.decode_transient_bytes(
                w.quant_backend, w.quant_nbits, residual, sequences=batch_size * w.num_beams, kv_heads=h,
                head_dims=(dk, dv), quantized_tokens=quantized, residual_tokens=res, dtype_bytes=e)
                for h, dk, dv in _shapes(w))
            if best is None or stored + transient > sum(best.values()):
                best = _moment(stored, transient)
        return best or _moment(_quantized_stored(w, batch_size, w.num_beams, prompt_len, new_tokens))
    if w.offloaded:
        return _offloaded(w, offload.layer_bytes(
            w.config, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens, dtype=w.kv_dtype,
            num_beams=w.num_beams, cache_implementation=w.cache_implementation))
    seq_len = context_len - 1
    return _moment(kv_cache_bytes_at(
        w.config, batch_size=batch_size, seq_len=seq_len, dtype=w.kv_dtype, num_beams=w.num_beams,
        cache_implementation=w.rules, max_cache_len=seq_len if w.rules == "static" else None))


def paged_pool(w: Any, batch_size: int, prompt_len: int, new_tokens: int) -> int:
    sizing = paged.paged_sizing(batch_size, prompt_len, new_tokens)
    return paged.paged_pool_bytes(w.config, dtype=w.kv_dtype, num_blocks=sizing.num_blocks,
                                  page_size=sizing.page_size)
