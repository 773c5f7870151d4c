"""A sweep: one loaded model, many scenarios, each record appended to the run folder as it finishes."""

from __future__ import annotations

import contextlib
import gc
import traceback
from datetime import datetime, timezone
from pathlib import Path

from ...errors import UserError
from ...inputs.options import RunOptions
from ...inputs.scenario import Scenario
from ...results.schema import SCHEMA_VERSION
from ...results.store import RunWriter
from ..instruments.environment import environment
from .interleave import Measurer, todo_after, whole_groups
from ..measure import base_record, check_fits, free_memory, measure
from ..loading.models import LoadedModel
from .resume import (
    OOMSkips,
    SweepInterrupted,
    check_same_run,
    check_sweep_args,
    run_grid,
    stop_after_scenario,
)


def default_run_dir(model_name: str, root: str | Path = "results") -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(model_name).name or model_name)
    return Path(root) / f"{stamp}-{safe}"


def run_sweep(
    loaded: LoadedModel,
    scenarios: list[Scenario] | None,
    out_dir: str | Path | RunWriter,
    options: RunOptions | None = None,
    *,
    settings: dict | None = None,
    progress=None,
    resume: bool = False,
    **option_values,
) -> list[dict]:
    """Measure every scenario; a failing one becomes a record with status "error" and the sweep goes on.

    `options` (a `kvbench.inputs.options.RunOptions`: repeats, warm-up, profile steps, on-oom policy, ...) say how;
    keyword arguments named like its fields (`repeats=3, warmup=0`) replace those fields (default options:
    `RunOptions()`, the repeats and warm-up of `inputs.options.REPEATS` and `WARMUP`). `out_dir` is a run folder (a folder that already holds a run is refused unless `resume`)
    or an open RunWriter. With `resume=True` only the scenarios without a record in the folder are measured (see
    `kvbench.measuring.harness.resume`); `scenarios=None` then means the run's own grid. Returns the records of all
    `scenarios`, in order. `progress(record)` is called after each scenario (the CLI advances its bar there). A
    first Ctrl-C stops the sweep once the scenario in flight is recorded (interleaved: every scenario of its group,
    whose records are written together when its last round ends) (SweepInterrupted); a second one stops at once. `on_oom`: "continue" measures every scenario; "skip-larger" records the scenarios larger than one that ran
    out of memory (the same settings, every size at least as large) as "skipped", unmeasured. None (the default):
    "continue", or the run's own choice when resumed (a resumed run asked for "continue" measures its skipped
    scenarios). `order` "interleaved": the timed repeats of scenarios differing only in the cache take turns, round
    by round, shuffled with `order_seed` (random when None, or the run's own when resumed;
    `kvbench.measuring.harness.interleave`), the default; "grouped": one
    scenario's repeats after the other's. `target_ci` (`--repeats auto`): `repeats` is a cap; see `measure`.
    """
    unknown = sorted(set(option_values) - set(RunOptions.fields()))
    if unknown:
        raise UserError(f"run_sweep: no option {', '.join(unknown)} (RunOptions has {', '.join(RunOptions.fields())})")
    options = (options or RunOptions()).replace(**option_values)
    scenarios = check_sweep_args(scenarios, resume)
    for scenario in scenarios or []:  # refuse the whole sweep before anything runs
        check_fits(loaded, scenario)
    info = run_info(loaded, options, settings)
    owned = not isinstance(out_dir, RunWriter)
    writer = RunWriter(out_dir, resume=resume) if owned else out_dir
    try:
        return sweep(loaded, scenarios, writer, info, options, progress)
    finally:
        if owned:
            writer.close()


