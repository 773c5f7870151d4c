"""The memory and time model of one `generate` call, and the searches over it (used by `kvbench.plan`).

The memory at the peak of one `generate` call is

    weights + KV cache + activations + runtime overhead  <=  usable memory of the card

taken at the two moments where it can peak, and the larger wins:

* the end of the prefill: every layer holds the whole prompt (a dynamic sliding-window layer too: its window is a
  view of the prompt's tensor until the first decode step), beam search has expanded the batch to batch x beams and
  reordered nothing yet, a static cache is preallocated; the prompt's activations are alive.
* the last decode step: the cache has seen context - 1 positions (the last sampled token is never fed back), sliding
  layers hold their window, beams are compacted; the step's working set is small.

Every KV figure comes from the exact estimators, implementation by implementation (`kvbench.estimate.plan_kv`:
dynamic, static, quantized with its update's transient working set, offloaded counting the GPU part, paged its
pool); weights
are `estimate.param_count` x bytes per parameter, or the linear layers quantized (`weight_quant`: int8, int4;
`estimate.weights.weight_bytes_estimate`). Activations and overhead are analytic defaults (see
`activation_prefill_bytes`, `activation_decode_bytes`, `DEFAULT_OVERHEAD_BYTES`) that `kvbench.calibration`
replaces with figures fitted to measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from ..errors import UserError
from ..inputs.configs import text_config
from ..inputs.names import DTYPE_NAMES
from ..units import MIB
from . import activations, plan_kv
from .kvcache import cache_rules, dtype_nbytes, kv_cache_bytes_at, kv_layer_specs
from .roofline import roofline
from .weights import WEIGHT_QUANT_BITS, decode_weight_bytes, weight_bytes_estimate

DEFAULT_OVERHEAD_BYTES = 500 * MIB  # CUDA context, cuBLAS workspace, allocator slack (before calibration)
FLOAT_KV = tuple(dict.fromkeys(DTYPE_NAMES.values()))  # float32, float16, bfloat16
# --kv-dtype int4 / int8: aliases of the quantized cache (quanto 4 bits; hqq 8 bits), planned by its exact rules
QUANTIZED_KV_ALIASES = {"int4": ("quanto", 4), "int8": ("hqq", 8)}
KV_DTYPES = FLOAT_KV + tuple(QUANTIZED_KV_ALIASES)
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
    fitted: tuple[str, ...] = ()  # the terms calibration fitted: "activations", "overhead", "decode speed"

    def activations(self, analytic_bytes: int) -> int:
        return max(0, int(self.activation_scale * analytic_bytes + self.activation_offset_bytes))


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    vocab: int
    cached_layers: int
    windows: frozenset  # the distinct attention windows of the cached layers (None = full attention)
    eager: bool  # transformers runs this architecture with eager attention (no SDPA support)


@dataclass(frozen=True)
class Workload:
    """A model (its config) generating in `dtype` with a cache of `kv_dtype`, `cache_implementation` (any of
    `kvbench.inputs.scenario.CACHE_IMPLEMENTATIONS`, with the `quant_*` options of the quantized one), `num_beams`."""

    name: str
    config: Any = field(repr=False)
    dtype: torch.dtype
    kv_dtype: str
    cache_implementation: str = "dynamic"
    num_beams: int = 1
    quant_backend: str | None = None
    quant_nbits: int | None = None
    quant_residual_length: int | None = None
    decoding: str = "greedy"  # greedy, sample or beam: generate's temporaries over the vocabulary
    attn_implementation: str | None = None  # the one the loaded model selected (None: the class's default)
    weight_quant: str | None = None  # None (the weights in `dtype`), "int8" or "int4" (estimate.weights)

    @property
    def rules(self) -> str:
        """"dynamic", "static", "quantized" or "paged": the rules the cache's bytes follow."""
        return "paged" if self.cache_implementation == "paged" else cache_rules(self.cache_implementation)

    @property
    def quantized(self) -> bool:
        return self.rules == "quantized"

    @property
    def offloaded(self) -> bool:
        return self.cache_implementation.startswith("offloaded")

    @cached_property
    def compute_bytes(self) -> int:
        return dtype_nbytes(self.dtype)

    @cached_property
    def weight_bytes(self) -> int:
        return weight_bytes_estimate(self.config, self.dtype, self.weight_quant)

    @cached_property
    def context_window(self) -> int | None:
        return getattr(text_config(self.config), "max_position_embeddings", None)

    @cached_property
    def dims(self) -> Dims:
        from transformers import AutoModelForCausalLM

        c = text_config(self.config)
        specs = [s for s in kv_layer_specs(self.config) if s.kind != "none"]
        try:
            eager = not AutoModelForCausalLM._model_mapping[type(self.config)]._supports_sdpa
        except (KeyError, ValueError, AttributeError):
            eager = False
        if self.attn_implementation is not None:
            eager = self.attn_implementation == "eager"
        heads = c.num_attention_heads
        return Dims(
            hidden=c.hidden_size,
            intermediate=getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.hidden_size,
            heads=heads, kv_heads=max(1, specs[0].kv_heads if specs else heads),
            head_dim=specs[0].k_head_dim if specs else c.hidden_size // heads,
            v_head_dim=specs[0].v_head_dim if specs else c.hidden_size // heads,
            vocab=c.vocab_size, cached_layers=max(1, len(specs)),
            windows=frozenset(s.window for s in specs), eager=eager,
        )


