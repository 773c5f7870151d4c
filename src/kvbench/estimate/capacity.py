"""The memory and time model of one `generate` call, and the searches over it (used by `kvbench.plan`).

The memory at the peak of one `generate` call is

    weights + KV cache + activations + runtime overhead  <=  usable memory of the card

taken at the two moments where it can peak, and the larger wins:

* the end of the prefill: every layer holds the whole prompt (a dynamic sliding-window layer too: its window is a
  view of the prompt's tensor until the first decode step), beam search has expanded the batch to batch x beams and
  reordered nothing yet, a static cache is preallocated; the prompt's activations are alive.
* the last decode step: the cache has seen context - 1 positions (the last sampled token is never fed back), sliding
  layers hold their window, beams are compacted; the step's working set is small.

Every KV figure comes from `kvcache.kv_cache_bytes_at` (the estimate that matches real caches to the byte); weights
are `estimate.param_count` x bytes per parameter. Activations and overhead are analytic defaults (see
`activation_prefill_bytes`, `activation_decode_bytes`, `DEFAULT_OVERHEAD_BYTES`) that `kvbench.calibration`
replaces with figures fitted to measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from ..errors import UserError
from ..units import MIB
from .kvcache import dtype_nbytes, kv_cache_bytes_at, kv_layer_specs
from .roofline import roofline
from .weights import decode_weight_bytes, param_count

DEFAULT_OVERHEAD_BYTES = 500 * MIB  # CUDA context, cuBLAS workspace, allocator slack (before calibration)
FLOAT_KV = ("float16", "bfloat16", "float32")
QUANTIZED_KV_BITS = {"int8": 8, "int4": 4}  # transformers' QuantizedCache (HQQ for 8 bits, quanto or HQQ for 4)
KV_DTYPES = FLOAT_KV + tuple(QUANTIZED_KV_BITS)
Q_GROUP_SIZE = 64  # QuantizedCache defaults: a scale and a zero point per group of 64 elements ...
RESIDUAL_LENGTH = 128  # ... and up to 127 recent tokens kept in full precision
CACHE_IMPLEMENTATIONS = ("dynamic", "static")
MAX_BATCH = 2**20


@dataclass(frozen=True)
class Target:
    """The memory to plan for (what torch can use on the card) and its bandwidth."""

    name: str
    usable_bytes: int
    bandwidth_gbps: float | None
    bf16: bool = True
    source: str = ""


# ---------------------------------------------------------------------------------------------- what runs
@dataclass(frozen=True)
class Calibration:
    """The terms kvbench fits to measurements (`kvbench.calibration.calibrate`); the defaults are analytic.

    activations = activation_scale x analytic activations + activation_offset_bytes;
    decode step = step_overhead_s + bytes read per step / (bandwidth_fraction x datasheet bandwidth)."""

    activation_scale: float = 1.0
    activation_offset_bytes: float = 0.0
    overhead_bytes: float = DEFAULT_OVERHEAD_BYTES
    bandwidth_fraction: float | None = None
    step_overhead_s: float = 0.0
    source: str = "analytic defaults"

    def activations(self, analytic_bytes: int) -> int:
        return max(0, int(self.activation_scale * analytic_bytes + self.activation_offset_bytes))


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    cached_layers: int
    windows: frozenset  # the distinct attention windows of the cached layers (None = full attention)
    eager: bool  # transformers runs this architecture with eager attention (no SDPA support)


@dataclass(frozen=True)
class Workload:
    """A model (its config) generating in `dtype` with a cache of `kv_dtype`, `cache_implementation`, `num_beams`."""

    name: str
    config: Any = field(repr=False)
    dtype: torch.dtype
    kv_dtype: str
    cache_implementation: str = "dynamic"
    num_beams: int = 1

    @property
    def quantized(self) -> bool:
        return self.kv_dtype in QUANTIZED_KV_BITS

    @cached_property
    def compute_bytes(self) -> int:
        return dtype_nbytes(self.dtype)

    @cached_property
    def weight_bytes(self) -> int:
        return param_count(self.config) * self.compute_bytes

    @cached_property
    def context_window(self) -> int | None:
        return getattr(_text_config(self.config), "max_position_embeddings", None)

    @cached_property
    def dims(self) -> Dims:
        from transformers import AutoModelForCausalLM

        c = _text_config(self.config)
        specs = [s for s in kv_layer_specs(self.config) if s.kind != "none"]
        try:
            eager = not AutoModelForCausalLM._model_mapping[type(self.config)]._supports_sdpa
        except (KeyError, ValueError, AttributeError):
            eager = False
        heads = c.num_attention_heads
        return Dims(
            hidden=c.hidden_size,
            intermediate=getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.hidden_size,
            heads=heads, kv_heads=max(1, specs[0].kv_heads if specs else heads),
            head_dim=specs[0].k_head_dim if specs else c.hidden_size // heads,
            vocab=c.vocab_size, cached_layers=max(1, len(specs)),
            windows=frozenset(s.window for s in specs), eager=eager,
        )


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if get is not None else config


def _auto_dtype(config, target: Target | None) -> torch.dtype:
    """`kvbench run`'s choice on the target card (bf16 -> fp16 on cards without bf16)."""
    from ..inputs.configs import gpu_half_dtype

    return gpu_half_dtype(config, target is None or target.bf16)