def sweep(loaded, scenarios, writer: RunWriter, info: dict, options: RunOptions, progress) -> list[dict]:
    started = now_utc()
    done: dict[str, dict] = {}
    todo = scenarios
    on_oom = options.on_oom or (writer.info.get("on_oom") if writer.resumed else None) or "continue"
    info["on_oom"] = on_oom
    kept = []
    # skip-larger decides each scenario after the smaller ones ran: one at a time
    order = "grouped" if on_oom == "skip-larger" else options.order
    if writer.resumed:
        scenarios = scenarios or run_grid(writer.info, writer.dir)
        check_same_run(writer.info, info, scenarios, writer.dir)
        for scenario in scenarios:
            check_fits(loaded, scenario)
        records = writer.records()
        kept, todo = todo_after(records, scenarios, order, redo_skipped=on_oom == "continue")
        if len(kept) < len(records):  # error (or skipped) records, and partly recorded groups, measured again
            writer.rewrite(kept)
        done = {r.get("scenario_id"): r for r in kept}
    elif order == "interleaved":
        todo = whole_groups(scenarios, scenarios)  # a group's members one after the other
    skips = OOMSkips(on_oom, kept, scenarios)
    info.update(scenarios=[s.id for s in scenarios], grid=[s.as_dict() for s in scenarios])
    info["started_utc"] = writer.info.get("started_utc", started)
    invocation, invocations = start_invocation(writer, info, started)
    measured = Measurer(loaded, todo, options.replace(order=order),
                        measure_one=lambda s: measure_or_error(loaded, s, options),
                        on_error=lambda s, exc: failed_record(loaded, s, exc),
                        seed=writer.info.get("order_seed") if writer.resumed else None)
    info.update(order=order, order_seed=measured.seed, target_ci=options.target_ci)
    writer.update_info(info)
    try:
        with stop_after_scenario() as ctrl_c, frozen_heap():
            for scenario in todo:
                reason = skips.reason(scenario)
                if reason is None:
                    record = measured(scenario)
                else:
                    record = error_record(loaded, scenario, reason) | {"status": "skipped"}
                skips.saw(scenario, record)
                writer.write(record)
                invocation["measured"].append(scenario.id)
                done[scenario.id] = record
                if progress:
                    progress(record)
                # a first Ctrl-C: stop once the scenario in flight (interleaved: its whole group) is written
                if ctrl_c.requested and scenario is not todo[-1] and not measured.pending:
                    raise SweepInterrupted(sum(s.id in done for s in scenarios), len(scenarios))
    finally:
        end_invocation(writer, invocation, invocations)
    return [done[s.id] for s in scenarios if s.id in done]


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def start_invocation(writer: RunWriter, info: dict, started: str) -> tuple[dict, list[dict]]:
    """This invocation's entry in run.json's `invocations` (when, its environment, the scenarios it measured),
    after those of the invocations before it. The `env_*` fields at the top of run.json stay the first
    invocation's: a resumed run takes its own out of `info` (a run started before `invocations` existed gets an
    entry for its first invocation from them, its scenarios unknown)."""
    environment_now = {k: v for k, v in info.items() if k.startswith("env_")}
    before = list(writer.info.get("invocations", [])) if writer.resumed else []
    if writer.resumed:
        for key in environment_now:
            info.pop(key)
        if not before:
            before = [{"started_utc": writer.info.get("started_utc"), "finished_utc": None,
                       "environment": {k: v for k, v in writer.info.items() if k.startswith("env_")},
                       "measured": None}]
    invocation = {"started_utc": started, "finished_utc": None, "environment": environment_now, "measured": []}
    invocations = [*before, invocation]
    info["invocations"] = invocations
    return invocation, invocations


def end_invocation(writer: RunWriter, invocation: dict, invocations: list[dict]) -> None:
    """This invocation's end in run.json (also after an interrupt or an error; a killed process leaves it None)."""
    invocation["finished_utc"] = now_utc()
    writer.update_info({"invocations": invocations})


def run_info(loaded: LoadedModel, options: RunOptions, settings: dict | None = None) -> dict:
    """What run.json holds besides the scenarios: the model, device, dtype, the run options, extra settings, the
    environment."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.name,
        "model_source": loaded.source,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "repeats": options.repeats,
        "warmup": options.warmup,
        "profile_steps": options.profile_steps,
        **(settings or {}),
        **environment(loaded.device),
    }


def error_record(loaded: LoadedModel, scenario: Scenario, error: str, tb: str | None = None) -> dict:
    """The record of a scenario that failed: what was known before generate, status "error" and what broke (a
    skipped scenario's record is this one with status "skipped", the reason in `error`)."""
    record = base_record(loaded, scenario) | environment(loaded.device)
    record.update(status="error", error=error.splitlines()[0] if error else error)
    if tb:
        record["traceback"] = tb
    return record


def measure_or_error(loaded: LoadedModel, scenario: Scenario, options: RunOptions) -> dict:
    """measure() with the run's options, or a record with status "error" when it raises (so a sweep goes on)."""
    try:
        return measure(loaded, scenario, repeats=options.repeats, warmup=options.warmup,
                       profile_steps=options.profile_steps, target_ci=options.target_ci)
    except Exception as exc:  # keep the sweep going; the record says what broke
        record = failed_record(loaded, scenario, exc)
    free_memory(loaded.device)  # out of the except block: the traceback and generate's frames are gone
    return record


def failed_record(loaded: LoadedModel, scenario: Scenario, exc: Exception) -> dict:
    """The error record of a scenario whose measurement raised `exc` (call it inside the `except` block)."""
    return error_record(loaded, scenario, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=-3))


@contextlib.contextmanager
def frozen_heap():
    """Everything alive before the sweep (the model, torch, transformers: millions of objects) moved out of the
    garbage collector's reach for the sweep, so the collection measure() runs per scenario scans only what is new.

    Frozen objects are still freed by reference counting; they go back to the collector after the sweep (unless
    someone froze the heap before, who then owns unfreezing it)."""
    ours = gc.get_freeze_count() == 0
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if ours:
            gc.unfreeze()
