"""The run-folder store. Records on disk: one JSON line per scenario in `results/<run>/records.jsonl`, and loading runs into pandas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..errors import UserError
from .schema import json_safe

RECORDS = "records.jsonl"
RUN_INFO = "run.json"


class RunWriter:
    """Appends records to a run folder as each scenario finishes; every line is flushed and synced."""

    def __init__(self, run_dir: str | Path, settings: dict):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / RUN_INFO).write_text(json.dumps(json_safe(settings), indent=2) + "\n")
        self.path = self.dir / RECORDS
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return rows


def load_records(path: str | Path) -> list[dict]:
    """Records from a run folder, a records.jsonl file, or a pytest-benchmark JSON file."""
    path = Path(path)
    if path.is_dir():
        if (path / RECORDS).is_file():
            rows = read_jsonl(path / RECORDS)
            run = path.name
        else:
            raise UserError(f"{path}: no {RECORDS} in this folder")
    elif path.is_file() and path.suffix == ".jsonl":
        rows, run = read_jsonl(path), path.parent.name
    elif path.is_file() and path.suffix == ".json":
        from .benchjson import records_from_benchmark_json

        rows, run = records_from_benchmark_json(path), path.stem
    else:
        raise UserError(f"{path}: not a run folder, records.jsonl or pytest-benchmark JSON file")
    for row in rows:
        row.setdefault("run", run)
    return rows


def load_results(*paths: str | Path) -> pd.DataFrame:
    """One DataFrame of records (a row per scenario) from run folders and files; the `run` column names each."""
    if not paths:
        raise UserError("load_results needs at least one path")
    rows = [row for p in paths for row in load_records(p)]
    return pd.DataFrame(rows)
