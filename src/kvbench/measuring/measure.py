"""measure(model, scenario) -> one flat, JSON-safe record: measurements beside their analytic estimates (the
untimed parts of the record: `kvbench.measuring.harness.record`; continuous batching: `kvbench.measuring.engines.paged`)."""

from __future__ import annotations

from time import perf_counter

import torch

from ..compat import cache_from_output, generate_call_kwargs
from ..estimate.roofline import decode_bytes_per_step, roofline
from ..inputs.args import check_bool, check_instance, check_int
from ..inputs.scenario import Scenario
from ..results.stats import auto_stop
from .instruments.cache_bytes import cache_fields, cache_nbytes
from .instruments.clock import Clock
from .engines.decode import (
    check_compile,
    compiled_cache,
    compiled_graphs,
    generate_kwargs,
    may_compile,
    static_cache,
)
from .instruments.alloc_peak import allocation_peak
from .instruments.energy import energy_counter
from .instruments.environment import environment
from .instruments.forwards import eager_probes, record_forwards
from .instruments.host_memory import pinned_host_probe
from .instruments.load import load_probe
from .instruments.machine_speed import machine_speed
from .instruments.memory import collector_paused, memory_probe
from .loading.models import LoadedModel, synthetic_inputs
from .instruments.nvml import nvml_handle
from .engines.paged import measure_paged
from .instruments.profile import NOT_PROFILED, prepare_for_cuda_graphs
from .instruments.profile import profile_steps as profile_decode_steps
from .harness.record import (  # noqa: F401 - is_oom, error_line, kv_estimate: part of this module's API
    as_loaded,
    base_record,
    check_fits,
    compile_record,
    error_line,
    free_memory,
    is_oom,
    kv_estimate,
    summarize,
)
from .engines.reference import reference_run


REBASED = ("peak_allocated_delta_bytes", "peak_memory_delta_bytes")


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
    return model.generate(**inputs, **generate_call_kwargs(scenario.generate_kwargs() if kwargs is None else kwargs))


def generate_once(loaded: LoadedModel, scenario: Scenario, inputs: dict, clock: Clock, nvml=None, kwargs=None,
                  cache=None, reset: bool = True) -> dict:
    """One timed generate: total, per-forward marks, positions, compiled or not, cache bytes and peak memory.

    `kwargs` are generate's (default: the scenario's); `cache` is the static cache they pass, if any, reset here
    (`reset=False`: the caller reset it, as the pytest plugin does in its untimed setup).
    Allocated-memory peaks count a reused cache as this generate's, as a fresh one would be (`REBASED`).
    """
    kwargs = scenario.generate_kwargs() if kwargs is None else kwargs
    held = reset_cache(cache) if reset else (cache_nbytes(cache) if cache is not None else 0)
    torch.manual_seed(scenario.seed)  # sampling draws the same tokens every repeat
    energy = energy_counter(loaded.device, nvml)
    with memory_probe(loaded.device, nvml) as memory, pinned_host_probe(loaded.device, scenario.cache_implementation) \
            as host, record_forwards(loaded.model, clock) as forwards:
        joules = energy.read()
        start = clock.mark()
        out = run_generation(loaded.model, inputs, scenario, kwargs)
        end = clock.mark()
        seconds = clock.intervals([start, *forwards.marks, end])
        after = energy.read()  # after the clock's synchronize: the device has finished
    generated, shape = out.sequences.shape[1] - scenario.prompt_len, tuple(out.sequences.shape)
    cache_record = cache_fields(cache_from_output(out) if scenario.use_cache else None)
    del out
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
        "sequences_shape": shape,  # (not a record field: the pytest plugin's check)
        "tokens_out": generated * shape[0],
        "energy_j": None if joules is None or after is None else after - joules,
        "energy_source": energy.source, "energy_unavailable": energy.reason,
        **cache_record,
        **memory,
        **host,
    }


