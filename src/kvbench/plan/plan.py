"""Capacity planning: what fits on a GPU, and how fast it decodes, from a model's config and the card's figures.

    kvbench.plan_capacity("phi-3-mini-4k", gpu="t4", batch_sizes=[1, 8], contexts=[2048, 4096])

The memory model (prefill and decode moments, KV from the exact estimators of every cache implementation in
`kvbench.estimate.plan_kv`, the quantized cache's transient working set, activations, overhead) lives in
`kvbench.capacity`; this module resolves what the user names (a GPU, a memory size, the local GPU) and assembles the
plan as a DataFrame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import pandas as pd
import torch

from ..errors import UserError
from ..estimate.capacity import (
    Calibration,
    Target,
    breakdown,
    longest_context,
    make_workload,
    most_sequences,
)
from ..estimate.weights import WEIGHT_QUANT_BITS, weight_bytes_estimate
from ..units import fmt_bytes, parse_bytes

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_NEW_TOKENS = 128


@dataclass(frozen=True)
class CacheSettings:
    """How the planned model generates and caches (`make_workload` checks them): the model's dtype ("auto": the
    card's half type), the cache's dtype (None: the model's; "int4"/"int8": the quantized cache), its
    implementation with the quantized cache's `quant_*` options, the beams, and the weights' quantization."""

    dtype: str = "auto"
    kv_dtype: str | None = None
    cache_implementation: str = "dynamic"
    num_beams: int = 1
    quant_backend: str | None = None
    quant_nbits: int | None = None
    quant_residual_length: int | None = None
    weight_quant: str | None = None

def local_gpu() -> Target | None:
    """The local CUDA GPU: memory as torch sees it, bandwidth from NVML (else the bundled table), or None."""
    if not torch.cuda.is_available():
        return None
    from ..estimate.gpus import match_device_name
    from ..measuring.loading.models import bf16_supported
    from ..measuring.instruments.nvml import nvml_gpu_info

    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    nvml, entry = nvml_gpu_info(device), match_device_name(props.name) or {}
    bandwidth = nvml.get("gpu_bandwidth_gbps") or entry.get("bandwidth_gbps")
    return Target(props.name, int(props.total_memory), bandwidth, bf16_supported(),
                  "local GPU (torch total memory, NVML bandwidth)")


def resolve_target(gpu: str | None = None, memory=None, bandwidth_gbps: float | None = None) -> Target:
    """A bundled GPU by name (case-insensitive), an explicit memory size, or the local GPU when neither is given.

    `memory` overrides the card's usable memory (e.g. `gpu="a100", memory="14.75GiB"`)."""
    from ..estimate.gpus import find_gpu

    if gpu in (None, "", "local", "auto"):
        if memory is None:
            target = local_gpu()
            if target is None:
                raise UserError("no --gpu or --memory given, and torch sees no local CUDA GPU to plan for")
        else:
            size = parse_bytes(memory)
            target = Target(fmt_bytes(size), size, None, True, "--memory")
    else:
        entry = find_gpu(gpu)
        usable, source = entry.get("usable_bytes"), f"table: {entry['name']}"
        if usable is None:  # usable memory not observed for this card: its nominal size
            usable, source = entry["memory_bytes"], f"table: {entry['name']} (nominal memory; usable not observed)"
        target = Target(entry["name"], int(usable), entry.get("bandwidth_gbps"), entry.get("bf16_tflops") is not None,
                        source)
        if memory is not None:
            target = Target(target.name, parse_bytes(memory), target.bandwidth_gbps, target.bf16, "--memory")
    if bandwidth_gbps is not None:
        if not bandwidth_gbps > 0:
            raise UserError(f"--bandwidth-gbps: {bandwidth_gbps} must be positive")
        target = Target(target.name, target.usable_bytes, float(bandwidth_gbps), target.bf16, target.source)
    return target


def default_contexts(window: int | None, new_tokens: int) -> list[int]:
    """1k, 4k, 16k, ... up to the context window, and the window itself."""
    window = window or 2**17
    contexts = [c for c in (1024 * 4**k for k in range(10)) if c < window] + [window]
    return [c for c in contexts if c > new_tokens] or [window]


def plan_capacity(model, gpu: str | None = None, *, memory=None, bandwidth_gbps: float | None = None,
                  settings: CacheSettings | None = None, batch_sizes=DEFAULT_BATCH_SIZES, contexts=None,
                  new_tokens=(DEFAULT_NEW_TOKENS,), calibration: Calibration | None = None, overhead=None,
                  **setting) -> pd.DataFrame:
    """The capacity plan as one DataFrame, a row per answer, `question` saying which:

    * "breakdown": the memory at each batch size x context (x new tokens) asked for, and the decode step time;
    * "longest_context": per batch size, the longest context that fits (`limit`: memory or context window);
    * "most_sequences": per context, the largest batch that fits.
    Every row carries the same columns (bytes, fits, peak phase, decode times) evaluated at its point.

    `overhead` (bytes or a size such as "300MiB"; 0 to plan for an allocator cap) replaces the calibration's
    runtime overhead (default DEFAULT_OVERHEAD_BYTES: CUDA context, cuBLAS workspace, allocator slack).

    `settings`: a `CacheSettings`; each of its fields may also be given as a keyword (`dtype="float16"`,
    `cache_implementation="static"`, ...), which overrides `settings`' value. Another keyword is a TypeError.

    `cache_implementation`: any of `kvbench.inputs.scenario.CACHE_IMPLEMENTATIONS` (checked as `kvbench run` checks
    it), with `quant_backend`, `quant_nbits`, `quant_residual_length` for "quantized". `kv_cache_bytes` is what the
    cache keeps in GPU memory at the peak, `kv_transient_bytes` what a quantized cache's update holds on top of it
    for a moment, `kv_host_bytes` what an offloaded cache keeps in pinned host memory. `weight_quant` ("int8",
    "int4") plans the linear layers' weights quantized as optimum-quanto stores them; every plan also carries the
    weights' bytes in each quantization (`weights_<q>_bytes`), which the advice names when nothing fits."""
    target = gpu if isinstance(gpu, Target) else resolve_target(gpu, memory, bandwidth_gbps)
    settings = replace(settings or CacheSettings(), **setting)  # an unknown keyword: TypeError, naming it
    w = make_workload(model, target=target, **asdict(settings))
    cal = calibration or Calibration()
    if overhead is not None:
        cal = replace(cal, overhead_bytes=parse_bytes(overhead, "--overhead", minimum=0))  # ints too: -1 refused
    new_tokens = [new_tokens] if isinstance(new_tokens, int) else list(new_tokens)
    batch_sizes = [batch_sizes] if isinstance(batch_sizes, int) else list(batch_sizes)
    for option, values in (("--batch-sizes", batch_sizes), ("--new-tokens", new_tokens)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise UserError(f"{option}: {values!r} must be positive integers")
    window = w.context_window
    rows = []
    for n in new_tokens:
        if window is not None and n >= window:
            raise UserError(f"--new-tokens {n} leaves no prompt in {w.name}'s context window of {window}")
        wanted = default_contexts(window, n) if contexts is None else list(contexts)
        for c in wanted:
            if isinstance(c, bool) or not isinstance(c, int) or c <= n:
                raise UserError(f"--contexts: {c!r} must be an integer longer than --new-tokens {n}")
            if window is not None and c > window:
                raise UserError(f"--contexts: {c} exceeds {w.name}'s context window of {window} tokens")
        rows += [{"question": "breakdown", **breakdown(w, target, b, c, n, cal)} for b in batch_sizes for c in wanted]
        rows += [{"question": "longest_context", **longest_context(w, target, b, n, cal)} for b in batch_sizes]
        rows += [{"question": "most_sequences", **most_sequences(w, target, c, n, cal)} for c in wanted]
    df = pd.DataFrame(rows)
    identity = {
        "model": w.name, "gpu": target.name, "gpu_source": target.source, "bandwidth_gbps": target.bandwidth_gbps,
        "dtype": str(w.dtype).removeprefix("torch."), "kv_dtype": w.kv_dtype,
        "cache_implementation": w.cache_implementation, "num_beams": w.num_beams, "context_window": window,
        "calibration": cal.source, "quant_backend": w.quant_backend, "quant_nbits": w.quant_nbits,
        "quant_residual_length": w.quant_residual_length, "weight_quant": w.weight_quant or "none",
        **{f"weights_{q}_bytes": weight_bytes_estimate(w.config, w.dtype, q) for q in WEIGHT_QUANT_BITS},
    }
    for i, (key, value) in enumerate(identity.items()):
        df.insert(1 + i, key, value)
    return df


def weight_quant_label(r) -> str:
    """" (linear layers int8, optimum-quanto)" for a plan row of quantized weights, else ""."""
    return "" if r.get("weight_quant", "none") == "none" else f" (linear layers {r['weight_quant']}, optimum-quanto)"


def advice(r) -> str:
    """What would make the weights fit: a half-precision --dtype from float32, then the first --weight-quant whose
    weights leave room (the plan row carries the weights' bytes in each quantization), else a larger GPU."""
    room = r["usable_bytes"] - r["overhead_bytes"]
    if r["dtype"] == "float32" and r["weight_quant"] == "none" and r["weights_bytes"] / 2 < room:
        return "try --dtype float16 or bfloat16: half the weights' bytes"
    quants = ["int8", "int4"] if r["weight_quant"] == "none" else ["int4"] if r["weight_quant"] == "int8" else []
    for q in quants:
        if r[f"weights_{q}_bytes"] < room:
            return (f"try --weight-quant {q}: weights {fmt_bytes(r[f'weights_{q}_bytes'])}, leaving "
                    f"{fmt_bytes(room - r[f'weights_{q}_bytes'])} for the KV cache and activations")
    return "even int4 weights leave no room: a GPU with more memory"
