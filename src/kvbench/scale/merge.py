"""Join shard run folders (`kvbench run --shard I/N`, one per machine or GPU) into one run folder.

Runs are joined only when their settings and environment agree: every field of run.json but the ones that tell
shards apart (which shard, which scenarios, when it started) must be equal, or the merge is refused naming the
field (`ignore` accepts named differences, e.g. `env_git_commit`). A scenario recorded twice is refused; scenarios
of the grid that no shard recorded are reported as missing (and listed in the merged run.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..inputs.scenario import Scenario
from ..results.store import RECORDS, RUN_INFO, RunWriter, read_jsonl

# What differs between the shards of one sweep by design.
SHARD_FIELDS = {"scenarios", "grid", "options", "started_utc", "resumed_utc", "invocations", "shard", "merged_from",
                "missing_scenarios"}


def read_run(path: str | Path) -> tuple[dict, list[dict]]:
    """(run.json, records) of a run folder."""
    path = Path(path)
    if not (path / RUN_INFO).is_file() or not (path / RECORDS).is_file():
        raise UserError(f"{path}: not a run folder (needs {RUN_INFO} and {RECORDS})")
    try:
        info = json.loads((path / RUN_INFO).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path / RUN_INFO}: not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path / RUN_INFO}: not a JSON object")
    return info, read_jsonl(path / RECORDS)


def conflicts(infos: list[dict], paths: list[Path], ignore=()) -> list[str]:
    """One line per run.json field whose value differs between runs (fields absent from a run count as None)."""
    skip = SHARD_FIELDS | set(ignore)
    fields = sorted({k for info in infos for k in info} - skip)
    lines = []
    for field in fields:
        values = [info.get(field) for info in infos]
        if any(v != values[0] for v in values[1:]):
            shown = "; ".join(f"{p}: {v!r}" for p, v in zip(paths, values))
            lines.append(f"{field} differs ({shown})")
    return lines


def merge_runs(paths, out: str | Path, ignore=()) -> dict:
    """Write the records of every run in `paths` to the run folder `out`, in grid order.

    Returns {"records": n, "missing": [...], "out": Path}. Refuses (UserError) conflicting settings or environments,
    a scenario recorded twice, and an `out` that already holds records."""
    paths = [Path(p) for p in paths]
    if len(paths) < 1:
        raise UserError("merge needs at least one run folder")
    out = Path(out)
    if out.resolve() in {p.resolve() for p in paths}:
        raise UserError(f"--out {out}: is one of the runs being merged")
    if (out / RECORDS).exists() and (out / RECORDS).stat().st_size:
        raise UserError(f"--out {out}: already holds records; merge into a new folder")
    runs = [read_run(p) for p in paths]
    infos = [info for info, _ in runs]
    problems = conflicts(infos, paths, ignore)
    if problems:
        raise UserError(f"cannot merge: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    seen: dict[str, Path] = {}
    records = []
    for path, (_, rows) in zip(paths, runs):
        for row in rows:
            sid = row.get("scenario_id")
            if sid in seen:
                raise UserError(f"cannot merge: scenario {sid} is recorded in both {seen[sid]} and {path}")
            seen[sid] = path
            records.append(row)
    grid = infos[0].get("shard_grid") or [s for info in infos for s in info.get("scenarios", [])]
    position = {sid: i for i, sid in enumerate(grid)}
    records.sort(key=lambda r: position.get(r.get("scenario_id"), len(position)))
    missing = [sid for sid in grid if sid not in seen]
    info = {k: v for k, v in infos[0].items() if k not in SHARD_FIELDS}
    info.update(
        scenarios=[r.get("scenario_id") for r in records], merged_from=[str(p) for p in paths],
        missing_scenarios=missing, started_utc=min(str(i.get("started_utc", "")) for i in infos),
    )
    dicts = [d for i in infos for d in i.get("grid", [])]  # the shards' scenarios, for --resume of the merged run
    if dicts:
        info["grid"] = sorted(dicts, key=lambda d: position.get(Scenario(**d).id, len(position)))
    with RunWriter(out, info) as writer:
        for row in records:
            writer.write(row)
    return {"records": len(records), "missing": missing, "out": out}
