"""measure(model, scenario) -> one flat, JSON-safe record: measurements beside their analytic estimates."""

from __future__ import annotations

import gc
import statistics

import torch

from ..compat import cache_from_output
from ..errors import UserError
from ..estimate.kvcache import estimate_kv_cache_bytes, naive_kv_cache_bytes
from ..estimate.positions import positions_processed_estimate
from ..estimate.roofline import decode_bytes_per_step, roofline
from ..estimate.weights import weight_bytes_estimate
from ..inputs.scenario import Scenario
from ..results.schema import SCHEMA_VERSION
from .cache_bytes import cache_nbytes, cache_nbytes_by_device
from .clock import Clock
from .decode import (
    check_compile,
    compiled_graphs,
    generate_kwargs,
    may_compile,
    static_cache,
)
from .environment import environment
from .forwards import eager_probes, record_forwards
from .memory import memory_probe
from .models import LoadedModel, synthetic_inputs
from .nvml import nvml_handle
from .placement import placement_fields
from .profile import NOT_PROFILED
from .profile import profile_steps as profile_decode_steps
from .reference import reference_run


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


# Peaks above the level before a generate that count the reused static cache as the generate's (allocated memory;
# reserved memory and NVML's reading are left as read: a fresh cache would often reuse freed blocks there).
REBASED = ("peak_allocated_delta_bytes", "peak_memory_delta_bytes", "peak_rss_delta_bytes")


def reset_cache(cache) -> int:
    """Empty a reused static cache before a generate (inside inference mode, where its tensors were made); returns
    the bytes it holds meanwhile (0 before its first generate, which allocates it; 0 without one)."""
    if cache is None:
        return 0
    held = cache_nbytes(cache)
    cache.reset()
    return held


def run_generation(model, inputs: dict, scenario: Scenario, kwargs: dict | None = None):
    """The scenario's engine: transformers' generate (with `kwargs`, default the scenario's), or the plain-torch
    reference loop (same output fields)."""
    if scenario.engine == "reference":
        return reference_run(model, inputs, scenario)
    return model.generate(**inputs, **(scenario.generate_kwargs() if kwargs is None else kwargs))


def generate_once(loaded: LoadedModel, scenario: Scenario, inputs: dict, clock: Clock, nvml=None, kwargs=None,
                  cache=None) -> dict:
    """One timed generate: total, per-forward marks, positions, compiled or not, cache bytes and peak memory.

    `kwargs` are generate's (default: the scenario's); `cache` is the static cache they pass, if any, reset here.
    Allocated-memory peaks count a reused cache as this generate's, as a fresh one would be (`REBASED`).
    """
    kwargs = scenario.generate_kwargs() if kwargs is None else kwargs
    held = reset_cache(cache)
    torch.manual_seed(scenario.seed)  # sampling draws the same tokens every repeat
    with memory_probe(loaded.device, nvml) as memory, record_forwards(loaded.model, clock) as forwards:
        start = clock.mark()
        out = run_generation(loaded.model, inputs, scenario, kwargs)
        end = clock.mark()
        seconds = clock.intervals([start, *forwards.marks, end])
    generated = out.sequences.shape[1] - scenario.prompt_len
    out_cache = cache_from_output(out) if scenario.use_cache else None
    cache_bytes = cache_nbytes(out_cache)
    by_device = {"kv_cache_bytes_by_device": cache_nbytes_by_device(out_cache)} if loaded.device_map else {}
    del out, out_cache
    for key in REBASED:
        if memory.get(key) is not None:
            memory[key] += held
    # seconds: start->call1, call1->call2, ..., callN->end. The first token exists when call 2 starts.
    return {
        "total_s": sum(seconds),
        "ttft_s": sum(seconds[:2]) if len(seconds) > 2 else sum(seconds),
        "decode_steps_s": seconds[2:],
        "positions": forwards.positions,
        "forward_compiled": forwards.compiled,
        "generated_tokens": generated,
        "kv_cache_bytes": cache_bytes,
        **by_device,
        **memory,
    }


def bare_generate(loaded: LoadedModel, scenario: Scenario, inputs: dict, kwargs: dict, cache=None) -> None:
    """One generate without instruments (the profiled run)."""
    reset_cache(cache)
    torch.manual_seed(scenario.seed)
    run_generation(loaded.model, inputs, scenario, kwargs)


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
            record["kv_cache_bytes_estimate"] = kv_estimate(config, scenario, dtype)
        except NotImplementedError as exc:  # an architecture whose cache kvbench cannot predict exactly
            record.update(kv_cache_bytes_estimate=None, kv_cache_estimate_error=str(exc))
        sequences = scenario.batch_size * scenario.num_beams
        record["kv_cache_bytes_naive"] = naive_kv_cache_bytes(config, batch_size=sequences, seq_len=seq_len, dtype=dtype)
    if loaded.device_map is not None:
        by_layer = kv_estimate(config, scenario, dtype, by_layer=True) if record["kv_cache_bytes_estimate"] else None
        record.update(placement_fields(loaded, by_layer))
    return record


