"""A scenario measured in rounds that someone else times: the pytest plugin's pytest-benchmark rounds.

Each round is kvbench's instrumented generate (`measure.generate_once`: the same clock, forward probes and memory
probe as `kvbench run`'s repeats), and the record is summarized from those very rounds (`measure.finish_record`):
no extra generate after them. Where decode may compile, at least one warm-up round runs, so compilation is never
timed.
"""

from __future__ import annotations

import torch

from ...inputs.scenario import Scenario
from ..instruments.clock import Clock
from ..engines.decode import compiled_graphs, generate_kwargs, may_compile, static_cache
from ..instruments.environment import environment
from ..instruments.forwards import eager_probes
from ..measure import allocated_pass, bare_generate, finish_record, generate_once, reset_cache
from ..loading.models import LoadedModel, synthetic_inputs
from ..instruments.nvml import nvml_handle
from ..instruments.profile import NOT_PROFILED
from ..instruments.profile import profile_steps as profile_decode_steps
from .record import base_record, error_line, free_memory, is_oom, summarize


def warmup_needed(loaded: LoadedModel, scenario: Scenario, warmup_rounds: int) -> str | None:
    """The line saying a warm-up round is added (decode compiles here and none was asked for), or None."""
    if may_compile(scenario, loaded.device) and warmup_rounds < 1:
        return (f"kvbench: {scenario.id}: decode compiles on {loaded.device}: 1 warm-up round (not timed) before the "
                "timed rounds")
    return None


def measure_in_rounds(loaded: LoadedModel, scenario: Scenario, timer, warmup_rounds: int,
                      profile_steps: bool = False) -> dict:
    """The scenario's record from the rounds `timer(setup, target, warmup_rounds)` runs (pytest-benchmark's
    pedantic: `setup()` untimed before each round, returning the target's (args, kwargs); the first
    `warmup_rounds` calls of the target are warm-ups). Out of memory gives a record with status "oom"."""
    device = loaded.device
    cache = static_cache(loaded.model, scenario)  # one static cache for all rounds
    call = {"kwargs": generate_kwargs(scenario, cache), "cache": cache, "reset": False}
    del cache
    clock, nvml, done = Clock(device), nvml_handle(device), []
    graphs = [compiled_graphs()]

    def setup():
        inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, device, scenario.seed)
        with torch.inference_mode():  # where the cache's tensors were made; reset untimed
            reset_cache(call["cache"])
        synchronize(device)
        return (), inputs

    def target(**inputs):
        if len(done) == warmup_rounds:
            graphs.append(compiled_graphs())  # after the warm-up rounds, before the first timed one
        with torch.inference_mode():
            run = generate_once(loaded, scenario, inputs, clock, nvml, **call)
        synchronize(device)  # the round's wall clock stops after the device has finished
        done.append(run)

    record = base_record(loaded, scenario) | environment(device)
    free_memory(device)  # untimed, before the rounds
    oom, profiled = None, dict(NOT_PROFILED)
    with eager_probes(loaded.model):  # probes on for every generate of the scenario, as in measure()
        try:
            timer(setup, target, warmup_rounds)
            graphs.append(compiled_graphs())
            runs = done[warmup_rounds:]
            with torch.inference_mode():  # untimed, after the rounds: the allocated peak (measure.allocated_pass)
                peak = allocated_pass(loaded, scenario, setup()[1], call["kwargs"], call["cache"])
            if profile_steps and scenario.new_tokens > 1:
                with torch.inference_mode():
                    profiled = profile_decode_steps(
                        loaded.model, device,
                        lambda: bare_generate(loaded, scenario, setup()[1], call["kwargs"], call["cache"]),
                        summarize(runs)["decode_step_s"])
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
            if not is_oom(exc):
                raise
            oom = error_line(exc)  # the message only: the exception's traceback holds generate's frames
        finally:
            call.clear()  # drops the cache
    if oom is not None:
        done.clear()
        free_memory(device)  # out of the except block: generate's tensors are gone
        return record | {"status": "oom", "error": oom}
    record = finish_record(record, loaded, scenario, done[:warmup_rounds], runs, graphs, profiled, peak)
    record["sequences_shapes"] = [r["sequences_shape"] for r in runs]
    return record


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
