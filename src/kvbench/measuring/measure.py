"""measure(model, scenario) -> one flat, JSON-safe record: measurements beside their analytic estimates (the
untimed parts of the record: `kvbench.measuring.record`; continuous batching: `kvbench.measuring.engines.paged`)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from time import perf_counter

import torch

from ..estimate.roofline import decode_bytes_per_step, roofline
from ..inputs.args import check_bool, check_instance, check_int
from ..inputs.options import REPEATS, WARMUP
from ..inputs.scenario import Scenario
from ..results.stats import auto_stop
from .instruments.cache_bytes import cache_fields, cache_nbytes
from .instruments.clock import Clock
from .engines.decode import check_compile, compiled_cache, compiled_graphs, may_compile
from .engines.base import Engine, Prepared
from .engines.engine import engine_for, reset_cache, run_generation  # noqa: F401 - part of the API
from .instruments.alloc_peak import allocation_peak
from .instruments.energy import energy_counter
from .instruments.environment import environment
from .instruments.forwards import eager_probes, record_forwards
from .instruments.host_memory import pinned_host_probe
from .instruments.load import load_probe
from .instruments.machine_speed import machine_speed
from .instruments.memory import collector_paused, memory_probe
from .loading.models import LoadedModel
from .instruments.nvml import nvml_handle
from .instruments.profile import NOT_PROFILED, prepare_for_cuda_graphs
from .instruments.profile import profile_steps as profile_decode_steps
from .record import (  # noqa: F401 - is_oom, error_line, kv_estimate: part of this module's API
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


REBASED = ("peak_allocated_delta_bytes", "peak_memory_delta_bytes")


def run_once(loaded: LoadedModel, engine: Engine, prepared: Prepared, clock: Clock, nvml=None, reset: bool = True) -> dict:
    """One timed run of `engine` with the instruments around it: total, per-forward marks (or the engine's own
    timings), positions, compiled or not, cache bytes, peak memory, energy.

    `reset=False`: the caller reset the reused cache (the pytest plugin does, in its untimed setup). Allocated-memory
    peaks count a reused cache as this run's, as a fresh one would be (`REBASED`).
    """
    scenario = prepared.scenario
    held = engine.reset(prepared) if reset else (cache_nbytes(prepared.cache) if prepared.cache is not None else 0)
    torch.manual_seed(scenario.seed)  # sampling draws the same tokens every repeat
    energy = energy_counter(loaded.device, nvml)
    forwards_probe = record_forwards(loaded.model, clock) if engine.per_forward else nullcontext(None)
    with memory_probe(loaded.device, nvml) as memory, pinned_host_probe(loaded.device, scenario.cache_implementation) \
            as host, forwards_probe as forwards:
        joules = energy.read()
        start = clock.mark()
        ran = engine.run_once(loaded, prepared)
        end = clock.mark()
        seconds = clock.intervals([start, *(forwards.marks if forwards else []), end])
        after = energy.read()  # after the clock's synchronize: the device has finished
    generated = ran.shape[1] - scenario.prompt_len
    for key in REBASED:
        if memory.get(key) is not None:
            memory[key] += held
    # seconds: start->call1, call1->call2, ..., callN->end. The first token exists when call 2 starts.
    timings = ran.timings or {"total_s": sum(seconds), "ttft_s": sum(seconds[:2]) if len(seconds) > 2 else sum(seconds),
                              "decode_steps_s": seconds[2:]}
    return {
        **timings,
        "positions": forwards.positions if forwards else [],
        "forward_compiled": forwards.compiled if forwards else None,
        "generated_tokens": generated,
        "sequences_shape": ran.shape,  # (not a record field: the pytest plugin's check)
        "tokens_out": generated * ran.shape[0],
        "energy_j": None if joules is None or after is None else after - joules,
        "energy_source": energy.source, "energy_unavailable": energy.reason,
        **cache_fields(ran.cache),
        **ran.fields,
        **memory,
        **host,
    }


def bare_run(loaded: LoadedModel, engine: Engine, prepared: Prepared) -> None:
    """One run without instruments (the profiled run, the allocation pass)."""
    engine.reset(prepared)
    torch.manual_seed(prepared.scenario.seed)
    engine.run_once(loaded, prepared)


def allocated_pass(loaded: LoadedModel, engine: Engine, prepared: Prepared) -> dict:
    """One untimed run under the allocation-event instrument (`alloc_peak`): the allocated peak above the level
    before it, a reused cache counted as the run's, its phase and parts, and what the pass cost. On the CPU it is
    the record's `peak_allocated_delta_bytes`; on CUDA the timed repeats' allocator peak stays that, and the pass
    adds where the peak is and what it holds."""
    scenario = prepared.scenario
    held = engine.reset(prepared)
    # compiled decode or an engine whose forwards run elsewhere: no scopes on the model (hooks and patched cache
    # methods would make dynamo recompile), so the peak without its phase and parts
    labelled = None if may_compile(scenario, loaded.device) or not engine.per_forward else loaded.model
    with collector_paused(), allocation_peak(loaded.device, labelled, held) as peak:
        torch.manual_seed(scenario.seed)  # the cache was reset above, outside the profiled run
        engine.run_once(loaded, prepared)
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


def measure(model, scenario: Scenario, repeats: int = REPEATS, warmup: int = WARMUP, profile_steps: bool = False,
            target_ci: float | None = None, engine: Engine | None = None) -> dict:
    """Measure one scenario: medians of `repeats` timed runs after `warmup` untimed ones.

    The engine (`engines.engine`; default `engine_for(scenario)`: transformers' generate, the reference loop or paged
    batching) runs the scenario; the instruments around each run are the same for every engine. A scenario whose
    decode may compile (compile "on", or "auto" with a static cache off the CPU) gets at least one warm-up: the first
    warm-up compiles, and its wall time is `compile_s`. A static scenario builds one cache, reused (reset) by every
    run. `profile_steps` adds one profiled run after the timed ones (measuring.instruments.profile).
    Out of memory on a GPU gives a record with status "oom" (and frees what it can); other errors raise.
    `target_ci` (`--repeats auto`): `repeats` is then a cap, and the repeats stop once the median's interval is
    within ±target_ci (`results.stats.auto_stop`); `repeats_stop` says what stopped them.
    """
    check_instance("scenario", scenario, Scenario, " (build one: kvbench.Scenario(**values))")
    check_int("repeats", repeats, 1), check_int("warmup", warmup, 0), check_bool("profile_steps", profile_steps)
    engine = engine or engine_for(scenario)
    steps = measure_steps(model, scenario, repeats, warmup, profile_steps, target_ci, engine)
    with probes(engine, as_loaded(model).model):  # probes on for every run of the scenario
        return finish(steps)


def finish(steps) -> dict:
    """Run a `measure_steps` generator to its end; its record."""
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        return stop.value


def probes(engine, model):
    """The forward probes, for an engine timed by its forward calls (`forwards.eager_probes`)."""
    return eager_probes(model) if engine.per_forward else nullcontext()


@contextmanager
def step(engine, model):
    """Around each run: the engine's grad mode and the forward probes."""
    with engine.grad_mode(), probes(engine, model):
        yield