def make_workload(model, dtype: str = "auto", kv_dtype: str | None = None, cache_implementation: str = "dynamic",
                  num_beams: int = 1, target: Target | None = None) -> Workload:
    """Check the settings and read the model's config (a spec such as "phi-3-mini-4k", or a config object)."""
    from ..inputs.configs import DTYPES, resolve_spec

    name, config, _, _ = resolve_spec(model)
    if dtype == "auto" or dtype is None:
        dt = _auto_dtype(config, target)
    elif isinstance(dtype, torch.dtype) or dtype in DTYPES:
        dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    else:
        raise UserError(f"--dtype: {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    kv = str(dt).removeprefix("torch.") if kv_dtype in (None, "", "auto") else str(kv_dtype)
    kv = str(DTYPES[kv]).removeprefix("torch.") if kv in DTYPES else kv
    if kv not in KV_DTYPES:
        raise UserError(f"--kv-dtype: {kv_dtype!r} is not one of {', '.join(KV_DTYPES)}")
    if cache_implementation not in CACHE_IMPLEMENTATIONS:
        raise UserError(f"--cache-implementation: {cache_implementation!r} is not one of dynamic, static")
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise UserError(f"--num-beams: {num_beams!r} is not a positive integer")
    try:
        kinds = {s.kind for s in kv_layer_specs(config)}
    except NotImplementedError as exc:
        raise UserError(f"cannot plan {name}: {exc}") from None
    if kv in QUANTIZED_KV_BITS:
        if cache_implementation != "dynamic":
            raise UserError(f"--kv-dtype {kv}: transformers' quantized cache is dynamic; it has no static form")
        if kinds - {"full", "none"}:
            raise UserError(f"--kv-dtype {kv}: transformers' QuantizedCache supports full-attention models only, "
                            f"and {name} has sliding-window layers")
    return Workload(name, config, dt, kv, cache_implementation, num_beams)


# ---------------------------------------------------------------------------------------------- KV cache
def _kv(w: Workload, batch_size: int, seq_len: int, *, num_beams: int, dtype, last_step_tokens: int = 1,
        max_cache_len: int | None = None, implementation: str | None = None) -> int:
    return kv_cache_bytes_at(
        w.config, batch_size=batch_size, seq_len=seq_len, dtype=dtype, num_beams=num_beams,
        cache_implementation=implementation or w.cache_implementation, max_cache_len=max_cache_len,
        last_step_tokens=last_step_tokens,
    )


def _quantized_kv(w: Workload, batch_size: int, num_beams: int, quantized_tokens: int, residual_tokens: int,
                  last_step_tokens: int = 1) -> int:
    """transformers' QuantizedCache: `nbits` per element plus a scale and a zero point (compute dtype) per group of
    Q_GROUP_SIZE elements, and a residual of recent tokens in the compute dtype. The element count is the cache's
    bytes at one byte per element (int8)."""
    elements = _kv(w, batch_size, quantized_tokens, num_beams=num_beams, dtype=torch.int8,
                   last_step_tokens=last_step_tokens, implementation="dynamic")
    metadata = -(-elements // Q_GROUP_SIZE) * 2 * w.compute_bytes
    residual = _kv(w, batch_size, residual_tokens, num_beams=num_beams, dtype=w.dtype, implementation="dynamic")
    return elements * QUANTIZED_KV_BITS[w.kv_dtype] // 8 + metadata + residual


def kv_prefill_bytes(w: Workload, batch_size: int, prompt_len: int, context_len: int) -> int:
    """The cache right after the prefill: batch x beams sequences of the whole prompt (no beam reorder yet; a dynamic
    sliding layer still holds the prompt's full tensor); a static cache preallocated to context - 1 tokens; a
    quantized cache with the prompt quantized."""
    sequences = batch_size * w.num_beams
    if w.quantized:
        return _quantized_kv(w, sequences, 1, prompt_len, 0, last_step_tokens=prompt_len)
    if w.cache_implementation == "static":
        return _kv(w, sequences, prompt_len, num_beams=1, dtype=w.kv_dtype, max_cache_len=context_len - 1)
    return _kv(w, sequences, prompt_len, num_beams=1, dtype=w.kv_dtype, last_step_tokens=prompt_len)


def kv_decode_bytes(w: Workload, batch_size: int, context_len: int, new_tokens: int) -> int:
    """The cache at the last decode step (context - 1 positions fed, one at a time). Quantized: the most it can hold
    in the last RESIDUAL_LENGTH steps, with the residual at its largest (min(127, new_tokens - 1) tokens)."""
    seq_len = context_len - 1
    if w.quantized:
        residual = min(RESIDUAL_LENGTH - 1, max(new_tokens - 1, 0))
        return _quantized_kv(w, batch_size, w.num_beams, seq_len - residual, residual)
    max_len = seq_len if w.cache_implementation == "static" else None
    return _kv(w, batch_size, seq_len, num_beams=w.num_beams, dtype=w.kv_dtype, max_cache_len=max_len)


# ---------------------------------------------------------------------------------------------- activations
def _masks(w: Workload, q_len: int, kv_len: int) -> int:
    """Attention masks transformers materializes (one per distinct window): always with eager attention, and with a
    static cache (its unfilled positions must be masked); with SDPA and a dynamic cache only where `is_causal` cannot
    stand in: a sliding window the keys reach, or a multi-token query shorter than the keys."""
    if w.dims.eager or w.cache_implementation == "static":
        return len(w.dims.windows)
    return sum(1 for win in w.dims.windows
               if (win is not None and kv_len >= win) or not (q_len == 1 or kv_len == q_len))


def activation_prefill_bytes(w: Workload, sequences: int, prompt_len: int, context_len: int) -> int:
    """Analytic activations at the peak of the prefill (S = batch x beams sequences of P tokens, e bytes):

    * logits of the last position only (generate passes logits_to_keep=1): S x vocab x e, and generate's float32
      copy, S x vocab x 4;
    * the residual stream of one layer: its input and normed copy, 2 x S x P x hidden x e;
    * the larger of the MLP's intermediates, 4 x S x P x intermediate x e (gate/up output, activation, product), and
      the attention's q, k, v and output projections, S x P x (2 heads + 2 kv_heads) x head_dim x e, plus, where
      keys are expanded to every query head (eager, or a mask with grouped-query attention), 2 x S x heads x K x
      head_dim x e, plus eager attention's scores, softmax in float32 and cast back, S x heads x P x K x (2e + 4);
    * each materialized mask (see `_masks`) as a boolean and its additive copy: S x P x K x (1 + e),
    with K = keys attended: P (dynamic) or the static cache's length context - 1."""
    d, e, s, p = w.dims, w.compute_bytes, sequences, prompt_len
    keys = context_len - 1 if w.cache_implementation == "static" else p
    logits = s * d.vocab * (e + 4)
    stream = 2 * s * p * d.hidden * e
    mlp = 4 * s * p * d.intermediate * e
    masks = _masks(w, p, keys) * s * p * keys * (1 + e)
    attention = s * p * (2 * d.heads + 2 * d.kv_heads) * d.head_dim * e
    if (d.eager or masks) and d.heads != d.kv_heads:
        attention += 2 * s * d.heads * keys * d.head_dim * e
    if d.eager:
        attention += s * d.heads * p * keys * (2 * e + 4)
    return logits + stream + max(mlp, attention) + masks


def activation_decode_bytes(w: Workload, batch_size: int, context_len: int, new_tokens: int) -> int:
    """Analytic working set of the last decode step (S = batch x beams sequences, T = context - 1 cached tokens):
    the logits (S x vocab x (e + 4)); the grown keys and values of one layer that `torch.cat` allocates before the old
    ones are freed (dynamic cache; the average layer, cache / cached layers); for a quantized cache, the dequantized
    and concatenated full-precision keys and values of one layer (2 x that layer); keys expanded to every query head
    (eager, or a mask with grouped-query attention: heads / kv_heads x that layer); eager scores S x heads x T x
    (2e + 4); and the step's masks, S x T x (1 + e) each."""
    d, e, s = w.dims, w.compute_bytes, batch_size * w.num_beams
    seq_len = context_len - 1
    if w.quantized:
        full = _kv(w, batch_size, seq_len, num_beams=w.num_beams, dtype=w.dtype, implementation="dynamic")
    else:
        full = kv_decode_bytes(w, batch_size, context_len, new_tokens)
    layer = full // d.cached_layers
    working = s * d.vocab * (e + 4)
    working += 0 if w.cache_implementation == "static" else layer
    working += 2 * layer if w.quantized else 0
    masks = _masks(w, 1, seq_len) * s * seq_len * (1 + e)
    if (d.eager or masks) and d.heads != d.kv_heads:
        working += d.heads // d.kv_heads * layer
    if d.eager:
        working += s * d.heads * seq_len * (2 * e + 4)
    return working + masks


# ---------------------------------------------------------------------------------------------- the breakdown
def breakdown(w: Workload, target: Target, batch_size: int, context_len: int, new_tokens: int,
              calibration: Calibration | None = None) -> dict:
    """Memory at the peak of generating `new_tokens` tokens to a total of `context_len`, and the decode step time."""
    cal = calibration or Calibration()
    prompt_len = context_len - new_tokens
    if prompt_len < 1:
        raise UserError(f"context {context_len} leaves no prompt before {new_tokens} new tokens")
    kv_prefill = kv_prefill_bytes(w, batch_size, prompt_len, context_len)
    kv_decode = kv_decode_bytes(w, batch_size, context_len, new_tokens)
    act_prefill = cal.activations(activation_prefill_bytes(w, batch_size * w.num_beams, prompt_len, context_len))
    act_decode = cal.activations(activation_decode_bytes(w, batch_size, context_len, new_tokens))
    decode_phase = new_tokens >= 2 and kv_decode + act_decode > kv_prefill + act_prefill
    kv, act = (kv_decode, act_decode) if decode_phase else (kv_prefill, act_prefill)
    overhead = int(cal.overhead_bytes)
    total = w.weight_bytes + kv + act + overhead
    # a decode step reads every weight (one embedding row per sequence: roofline's byte model) and the whole cache
    per_step = decode_weight_bytes(w.config, w.dtype, batch_size * w.num_beams) + kv_decode
    floor = roofline(per_step, target.bandwidth_gbps, None)["decode_roofline_s"]
    step_s = None
    if cal.bandwidth_fraction and target.bandwidth_gbps:
        step_s = cal.step_overhead_s + per_step / (cal.bandwidth_fraction * target.bandwidth_gbps * 1e9)
    return {
        "batch_size": batch_size, "context_len": context_len, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "fits": total <= target.usable_bytes, "peak_phase": "decode" if decode_phase else "prefill",
        "total_bytes": total, "usable_bytes": target.usable_bytes, "headroom_bytes": target.usable_bytes - total,
        "weights_bytes": w.weight_bytes, "kv_cache_bytes": kv, "activation_bytes": act, "overhead_bytes": overhead,
        "kv_prefill_bytes": kv_prefill, "kv_decode_bytes": kv_decode,
        "activation_prefill_bytes": act_prefill, "activation_decode_bytes": act_decode,
        "decode_bytes_per_step": per_step, "decode_step_roofline_s": floor, "decode_step_s": step_s,
        "decode_tokens_per_s": batch_size / (step_s or floor) if (step_s or floor) else None,
    }


def _fits(w, target, cal, batch_size, context_len, new_tokens) -> bool:
    return breakdown(w, target, batch_size, context_len, new_tokens, cal)["fits"]


def longest_context(w: Workload, target: Target, batch_size: int, new_tokens: int,
                    calibration: Calibration | None = None) -> dict:
    """The longest context (prompt + new tokens) that fits at this batch size, capped by the context window.

    Memory grows with the context at every moment of generation, so a bisection finds the boundary."""
    lo, hi = new_tokens + 1, w.context_window or 2**24
    if hi < lo:
        raise UserError(f"--new-tokens {new_tokens} leaves no prompt in {w.name}'s context window of {hi}")
    if _fits(w, target, calibration, batch_size, hi, new_tokens):
        return breakdown(w, target, batch_size, hi, new_tokens, calibration) | {"limit": "context window"}
    if not _fits(w, target, calibration, batch_size, lo, new_tokens):
        return breakdown(w, target, batch_size, lo, new_tokens, calibration) | {"limit": "memory: nothing fits"}
    while hi - lo > 1:  # lo fits, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _fits(w, target, calibration, batch_size, mid, new_tokens) else (lo, mid)
    return breakdown(w, target, batch_size, lo, new_tokens, calibration) | {"limit": "memory"}


def most_sequences(w: Workload, target: Target, context_len: int, new_tokens: int,
                   calibration: Calibration | None = None) -> dict:
    """The largest batch (sequences, each with its beams) that fits at this context length."""
    if not _fits(w, target, calibration, 1, context_len, new_tokens):
        return breakdown(w, target, 1, context_len, new_tokens, calibration) | {"limit": "memory: nothing fits"}
    lo, hi = 1, 2
    while _fits(w, target, calibration, hi, context_len, new_tokens):
        lo, hi = hi, hi * 2
        if hi > MAX_BATCH:
            raise UserError(f"more than {MAX_BATCH} sequences fit: is the memory size right?")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _fits(w, target, calibration, mid, context_len, new_tokens) else (lo, mid)
    return breakdown(w, target, lo, context_len, new_tokens, calibration) | {"limit": "memory"}
