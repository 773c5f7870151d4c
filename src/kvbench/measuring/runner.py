"""A sweep: one loaded model, many scenarios, each record appended to the run folder as it finishes."""

from __future__ import annotations

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
    profile_steps: bool = False,
) -> list[dict]:
    """Measure every scenario; a failing one becomes a record with status "error" and the sweep goes on.

    `progress(record)` is called after each scenario (the CLI advances its bar there).
    """
    for scenario in scenarios:  # refuse the whole sweep before anything runs
        check_fits(loaded, scenario)
    info = {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.name,
        "model_source": loaded.source,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "repeats": repeats,
        "warmup": warmup,
        "profile_steps": profile_steps,
        "scenarios": [s.id for s in scenarios],
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(settings or {}),
        **environment(loaded.device),
    }
    records = []
    with RunWriter(out_dir, info) as writer:
        for scenario in scenarios:
            try:
                record = measure(loaded, scenario, repeats=repeats, warmup=warmup, profile_steps=profile_steps)
            except Exception as exc:  # keep the sweep going; the record says what broke
                record = base_record(loaded, scenario) | environment(loaded.device)
                record.update(status="error", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                record["traceback"] = traceback.format_exc(limit=-3)
                free_memory()
            writer.write(record)
            records.append(record)
            if progress:
                progress(record)
    return records
