"""A sweep: one loaded model, many scenarios, each record appended to the run folder as it finishes."""

from __future__ import annotations

import contextlib
import gc
import traceback
from datetime import datetime, timezone
from pathlib import Path

from ..inputs.scenario import Scenario
from ..results.schema import SCHEMA_VERSION
from ..results.store import RunWriter
from .environment import environment
from .measure import base_record, check_fits, free_memory, measure
from .models import LoadedModel


def default_run_dir(model_name: str, root: str | Path = "results") -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(model_name).name or model_name)
    return Path(root) / f"{stamp}-{safe}"


def run_sweep(
    loaded: LoadedModel,
    scenarios: list[Scenario],
    out_dir: str | Path,
    repeats: int = 5,
    warmup: int = 1,
    settings: dict | None = None,
    progress=None,
) -> list[dict]:
    """Measure every scenario; a failing one becomes a record with status "error" and the sweep goes on.

    `progress(record)` is called after each scenario (the CLI advances its bar there).
    """
    for scenario in scenarios:  # refuse the whole sweep before anything runs
        check_fits(loaded, scenario)
    records = []
    with RunWriter(out_dir, run_info(loaded, scenarios, repeats, warmup, settings)) as writer, frozen_heap():
        for scenario in scenarios:
            record = measure_or_error(loaded, scenario, repeats, warmup)
            writer.write(record)
            records.append(record)
            if progress:
                progress(record)
    return records


def run_info(loaded: LoadedModel, scenarios: list[Scenario], repeats: int, warmup: int,
             settings: dict | None = None) -> dict:
    """What run.json holds: the model, device, dtype, repeats, the scenarios, extra settings and the environment."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.name,
        "model_source": loaded.source,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "repeats": repeats,
        "warmup": warmup,
        "scenarios": [s.id for s in scenarios],
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(settings or {}),
        **environment(loaded.device),
    }


def error_record(loaded: LoadedModel, scenario: Scenario, error: str, tb: str | None = None) -> dict:
    """The record of a scenario that failed: what was known before generate, status "error" and what broke."""
    record = base_record(loaded, scenario) | environment(loaded.device)
    record.update(status="error", error=error.splitlines()[0] if error else error)
    if tb:
        record["traceback"] = tb
    return record


def measure_or_error(loaded: LoadedModel, scenario: Scenario, repeats: int, warmup: int) -> dict:
    """measure(), or a record with status "error" when it raises (so a sweep goes on)."""
    try:
        return measure(loaded, scenario, repeats=repeats, warmup=warmup)
    except Exception as exc:  # keep the sweep going; the record says what broke
        record = error_record(loaded, scenario, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=-3))
    free_memory(loaded.device)  # out of the except block: the traceback and generate's frames are gone
    return record


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