def measure_steps(model, scenario: Scenario, repeats: int = REPEATS, warmup: int = WARMUP, profile_steps: bool = False,
                  target_ci: float | None = None, engine: Engine | None = None):
    """`measure` one step at a time, so that the timed repeats of several scenarios can take turns
    (`measuring.harness.interleave`): a generator that yields once its warm-ups are done and after each timed
    repeat, and returns the record. What stays loaded between its steps: the model and what the engine prepared
    (inputs, a reused cache). The engine's grad mode is entered around each step; the caller keeps `probes` on
    across them (entering them per step would change the hooks a compiled decode was traced with)."""
    loaded = as_loaded(model)
    engine = engine or engine_for(scenario)
    check_fits(loaded, scenario)
    check_compile([scenario], loaded.device)
    record = start_record(loaded, scenario)
    clock, nvml = Clock(loaded.device), nvml_handle(loaded.device)
    warmup = max(warmup, 1) if may_compile(scenario, loaded.device) else warmup
    prepared = engine.prepare(loaded, scenario)
    graphs = [compiled_graphs()]
    profiled = dict(NOT_PROFILED)
    free_memory(loaded.device)  # the one garbage collection of the scenario, before the warm-up, untimed
    if profile_steps:
        prepare_for_cuda_graphs(loaded.device)  # CUPTI before any CUDA graph is captured (measuring.instruments.profile)
    oom = None
    try:
        with load_probe(nvml) as load:  # the load from the first warm-up to the last timed repeat
            with step(engine, loaded.model):
                warm = [run_once(loaded, engine, prepared, clock, nvml) for _ in range(warmup)]
            graphs.append(compiled_graphs())
            runs, started, stop = [], perf_counter(), f"{repeats} repeats asked for"
            for _ in range(repeats):
                yield
                with step(engine, loaded.model):
                    runs.append(run_once(loaded, engine, prepared, clock, nvml))
                if target_ci and (why := auto_stop([r["total_s"] for r in runs], target_ci, perf_counter() - started)):
                    stop = why
                    break
            else:
                stop = f"the cap of {repeats} repeats" if target_ci else stop
            graphs.append(compiled_graphs())
            with step(engine, loaded.model):
                peak = allocated_pass(loaded, engine, prepared)  # untimed, after the timed repeats
        if profile_steps and scenario.new_tokens > 1 and engine.per_forward:
            with step(engine, loaded.model):
                profiled = profile_decode_steps(loaded.model, loaded.device, lambda: bare_run(loaded, engine, prepared),
                                                summarize(runs)["decode_step_s"])
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
        if not is_oom(exc):
            raise  # the caller frees, once it has left its own except block
        oom = error_line(exc)  # the message, not the exception: its traceback holds generate's frames
    finally:
        engine.close(loaded, prepared)  # the static cache (the paged pool) goes with the scenario
    if oom is not None:
        free_memory(loaded.device)  # out of the except block: generate's tensors are gone
        record.update(status="oom", error=oom)
        return record
    record.update(run_fields(load, stop))
    return finish_record(record, loaded, engine, scenario, (warm, runs, graphs), profiled, peak)