def _auto_dtype(config, target: Target | None) -> torch.dtype:
    """`kvbench run`'s choice on the target card (bf16 -> fp16 on cards without bf16)."""
    from ..inputs.configs import gpu_half_dtype

    return gpu_half_dtype(config, target is None or target.bf16)


def _cache_settings(name, config, kv, cache_implementation, num_beams, quant) -> tuple[str, str, dict]:
    """(kv dtype, implementation, quant options) checked as `kvbench run` checks them (a Scenario), and what the
    config allows; --kv-dtype int4/int8 become the quantized cache they stand for."""
    from ..inputs.scenario import Scenario

    if kv in QUANTIZED_KV_ALIASES:
        if cache_implementation not in ("dynamic", "quantized") or any(v is not None for v in quant.values()):
            raise UserError(f"--kv-dtype {kv} stands for --cache-implementation quantized --quant-backend "
                            f"{QUANTIZED_KV_ALIASES[kv][0]} --quant-nbits {QUANTIZED_KV_ALIASES[kv][1]}: give "
                            f"one or the other")
        cache_implementation = "quantized"
        quant = dict(quant, quant_backend=QUANTIZED_KV_ALIASES[kv][0], quant_nbits=QUANTIZED_KV_ALIASES[kv][1])
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise UserError(f"--num-beams: {num_beams!r} is not a positive integer")
    try:
        s = Scenario(1, 1, cache_implementation=cache_implementation, decoding="beam" if num_beams > 1 else "greedy",
                     num_beams=num_beams, **quant)
    except UserError as exc:
        raise UserError(f"--cache-implementation {cache_implementation}: {exc}") from None
    quant = dict(quant_backend=s.quant_backend, quant_nbits=s.quant_nbits,
                 quant_residual_length=s.quant_residual_length)
    try:
        specs = kv_layer_specs(config)
    except NotImplementedError as exc:
        raise UserError(f"cannot plan {name}: {exc}") from None
    impl = s.cache_implementation
    if impl == "quantized" and any(sp.kind not in ("full", "none") or sp.state is not None for sp in specs):
        raise UserError(f"--cache-implementation quantized: transformers' QuantizedCache supports full-attention "
                        f"models only, and {name} has sliding-window or linear-attention layers")
    if impl == "paged":
        if num_beams > 1:
            raise UserError("--cache-implementation paged: continuous batching does not do beam search")
        try:
            plan_kv.paged.paged_pool_bytes(config, dtype=torch.float16, num_blocks=1)
        except NotImplementedError as exc:
            raise UserError(f"--cache-implementation paged: {name}: {exc}") from None
    return kv, impl, quant


def make_workload(model, dtype: str = "auto", kv_dtype: str | None = None, cache_implementation: str = "dynamic",
                  num_beams: int = 1, target: Target | None = None, quant_backend: str | None = None,
                  quant_nbits: int | None = None, quant_residual_length: int | None = None,
                  weight_quant: str | None = None) -> Workload:
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
    quant = dict(quant_backend=quant_backend, quant_nbits=quant_nbits, quant_residual_length=quant_residual_length)
    kv, impl, quant = _cache_settings(name, config, kv, cache_implementation, num_beams, quant)
    if impl == "quantized":  # the cache keeps its residual and dequantizes in the model's dtype
        if kv in FLOAT_KV and kv != str(dt).removeprefix("torch."):
            raise UserError(f"--kv-dtype {kv}: the quantized cache keeps its residual in the model's dtype")
        kv = str(dt).removeprefix("torch.")
    if weight_quant in ("none", ""):
        weight_quant = None
    if weight_quant is not None and weight_quant not in WEIGHT_QUANT_BITS:
        raise UserError(f"--weight-quant: {weight_quant!r} is not one of none, {', '.join(WEIGHT_QUANT_BITS)}")
    return Workload(name, config, dt, kv, impl, num_beams, **quant, weight_quant=weight_quant)


