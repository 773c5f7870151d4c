"""A sweep: one loaded model, many scenarios, each record appended to the run folder as it finishes."""

from __future__ import annotations

import contextlib
import gc
import traceback
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError
from ..inputs.scenario import Scenario
from ..results.schema import SCHEMA_VERSION
from ..results.store import RunWriter
from .environment import environment
from .interleave import ORDERS, Measurer
from .measure import base_record, check_fits, free_memory, measure
from .models import LoadedModel
from .resume import (
    OOMSkips,
    SweepInterrupted,
    check_same_run,
    check_sweep_args,
    run_grid,
    split_done,
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
    repeats: int = 5,
    warmup: int = 1,
    settings: dict | None = None,
    progress=None,
    resume: bool = False,
    profile_steps: bool = False,
    on_oom: str | None = None,
    order: str = "grouped",
    order_seed: int | None = None,
    target_ci: float | None = None,
) -> list[dict]:
    """Measure every scenario; a failing one becomes a record with status "error" and the sweep goes on.

    `out_dir` is a run folder (a folder that already holds a run is refused unless `resume`) or an open RunWriter.
    With `resume=True` only the scenarios without a record in the folder are measured (see `kvbench.measuring.
    resume`); `scenarios=None` then means the run's own grid. Returns the records of all `scenarios`, in order.
    `progress(record)` is called after each scenario (the CLI advances its bar there). A first Ctrl-C stops the
    sweep once the scenario in flight is recorded (SweepInterrupted); a second one stops at once.
    `on_oom`: "continue" (the default) measures every scenario; "skip-larger" records the scenarios larger than one
    that ran out of memory (the same settings, every size at least as large) as "skipped", unmeasured. None: the
    run's own choice when resumed (a resumed run asked for "continue" measures its skipped scenarios).
    `order`: "interleaved" (the timed repeats of scenarios differing only in the cache take turns, round by round,
    shuffled with `order_seed`, random when None; `kvbench.measuring.interleave`) or "grouped" (one scenario's
    repeats after the other's). `target_ci` (`--repeats auto`): `repeats` is a cap; see `measure`.
    """
    if order not in ORDERS:
        raise UserError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    scenarios = check_sweep_args(scenarios, repeats, warmup, resume, on_oom)
    for scenario in scenarios or []:  # refuse the whole sweep before anything runs
        check_fits(loaded, scenario)
    info = run_info(loaded, repeats, warmup, settings, profile_steps)
    owned = not isinstance(out_dir, RunWriter)
    writer = RunWriter(out_dir, resume=resume) if owned else out_dir
    try:
        return sweep(loaded, scenarios, writer, info, repeats, warmup, progress, profile_steps, on_oom, order,
                     order_seed, target_ci)
    finally:
        if owned:
            writer.close()


def sweep(loaded, scenarios, writer: RunWriter, info: dict, repeats: int, warmup: int, progress,
          profile_steps: bool = False, on_oom: str | None = None, order: str = "grouped",
          order_seed: int | None = None, target_ci: float | None = None) -> list[dict]:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    done: dict[str, dict] = {}
    todo = scenarios
    on_oom = on_oom or (writer.info.get("on_oom") if writer.resumed else None) or "continue"
    info["on_oom"] = on_oom
    kept = []
    if writer.resumed:
        scenarios = scenarios or run_grid(writer.info, writer.dir)
        check_same_run(writer.info, info, scenarios, writer.dir)
        for scenario in scenarios:
            check_fits(loaded, scenario)
        records = writer.records()
        kept, todo = split_done(records, scenarios, redo_skipped=on_oom == "continue")
        if len(kept) < len(records):  # error (or skipped) records of scenarios measured again
            writer.rewrite(kept)
        done = {r.get("scenario_id"): r for r in kept}
        info["resumed_utc"] = [*writer.info.get("resumed_utc", []), started]
    skips = OOMSkips(on_oom, kept, scenarios)
    info.update(scenarios=[s.id for s in scenarios], grid=[s.as_dict() for s in scenarios])
    info["started_utc"] = writer.info.get("started_utc", started)
    if on_oom == "skip-larger":  # a scenario is skipped after a smaller one's out-of-memory: one at a time
        order = "grouped"
    measured = Measurer(loaded, todo, repeats, warmup, order, order_seed, profile_steps=profile_steps,
                        measure_one=lambda s: measure_or_error(loaded, s, repeats, warmup, profile_steps, target_ci),
                        on_error=lambda s, exc: failed_record(loaded, s, exc), target_ci=target_ci)
    info.update(order=order, order_seed=measured.seed, target_ci=target_ci)
    writer.update_info(info)
    with stop_after_scenario() as ctrl_c, frozen_heap():
        for scenario in todo:
            reason = skips.reason(scenario)
            if reason is None:
                record = measured(scenario)
            else:
                record = error_record(loaded, scenario, reason) | {"status": "skipped"}
            skips.saw(scenario, record)
            writer.write(record)
            done[scenario.id] = record
            if progress:
                progress(record)
            if ctrl_c.requested and scenario is not todo[-1]:
                raise SweepInterrupted(sum(s.id in done for s in scenarios), len(scenarios))
    return [done[s.id] for s in scenarios if s.id in done]


def run_info(loaded: LoadedModel, repeats: int, warmup: int, settings: dict | None = None,
             profile_steps: bool = False) -> dict:
    """What run.json holds besides the scenarios: the model, device, dtype, repeats, extra settings, environment."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.name,
        "model_source": loaded.source,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "repeats": repeats,
        "warmup": warmup,
        "profile_steps": profile_steps,
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


def measure_or_error(loaded: LoadedModel, scenario: Scenario, repeats: int, warmup: int,
                     profile_steps: bool = False, target_ci: float | None = None) -> dict:
    """measure(), or a record with status "error" when it raises (so a sweep goes on)."""
    try:
        return measure(loaded, scenario, repeats=repeats, warmup=warmup, profile_steps=profile_steps,
                       target_ci=target_ci)
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