def start_record(loaded: LoadedModel, scenario: Scenario) -> dict:
    """A record's fields known before anything runs: the scenario, its estimates, the environment, and the
    machine's speed just before (untimed)."""
    return base_record(loaded, scenario) | environment(loaded.device) | machine_speed(loaded)


def run_fields(load, stop: str) -> dict:
    """What the load probe saw over the runs, what stopped the repeats, and the order they ran in: alone (the
    interleaver, measuring.harness.interleave, overwrites these for the scenarios that took turns)."""
    return {**load.fields, "repeats_stop": stop, "order": "grouped", "order_seed": None, "interleave_group": None,
            "round_orders": None}


def finish_record(record: dict, loaded: LoadedModel, engine: Engine, scenario: Scenario, ran: tuple, profiled: dict,
                  peak: dict) -> dict:
    """`record` (base fields and environment) completed from the runs: `ran` = (the warm-up runs, the timed runs,
    dynamo's graph counts before, after the warm-up, after the runs); the timed runs summarized, the allocation
    pass's `peak` (`allocated_pass`), what compiled, the profiled steps, the engine's own fields, throughput, weights
    and the roofline (measure() and the pytest plugin's timed rounds)."""
    warm, runs, graphs = ran
    record.update(summarize(runs))
    record.update(peak)
    record.update(compile_record(warm, runs, graphs, compiled_cache(scenario)))
    record.update(profiled)
    record.update(engine.fields(loaded, scenario, runs))
    record["tokens_per_s"] = record["generated_tokens"] * scenario.batch_size / record["total_s"]
    # per decode step, the bytes a sequence's step reads: not defined where forward calls pack every request
    per_step = decode_bytes_per_step(loaded.config, scenario, loaded.dtype) if engine.per_forward else None
    record.update(
        weight_bytes=loaded.weight_bytes,
        decode_bytes_per_step_estimate=per_step,
        **roofline(per_step, record.get("env_gpu_bandwidth_gbps"), record["decode_step_s"],
                   record.get("decode_step_device_s")),
    )
    return record