def bare_generate(loaded: LoadedModel, scenario: Scenario, inputs: dict, kwargs: dict, cache=None) -> None:
    """One generate without instruments (the profiled run)."""
    reset_cache(cache)
    torch.manual_seed(scenario.seed)
    run_generation(loaded.model, inputs, scenario, kwargs)


def allocated_pass(loaded: LoadedModel, scenario: Scenario, inputs: dict, kwargs: dict, cache=None) -> dict:
    """One untimed generate under the allocation-event instrument (`alloc_peak`): the allocated peak above the level
    before it, a reused static cache counted as the call's, its phase and parts, and what the pass cost. On the CPU
    it is the record's `peak_allocated_delta_bytes`; on CUDA the timed repeats' allocator peak stays that, and the
    pass adds where the peak is and what it holds."""
    held = cache_nbytes(cache) if cache is not None else 0
    # compiled decode: no scopes on the model (hooks and patched cache methods would make dynamo recompile), so
    # the peak without its phase and parts
    labelled = None if may_compile(scenario, loaded.device) else loaded.model
    with collector_paused(), allocation_peak(loaded.device, labelled, held) as peak:
        bare_generate(loaded, scenario, inputs, kwargs, cache)
    if labelled is None:  # unlabelled: every block would read as generate's own
        peak.update({k: None for k in peak if k.startswith("peak_allocated_") and k.endswith("_bytes")
                     and k != "peak_allocated_delta_bytes"})
    if loaded.device.type == "cuda":
        peak["peak_allocated_profiled_delta_bytes"] = peak.pop("peak_allocated_delta_bytes")
        peak.pop("peak_allocated_source")  # the timed repeats' (memory.memory_probe), graph pool included
    else:
        peak.update(peak_memory_delta_bytes=peak["peak_allocated_delta_bytes"], peak_memory_source=peak[
            "peak_allocated_source"])
    return peak


def measure(model, scenario: Scenario, repeats: int = 5, warmup: int = 1, profile_steps: bool = False,
            target_ci: float | None = None) -> dict:
    """Measure one scenario: medians of `repeats` timed generates after `warmup` untimed ones.

    A scenario whose decode may compile (compile "on", or "auto" with a static cache off the CPU) gets at least one
    warm-up: the first warm-up compiles, and its wall time is `compile_s`. A static scenario builds one cache, reused
    (reset) by every generate. `profile_steps` adds one profiled generate after the timed ones (measuring.instruments.profile).
    Out of memory on a GPU gives a record with status "oom" (and frees what it can); other errors raise.
    `target_ci` (`--repeats auto`): `repeats` is then a cap, and the repeats stop once the median's interval is
    within ±target_ci (`results.stats.auto_stop`); `repeats_stop` says what stopped them.
    """
    check_instance("scenario", scenario, Scenario, " (build one: kvbench.Scenario(**values))")
    check_int("repeats", repeats, 1), check_int("warmup", warmup, 0), check_bool("profile_steps", profile_steps)
    steps = measure_steps(model, scenario, repeats, warmup, profile_steps, target_ci)
    with eager_probes(as_loaded(model).model):  # probes on for every generate of the scenario
        return finish(steps)


def finish(steps) -> dict:
    """Run a `measure_steps` generator to its end; its record."""
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        return stop.value


