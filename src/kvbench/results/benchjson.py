"""pytest-benchmark JSON files (`--benchmark-json` output, autosaved `.benchmarks/` files) as kvbench records.

Each benchmark written by kvbench's pytest plugin carries kvbench's record in `extra_info`; pytest-benchmark's
stats carry the latency of the whole generate. A record here is the `extra_info` plus, from the stats:
`total_s` (the median round), `total_s_repeats` (every round, when the file holds them: `--benchmark-json`
always, `--benchmark-save` / `--benchmark-autosave` with `--benchmark-save-data`), `repeats` (the rounds) and
`tokens_per_s`; so `kvbench.load_results` gives the same columns for these files as for a run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def is_kvbench_benchmark(bench: dict) -> bool:
    """Whether a benchmark entry carries a kvbench record (other benchmarks of a mixed suite are left out)."""
    extra = bench.get("extra_info")
    return isinstance(extra, dict) and "scenario_id" in extra and "schema_version" in extra


def record_from_benchmark(bench: dict, machine_info: dict | None = None) -> dict:
    """One kvbench record from one benchmark entry of a pytest-benchmark JSON file."""
    stats = bench["stats"]
    record = dict(bench["extra_info"])
    record.update(
        total_s=stats["median"],
        total_s_repeats=stats.get("data"),
        repeats=stats["rounds"],
        benchmark=bench.get("fullname"),
    )
    if record.get("generated_tokens") and record["total_s"]:
        record["tokens_per_s"] = record["generated_tokens"] * record["batch_size"] / record["total_s"]
    for key, value in ((machine_info or {}).get("kvbench") or {}).items():  # a record missing its environment
        record.setdefault(f"env_{key}", value)
    return record


def records_from_benchmark_json(path: str | Path) -> list[dict]:
    """The kvbench records of a pytest-benchmark JSON file, one per kvbench benchmark in it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UserError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    records = [
        record_from_benchmark(bench, data.get("machine_info"))
        for bench in data["benchmarks"] if is_kvbench_benchmark(bench)
    ]
    if not records:
        raise UserError(
            f"{path}: none of its {len(data['benchmarks'])} benchmarks carries a kvbench record "
            "(extra_info written by kvbench's pytest plugin)"
        )
    return records