# ---------------------------------------------------------------------------------------------- KV cache
def _kv(w: Workload, batch_size: int, seq_len: int, *, num_beams: int, dtype) -> int:
    return kv_cache_bytes_at(w.config, batch_size=batch_size, seq_len=seq_len, dtype=dtype, num_beams=num_beams)


def kv_prefill_bytes(w: Workload, batch_size: int, prompt_len: int, context_len: int) -> int:
    """The cache's bytes in GPU memory right after the prefill (`plan_kv.prefill_kv`)."""
    return plan_kv.prefill_kv(w, batch_size, prompt_len, context_len)["kv_cache_bytes"]


def kv_decode_bytes(w: Workload, batch_size: int, context_len: int, new_tokens: int) -> int:
    """The cache's bytes in GPU memory at the last decode steps (`plan_kv.decode_kv`)."""
    return plan_kv.decode_kv(w, batch_size, context_len, new_tokens)["kv_cache_bytes"]


# ---------------------------------------------------------------------------------------------- activations
def activation_prefill_bytes(w: Workload, sequences: int, prompt_len: int, context_len: int) -> int:
    """Activations at the peak of the prefill (`estimate.activations`)."""
    return activations.activation_prefill_bytes(w, sequences, prompt_len, context_len)


def activation_decode_bytes(w: Workload, batch_size: int, context_len: int, new_tokens: int) -> int:
    """The working set of the last decode step (`estimate.activations`), with the grown copy of the average layer
    that a dynamic cache's `torch.cat` allocates before the old one is freed (full-precision cache / cached layers;
    a quantized cache's update is `plan_kv`'s transient instead, a static cache or paged pool grows nothing)."""
    impl = "static" if w.rules == "static" else "dynamic"
    layer = kv_cache_bytes_at(w.config, batch_size=batch_size, seq_len=context_len - 1, dtype=w.kv_dtype,
                              num_beams=w.num_beams, cache_implementation=impl) // w.dims.cached_layers
    return activations.activation_decode_bytes(w, batch_size, context_len, new_tokens, layer)


# ---------------------------------------------------------------------------------------------- the breakdown
def breakdown(w: Workload, target: Target, batch_size: int, context_len: int, new_tokens: int,
              calibration: Calibration | None = None) -> dict:
    """Memory at the peak of generating `new_tokens` tokens to a total of `context_len`, and the decode step time."""
    cal = calibration or Calibration()
    prompt_len = context_len - new_tokens
    if prompt_len < 1:
        raise UserError(f"context {context_len} leaves no prompt before {new_tokens} new tokens")
    prefill = plan_kv.prefill_kv(w, batch_size, prompt_len, context_len)
    decode = plan_kv.decode_kv(w, batch_size, context_len, new_tokens)
    kv_prefill, kv_decode = prefill["kv_cache_bytes"], decode["kv_cache_bytes"]
    act_prefill = cal.activations(activation_prefill_bytes(w, batch_size * w.num_beams, prompt_len, context_len))
    act_decode = cal.activations(activation_decode_bytes(w, batch_size, context_len, new_tokens))
    decode_phase = new_tokens >= 2 and (kv_decode + decode["kv_transient_bytes"] + act_decode
                                        > kv_prefill + prefill["kv_transient_bytes"] + act_prefill)
    moment, act = (decode, act_decode) if decode_phase else (prefill, act_prefill)
    kv, transient = moment["kv_cache_bytes"], moment["kv_transient_bytes"]
    overhead = int(cal.overhead_bytes)
    total = w.weight_bytes + kv + transient + act + overhead
    # a decode step reads every weight (one embedding row per sequence: roofline's byte model) and the whole cache
    # (an offloaded cache's host layers too, once prefetched; the host-to-GPU copies are not modelled)
    per_step = (decode_weight_bytes(w.config, w.dtype, batch_size * w.num_beams, w.weight_quant) + kv_decode
                + decode["kv_host_bytes"])
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
        "kv_transient_bytes": transient, "kv_host_bytes": moment["kv_host_bytes"],
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