def measure_steps(model, scenario: Scenario, repeats: int = 5, warmup: int = 1, profile_steps: bool = False,
                  target_ci: float | None = None):
    """`measure` one step at a time, so that the timed repeats of several scenarios can take turns
    (`measuring.harness.interleave`): a generator that yields once its warm-ups are done and after each timed repeat, and
    returns the record. What stays loaded between its steps: the model, the scenario's inputs and its static cache.
    Inference mode is entered around each step; the caller keeps `eager_probes` on across them (entering it per step
    would change the hooks a compiled decode was traced with)."""
    loaded = as_loaded(model)
    check_fits(loaded, scenario)
    check_compile([scenario], loaded.device)
    if scenario.cache_implementation == "paged":  # continuous batching: an engine of its own
        return measure_paged(loaded, scenario, repeats, warmup)
    record = base_record(loaded, scenario)
    record.update(environment(loaded.device), **machine_speed(loaded))  # the machine's speed just before, untimed
    clock, nvml = Clock(loaded.device), nvml_handle(loaded.device)
    inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, loaded.device, scenario.seed)
    warmup = max(warmup, 1) if may_compile(scenario, loaded.device) else warmup
    cache = static_cache(loaded.model, scenario)
    call = {"kwargs": generate_kwargs(scenario, cache), "cache": cache}  # emptied before memory is freed
    del cache
    graphs = [compiled_graphs()]
    profiled = dict(NOT_PROFILED)
    free_memory(loaded.device)  # the one garbage collection of the scenario, before the warm-up, untimed
    if profile_steps:
        prepare_for_cuda_graphs(loaded.device)  # CUPTI before any CUDA graph is captured (measuring.instruments.profile)
    oom = None
    try:
        with load_probe(nvml) as load:  # the load from the first warm-up to the last timed repeat
            with torch.inference_mode(), eager_probes(loaded.model):
                warm = [generate_once(loaded, scenario, inputs, clock, nvml, **call) for _ in range(warmup)]
            graphs.append(compiled_graphs())
            runs, started, stop = [], perf_counter(), f"{repeats} repeats asked for"
            for _ in range(repeats):
                yield
                with torch.inference_mode(), eager_probes(loaded.model):
                    runs.append(generate_once(loaded, scenario, inputs, clock, nvml, **call))
                if target_ci and (why := auto_stop([r["total_s"] for r in runs], target_ci, perf_counter() - started)):
                    stop = why
                    break
            else:
                stop = f"the cap of {repeats} repeats" if target_ci else stop
            graphs.append(compiled_graphs())
            with torch.inference_mode(), eager_probes(loaded.model):
                peak = allocated_pass(loaded, scenario, inputs, **call)  # untimed, after the timed repeats
        if profile_steps and scenario.new_tokens > 1:
            with torch.inference_mode(), eager_probes(loaded.model):
                profiled = profile_decode_steps(
                    loaded.model, loaded.device, lambda: bare_generate(loaded, scenario, inputs, **call),
                    summarize(runs)["decode_step_s"],
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
    record.update(**load.fields, repeats_stop=stop)
    record.update(order="grouped", order_seed=None, interleave_group=None, round_orders=None)  # alone; the
    # interleaver (measuring.harness.interleave) overwrites these for the scenarios that took turns
    return finish_record(record, loaded, scenario, warm, runs, graphs, profiled, peak)


def finish_record(record: dict, loaded: LoadedModel, scenario: Scenario, warm: list[dict], runs: list[dict],
                  graphs: list, profiled: dict, peak: dict) -> dict:
    """`record` (base fields and environment) completed from the generates that ran: the timed `runs` summarized,
    the allocation pass's `peak` (`allocated_pass`), what compiled (`warm`: the warm-up runs; `graphs`: dynamo's
    counts before, after the warm-up, after the runs), the profiled steps, throughput, weights and the roofline
    (measure() and the pytest plugin's timed rounds)."""
    record.update(summarize(runs))
    record.update(peak)
    record.update(compile_record(warm, runs, graphs, compiled_cache(scenario)))
    record.update(profiled)
    record["tokens_per_s"] = record["generated_tokens"] * scenario.batch_size / record["total_s"]
    per_step = decode_bytes_per_step(loaded.config, scenario, loaded.dtype)
    record.update(
        weight_bytes=loaded.weight_bytes,
        decode_bytes_per_step_estimate=per_step,
        **roofline(per_step, record.get("env_gpu_bandwidth_gbps"), record["decode_step_s"],
                   record["decode_step_device_s"]),
    )
    return record
