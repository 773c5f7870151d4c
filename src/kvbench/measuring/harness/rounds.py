"""A scenario measured in rounds that someone else times: the pytest plugin's pytest-benchmark rounds.

Each round is kvbench's instrumented run (`measure.run_once`: the same clock, forward probes and memory
probe as `kvbench run`'s repeats), and the record is summarized from those very rounds (`measure.finish_record`):
no extra generate after them. Where decode may compile, at least one warm-up round runs, so compilation is never
timed.
"""

from __future__ import annotations

import torch

from ...inputs.scenario import Scenario
from ..instruments.clock import Clock
from ..engines.decode import compiled_graphs, may_compile
from ..engines.engine import engine_for
from ..instruments.load import load_probe
from ..measure import allocated_pass, bare_run, finish_record, probes, run_fields, run_once, start_record
from ..loading.models import LoadedModel
from ..instruments.nvml import nvml_handle
from ..instruments.profile import NOT_PROFILED
from ..instruments.profile import profile_steps as profile_decode_steps
from ..record import error_line, free_memory, is_oom, summarize


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
    engine = engine_for(scenario)
    prepared = engine.prepare(loaded, scenario)  # one static cache for all rounds
    clock, nvml, done = Clock(device), nvml_handle(device), []
    graphs = [compiled_graphs()]

    def setup():  # the inputs `prepare` made serve every round (generate reads them, never writes)
        with engine.grad_mode():  # where the cache's tensors were made; reset untimed
            engine.reset(prepared)
        synchronize(device)
        return (), {}

    def target():
        if len(done) == warmup_rounds:
            graphs.append(compiled_graphs())  # after the warm-up rounds, before the first timed one
        with engine.grad_mode():
            run = run_once(loaded, engine, prepared, clock, nvml, reset=False)
        synchronize(device)  # the round's wall clock stops after the device has finished
        done.append(run)

    record = start_record(loaded, scenario)
    free_memory(device)  # untimed, before the rounds
    oom, profiled = None, dict(NOT_PROFILED)
    with probes(engine, loaded.model):  # probes on for every run of the scenario, as in measure()
        try:
            with load_probe(nvml) as load:  # the load over the rounds
                timer(setup, target, warmup_rounds)
            graphs.append(compiled_graphs())
            runs = done[warmup_rounds:]
            with engine.grad_mode():  # untimed, after the rounds: the allocated peak (measure.allocated_pass)
                peak = allocated_pass(loaded, engine, prepared)
            if profile_steps and scenario.new_tokens > 1 and engine.per_forward:
                with engine.grad_mode():
                    profiled = profile_decode_steps(loaded.model, device, lambda: bare_run(loaded, engine, prepared),
                                                    summarize(runs)["decode_step_s"])
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
            if not is_oom(exc):
                raise
            oom = error_line(exc)  # the message only: the exception's traceback holds generate's frames
        finally:
            engine.close(loaded, prepared)  # drops the cache
    if oom is not None:
        done.clear()
        free_memory(device)  # out of the except block: generate's tensors are gone
        return record | {"status": "oom", "error": oom}
    record.update(run_fields(load, "pytest-benchmark's rounds"))
    record = finish_record(record, loaded, engine, scenario, (done[:warmup_rounds], runs, graphs), profiled, peak)
    record["sequences_shapes"] = [r["sequences_shape"] for r in runs]
    return record


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