def kv_estimate(config, scenario: Scenario, dtype, by_layer: bool = False) -> int | list[int]:
    return estimate_kv_cache_bytes(
        config, batch_size=scenario.batch_size, prompt_len=scenario.prompt_len, new_tokens=scenario.new_tokens,
        dtype=dtype, num_beams=scenario.num_beams, cache_implementation=scenario.cache_implementation,
        by_layer=by_layer,
    )


def measure(model, scenario: Scenario, repeats: int = 5, warmup: int = 1, profile_steps: bool = False) -> dict:
    """Measure one scenario: medians of `repeats` timed generates after `warmup` untimed ones.

    A scenario whose decode may compile (compile "on", or "auto" with a static cache off the CPU) gets at least one
    warm-up: the first warm-up compiles, and its wall time is `compile_s`. A static scenario builds one cache, reused
    (reset) by every generate. `profile_steps` adds one profiled generate after the timed ones (measuring.profile).
    Out of memory on a GPU gives a record with status "oom" (and frees what it can); other errors raise.
    """
    if repeats < 1 or warmup < 0:
        raise UserError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    loaded = as_loaded(model)
    check_fits(loaded, scenario)
    check_compile([scenario], loaded.device)
    record = base_record(loaded, scenario)
    record.update(environment(loaded.device))
    clock, nvml = Clock(loaded.device), nvml_handle(loaded.device)
    inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, loaded.device, scenario.seed)
    warmup = max(warmup, 1) if may_compile(scenario, loaded.device) else warmup
    cache = static_cache(loaded.model, scenario)
    call = {"kwargs": generate_kwargs(scenario, cache), "cache": cache}  # emptied before memory is freed
    del cache
    graphs = [compiled_graphs()]
    profiled = dict(NOT_PROFILED)
    free_memory(loaded.device)  # the one garbage collection of the scenario, before the warm-up, untimed
    oom = None
    try:
        with torch.inference_mode(), eager_probes(loaded.model):  # probes on for every generate of the scenario
            warm = [generate_once(loaded, scenario, inputs, clock, nvml, **call) for _ in range(warmup)]
            graphs.append(compiled_graphs())
            runs = [generate_once(loaded, scenario, inputs, clock, nvml, **call) for _ in range(repeats)]
            graphs.append(compiled_graphs())
            summary = summarize(runs)
            if profile_steps and scenario.new_tokens > 1:
                profiled = profile_decode_steps(
                    loaded.model, loaded.device, lambda: bare_generate(loaded, scenario, inputs, **call),
                    summary["decode_step_s"],
                )
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
        if not is_oom(exc):
            raise  # the caller frees, once it has left its own except block
        oom = error_line(exc)  # the message, not the exception: its traceback holds generate's frames
    finally:
        call.clear()  # the static cache goes with the scenario
    if oom is not None:
        free_memory(loaded.device)  # out of the except block: generate's tensors are gone
        record.update(status="oom", error=oom)
        return record
    record.update(summary)
    record.update(compile_record(warm, runs, graphs, scenario.use_cache and scenario.cache_implementation == "static"))
    record.update(profiled)
    record["tokens_per_s"] = record["generated_tokens"] * scenario.batch_size / record["total_s"]
    weight_bytes = loaded.weight_bytes
    per_step = decode_bytes_per_step(loaded.config, scenario, loaded.dtype)
    record.update(
        weight_bytes=weight_bytes,
        decode_bytes_per_step_estimate=per_step,
        **roofline(per_step, record.get("env_gpu_bandwidth_gbps"), record["decode_step_s"],
                   record["decode_step_device_s"]),
    )
    return record


def decode_ran_compiled(run: dict) -> bool | None:
    """Whether every decode forward (calls 2..N) of one generate ran as compiled code; None if unknown or none."""
    compiled = run["forward_compiled"]
    if compiled is None or len(compiled) < 2:
        return None
    return all(compiled[1:])


def compile_record(warm: list[dict], runs: list[dict], graphs: list, reused_cache: bool) -> dict:
    """What compilation really did: compiled decode in the timed repeats, the compiling warm-up's time, graph counts."""
    per_run = [decode_ran_compiled(r) for r in runs]
    decode_compiled = None if None in per_run else all(per_run)
    first = warm[0] if warm else None
    count = [None if None in (a, b) else b - a for a, b in zip(graphs, graphs[1:])]
    return {
        "decode_compiled": decode_compiled,
        "compile_s": first["total_s"] if first and decode_ran_compiled(first) else None,
        "compile_graphs": count[0],
        "compile_graphs_timed": count[1],
        "warmup_runs": len(warm),
        "kv_cache_reused": reused_cache,
    }


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
        "kv_cache_bytes": last["kv_cache_bytes"],
        **({"kv_cache_bytes_by_device": last["kv_cache_bytes_by_device"]} if "kv_cache_bytes_by_device" in last else {}),
    }
    memory_keys = [k for k in last if k.endswith("_bytes") and k not in out]
    for key in memory_keys:  # peaks: the largest over repeats; levels (before, after): the last repeat's
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = (max(values) if "peak" in key or "delta" in key else values[-1]) if values else None
    out.update((k, v) for k, v in last.items() if k.endswith("_source"))  # peak_memory_source, nvml_used_source
    return out
