"""measure(model, scenario) -> one flat, JSON-safe record: measurements beside their analytic estimates."""

from __future__ import annotations

import dataclasses
import gc
import statistics

import torch

from ..errors import UserError
from ..estimate.kvcache import estimate_kv_cache_bytes_by_kind, naive_kv_cache_bytes
from ..estimate.offload import estimate_kv_cache_bytes_by_device
from ..estimate.positions import positions_processed_estimate
from ..estimate.roofline import decode_bytes_per_step, roofline
from ..estimate.weights import weight_bytes_estimate
from ..inputs.scenario import Scenario
from ..results.cache_fields import device_fields, is_cache_field, kind_fields
from ..results.schema import SCHEMA_VERSION
from .cache_bytes import cache_fields, cache_from_output
from .caches import check_cache
from .clock import Clock
from .environment import environment
from .forwards import record_forwards
from .host_memory import pinned_host_probe
from .memory import memory_probe
from .models import LoadedModel, synthetic_inputs
from .nvml import nvml_handle
from .paged import destroy_manager, generate_paged_once, paged_configs, paged_fields


def is_oom(exc: BaseException) -> bool:
    """Out-of-memory as torch raises it, and the allocation failures cuBLAS/cuDNN report near a memory cap."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type where the message is empty)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def free_memory(device: torch.device | str | None = None) -> None:
    """Drop what a failed or finished call left behind, so the next one starts from the same level.

    Call it after leaving the `except` block that caught the failure: until then the exception's traceback keeps
    the failed call's frames, and the tensors they hold, alive. `device`: the CUDA device whose peak statistics
    restart (None: the current one); on a CPU device only the garbage is collected.
    """
    gc.collect()
    if (device is None or torch.device(device).type == "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def forget_static_cache(model) -> None:
    """Let the next static-cache generate size its cache for its own scenario.

    transformers keeps the longest static cache length seen so far on the model (`_previous_max_cache_length` in
    5.x, the cache itself as `_cache` in 4.x): a short scenario after a long one would get the long one's cache.
    """
    for name in ("_previous_max_cache_length", "_cache"):
        model.__dict__.pop(name, None)


def as_loaded(model) -> LoadedModel:
    """Accept a LoadedModel or a bare transformers model."""
    if isinstance(model, LoadedModel):
        return model
    param = next(model.parameters())
    return LoadedModel(
        name=getattr(model.config, "_name_or_path", "") or type(model).__name__, model=model,
        config=model.config, device=param.device, dtype=param.dtype, source="in-memory model",
    )


def check_fits(loaded: LoadedModel, scenario: Scenario) -> None:
    if loaded.context_len and scenario.total_len > loaded.context_len:
        raise UserError(
            f"prompt_len + new_tokens = {scenario.total_len} exceeds {loaded.name}'s context of "
            f"{loaded.context_len} tokens"
        )
    check_cache(loaded, scenario)


def generate_once(loaded: LoadedModel, scenario: Scenario, inputs: dict, clock: Clock, nvml=None) -> dict:
    """One timed generate: total, per-forward marks, positions, cache bytes and peak memory."""
    torch.manual_seed(scenario.seed)  # sampling draws the same tokens every repeat
    with memory_probe(loaded.device, nvml) as memory, pinned_host_probe(loaded.device, scenario.cache_implementation) \
            as host, record_forwards(loaded.model, clock) as forwards:
        start = clock.mark()
        out = loaded.model.generate(**inputs, **scenario.generate_kwargs())
        end = clock.mark()
        seconds = clock.intervals([start, *forwards.marks, end])
    generated = out.sequences.shape[1] - scenario.prompt_len
    cache = cache_fields(cache_from_output(out) if scenario.use_cache else None)
    del out
    # seconds: start->call1, call1->call2, ..., callN->end. The first token exists when call 2 starts.
    return {
        "total_s": sum(seconds),
        "ttft_s": sum(seconds[:2]) if len(seconds) > 2 else sum(seconds),
        "decode_steps_s": seconds[2:],
        "positions": forwards.positions,
        "generated_tokens": generated,
        **cache,
        **memory,
        **host,
    }


def base_record(loaded: LoadedModel, scenario: Scenario) -> dict:
    """Who, what, where and the analytic estimates: everything known before generate runs."""
    config, dtype = loaded.config, loaded.dtype
    seq_len = scenario.total_len - 1  # the last sampled token is never fed back
    record = {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.name,
        "model_source": loaded.source,
        "model_type": getattr(config, "model_type", None),
        "device": str(loaded.device),
        "dtype": str(dtype).removeprefix("torch."),
        "scenario_id": scenario.id,
        **scenario.as_dict(),
        "status": "ok",
        "error": None,
        "weight_bytes_estimate": weight_bytes_estimate(config, dtype),
        "positions_processed_estimate": positions_processed_estimate(
            scenario.prompt_len, scenario.new_tokens, scenario.use_cache
        ),
        "kv_cache_bytes_estimate": 0,
        "kv_cache_bytes_naive": 0,
    }
    if scenario.use_cache:
        try:
            by_kind = kv_estimate_by_kind(config, scenario, dtype)
            record.update(kv_cache_bytes_estimate=sum(by_kind.values()), **kind_fields(by_kind, estimate=True))
            record.update(device_fields(kv_device_estimate(loaded, scenario, sum(by_kind.values())), estimate=True))
        except (NotImplementedError, ValueError) as exc:  # an architecture whose cache kvbench cannot predict exactly
            record.update(kv_cache_bytes_estimate=None, kv_cache_estimate_error=str(exc))
        sequences = scenario.batch_size * scenario.num_beams
        record["kv_cache_bytes_naive"] = naive_kv_cache_bytes(config, batch_size=sequences, seq_len=seq_len, dtype=dtype)
    return record


def kv_estimate(config, scenario: Scenario, dtype) -> int:
    """The scenario's estimated cache bytes (paged: the pool it reserves)."""
    return sum(kv_estimate_by_kind(config, scenario, dtype).values())


def kv_estimate_by_kind(config, scenario: Scenario, dtype) -> dict[str, int]:
    """The scenario's estimated cache bytes, by kind (paged: the pool it reserves)."""
    if scenario.cache_implementation == "paged":
        from ..estimate.paged import paged_pool_bytes, paged_sizing

        sizing = paged_sizing(scenario.batch_size, scenario.prompt_len, scenario.new_tokens)
        return {"paged_pool": paged_pool_bytes(config, dtype=dtype, num_blocks=sizing.num_blocks,
                                               page_size=sizing.page_size)}
    return estimate_kv_cache_bytes_by_kind(
        config, batch_size=scenario.batch_size, prompt_len=scenario.prompt_len, new_tokens=scenario.new_tokens,
        dtype=dtype, num_beams=scenario.num_beams, cache_implementation=scenario.cache_implementation,
        quant_backend=scenario.quant_backend, quant_nbits=scenario.quant_nbits,
        residual_length=scenario.quant_residual_length,
    )


def kv_device_estimate(loaded: LoadedModel, scenario: Scenario, total: int) -> dict[str, int]:
    """The scenario's estimated cache bytes by device (offloaded caches: GPU and host)."""
    return estimate_kv_cache_bytes_by_device(
        loaded.config, device=loaded.device, batch_size=scenario.batch_size, prompt_len=scenario.prompt_len,
        new_tokens=scenario.new_tokens, dtype=loaded.dtype, num_beams=scenario.num_beams,
        cache_implementation=scenario.cache_implementation, total=total)


def measure(model, scenario: Scenario, repeats: int = 5, warmup: int = 1) -> dict:
    """Measure one scenario: medians of `repeats` timed generates after `warmup` untimed ones.

    Out of memory on a GPU gives a record with status "oom" (and frees what it can); other errors raise.
    Each call sizes a static cache for its own scenario (see `forget_static_cache`).
    """
    if repeats < 1 or warmup < 0:
        raise UserError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    loaded = as_loaded(model)
    check_fits(loaded, scenario)
    if scenario.cache_implementation == "paged":  # continuous batching: an engine of its own
        return measure_paged(loaded, scenario, repeats, warmup)
    record = base_record(loaded, scenario)
    record.update(environment(loaded.device))
    clock, nvml = Clock(loaded.device), nvml_handle(loaded.device)
    inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, loaded.device, scenario.seed)
    forget_static_cache(loaded.model)
    free_memory(loaded.device)  # the one garbage collection of the scenario, before the warm-up, untimed
    oom = None
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                generate_once(loaded, scenario, inputs, clock, nvml)
            runs = [generate_once(loaded, scenario, inputs, clock, nvml) for _ in range(repeats)]
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
        if not is_oom(exc):
            raise  # the caller frees, once it has left its own except block
        oom = error_line(exc)  # the message, not the exception: its traceback holds generate's frames
    if oom is not None:
        free_memory(loaded.device)  # out of the except block: generate's tensors are gone
        record.update(status="oom", error=oom)
        return record
    record.update(summarize(runs))
    record["tokens_per_s"] = record["generated_tokens"] * scenario.batch_size / record["total_s"]
    weight_bytes = loaded.weight_bytes
    per_step = decode_bytes_per_step(loaded.config, scenario, loaded.dtype, weight_bytes)
    record.update(
        weight_bytes=weight_bytes,
        decode_bytes_per_step_estimate=per_step,
        **roofline(per_step, record.get("env_gpu_bandwidth_gbps"), record["decode_step_s"]),
    )
    return record


def measure_paged(loaded: LoadedModel, scenario: Scenario, repeats: int, warmup: int,
                  check_tokens: bool = False) -> dict:
    """`measure` for ``cache_implementation="paged"``: the same record from continuous batching (measuring.paged).
    ``check_tokens``: also compare greedy tokens with ``generate``'s on the same inputs (equal in float32)."""
    record = base_record(loaded, scenario) | environment(loaded.device)
    nvml = nvml_handle(loaded.device)
    inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, loaded.device, scenario.seed)
    prompts, configs = inputs["input_ids"].tolist(), paged_configs(loaded.model, scenario)
    free_memory(loaded.device)
    oom, reference = None, None
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                generate_paged_once(loaded, scenario, prompts, configs, nvml)
            runs = [generate_paged_once(loaded, scenario, prompts, configs, nvml) for _ in range(repeats)]
            if check_tokens and scenario.decoding == "greedy":
                plain = dataclasses.replace(scenario, cache_implementation="dynamic")
                out = loaded.model.generate(**inputs, **plain.generate_kwargs())
                reference = out.sequences[:, scenario.prompt_len:].tolist()
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
        oom = error_line(exc)
    finally:
        destroy_manager(loaded.model)
    if oom is not None:
        free_memory(loaded.device)
        return record | {"status": "oom", "error": oom}
    record.update(summarize(runs), **paged_fields(loaded, scenario, runs, reference))
    record["tokens_per_s"] = scenario.new_tokens * scenario.batch_size / record["total_s"]
    record.update(weight_bytes=loaded.weight_bytes, decode_bytes_per_step_estimate=None,
                  **roofline(None, record.get("env_gpu_bandwidth_gbps"), record["decode_step_s"]))
    return record


def summarize(runs: list[dict]) -> dict:
    """Medians over repeats (raw repeats kept), the per-step latencies of the median repeat, and memory peaks."""
    totals = [r["total_s"] for r in runs]
    step_medians = [statistics.median(r["decode_steps_s"]) if r["decode_steps_s"] else None for r in runs]
    median_run = runs[sorted(range(len(runs)), key=totals.__getitem__)[len(runs) // 2]]
    last = runs[-1]
    positions = last["positions"]
    out = {
        "repeats": len(runs),
        "total_s": statistics.median(totals),
        "total_s_repeats": totals,
        "ttft_s": statistics.median(r["ttft_s"] for r in runs),
        "ttft_s_repeats": [r["ttft_s"] for r in runs],
        "decode_step_s": statistics.median(step_medians) if step_medians[0] is not None else None,
        "decode_step_s_repeats": step_medians,
        "decode_steps_s": median_run["decode_steps_s"],
        "forward_calls": len(positions),
        "positions_per_call": positions,
        "positions_processed": sum(positions),
        "generated_tokens": last["generated_tokens"],
        "cache_class": last.get("cache_class"),
        "kv_cache_bytes": last["kv_cache_bytes"],
        **{key: value for key, value in last.items() if is_cache_field(key)},  # by kind, by device
    }
    memory_keys = [k for k in last if k.endswith("_bytes") and k not in out]
    for key in memory_keys:  # peaks: the largest over repeats; levels (before, after): the last repeat's
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = (max(values) if "peak" in key or "delta" in key else values[-1]) if values else None
    out.update((k, v) for k, v in last.items() if k.endswith("_source"))  # peak_memory_source, nvml_used_source
    return out
