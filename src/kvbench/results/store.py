"""The run-folder store. Records on disk: one JSON line per scenario in `results/<run>/records.jsonl` (each line
flushed and fsynced as its scenario finishes), the run's settings in `run.json`, and loading runs into pandas.

What a killed writer leaves behind is expected: its last line may be half-written (no newline, not JSON). Readers
skip such a line with a `PartialLineWarning` naming file and line; a resumed writer removes it before appending.
Anything else that is not a record (a complete line that is not JSON, not UTF-8, a JSON array, a record of a newer
schema) is refused with one `UserError` naming file and line. One process writes a run folder at a time: the
writer holds an exclusive lock on `<run>/.lock` (released by the system when the process ends, however it ends).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pandas as pd

from ..errors import UserError
from .schema import SCHEMA_VERSION, PartialLineWarning, json_safe, record_problem, upgrade  # noqa: F401 - re-exported

try:
    import fcntl
except ImportError:  # not on Windows: runs are written without a lock there (a warning says so)
    fcntl = None

RECORDS = "records.jsonl"
RUN_INFO = "run.json"
LOCK = ".lock"


class RunWriter:
    """Appends records to a run folder as each scenario finishes; every line is flushed and synced.

    A new run refuses a folder that already holds one (`run.json` or records); `resume=True` continues the run in
    the folder instead, keeping its `run.json` (`info`) and its records. Either way the folder is locked for this
    process until `close()`, and everything is checked on construction: a folder that cannot be written raises a
    UserError here, before any measuring.
    """

    def __init__(self, run_dir: str | Path, settings: dict | None = None, resume: bool = False):
        self.dir = Path(run_dir)
        self.path = self.dir / RECORDS
        self.resumed = resume
        self.created = [p for p in (self.dir, *self.dir.parents) if not p.exists()]  # the folders it will make
        self._lock = self._file = None
        try:
            self._open(settings or {}, resume)
        except OSError as exc:
            self.close()
            raise UserError(f"{self.dir}: cannot write the run folder there ({exc.strerror or exc})") from None
        except BaseException:
            self.close()
            raise

    def _open(self, settings: dict, resume: bool) -> None:
        if resume:
            if not self.dir.is_dir():
                raise UserError(f"{self.dir}: no such run folder to resume")
        elif self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"{self.dir}: exists and is not a folder (choose another run folder)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = take_lock(self.dir)
        if resume:
            self.info = read_run_info(self.dir)
            repair_tail(self.path)
        else:
            if (self.dir / RUN_INFO).exists() or (self.path.exists() and self.path.stat().st_size):
                raise UserError(f"{self.dir}: already holds a run; continue it with --resume {self.dir} "
                                "(resume=True in the API) or write to another folder (--out)")
            self.info = {}
        self.update_info(settings)
        self._file = open(self.path, "a", encoding="utf-8")

    def update_info(self, fields: dict) -> None:
        """Merge `fields` into run.json (written whole to a temporary file, then renamed over the old one)."""
        self.info.update(json_safe(fields))
        write_json_atomically(self.dir / RUN_INFO, self.info)

    def records(self) -> list[dict]:
        """The records on disk now."""
        return read_jsonl(self.path) if self.path.exists() else []

    def rewrite(self, records: list[dict]) -> None:
        """Replace the records file by `records` (atomically: a kill leaves the old file or the new one)."""
        self._file.close()
        text = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records)
        write_text_atomically(self.path, text)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        line = json.dumps(json_safe(record), allow_nan=False) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise UserError(f"{self.path}: cannot write a record ({exc.strerror or exc})") from None

    def discard_if_empty(self) -> None:
        """Close, and remove what this writer made of a new run that recorded nothing (a sweep refused before its
        first scenario leaves no folder behind). A resumed run, or one with records, is only closed."""
        empty = not self.resumed and self._file is not None and not self.records()
        self.close()
        if empty:
            for name in (RECORDS, RUN_INFO, LOCK):
                (self.dir / name).unlink(missing_ok=True)
            for folder in self.created:  # the run folder, then the parents it made (results/), while empty
                if any(folder.iterdir()):
                    break
                folder.rmdir()

    def close(self) -> None:
        for handle in (self._file, self._lock):
            if handle is not None:
                handle.close()  # closing the lock file releases the lock
        self._file = self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def take_lock(run_dir: Path):
    """An exclusive, non-blocking lock on `<run>/.lock` (holding this process's id), or a UserError naming the
    process that holds it."""
    handle = open(run_dir / LOCK, "a+", encoding="utf-8")
    if fcntl is None:
        warnings.warn(f"{run_dir}: this system has no fcntl file locks; make sure no other kvbench process writes "
                      "this run folder", stacklevel=3)
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise UserError(f"{run_dir}: another kvbench process{f' (pid {holder})' if holder else ''} is writing "
                        "this run folder; wait for it to finish or write to another folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomically(path: Path, data: dict) -> None:
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def read_run_info(run_dir: Path) -> dict:
    """A run folder's run.json, checked: an object written by this schema version or an older one."""
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        raise UserError(f"{run_dir}: no {RUN_INFO}, so no run to resume here (start it without --resume)")
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a kvbench run.json ({exc})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: not a kvbench run.json (not a JSON object)")
    version = info.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {version!r}; this kvbench writes runs of schema {SCHEMA_VERSION}")
    return info


def repair_tail(path: Path) -> None:
    """Make `path` end at a line's end before more is appended: a last line that lost only its newline gets it
    back; a half-written one (not JSON) is cut off, with a PartialLineWarning."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            json.loads(tail.decode("utf-8"))
            f.write(b"\n")
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            f.truncate(cut)
            number = data.count(b"\n") + 1
            warnings.warn(PartialLineWarning(
                f"{path}:{number}: removed a half-written last line ({len(tail)} bytes, the "
                "writer was killed mid-line); its scenario runs again"), stacklevel=3)
        f.flush()
        os.fsync(f.fileno())


def parse_line(path: Path, number: int, raw: bytes) -> dict:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}:{number}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{number}: not a JSON line ({exc.msg} at column {exc.colno})") from None
    problem = record_problem(row)
    if problem:
        raise UserError(f"{path}:{number}: {problem}")
    return row


def read_jsonl(path: Path) -> list[dict]:
    """The records of a records.jsonl file. A half-written last line (no newline, not JSON: a killed writer) is
    skipped with a PartialLineWarning; any other line that is not a record raises a UserError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    *lines, tail = data.split(b"\n")  # `tail` is b"" when the file ends with a newline
    rows = [parse_line(path, number, raw) for number, raw in enumerate(lines, 1) if raw.strip()]
    if tail.strip():
        try:
            json.loads(tail.decode("utf-8"))
        except ValueError:
            warnings.warn(PartialLineWarning(
                f"{path}:{len(lines) + 1}: skipped a half-written last line ({len(tail)} bytes, no newline: its "
                "writer was killed mid-line)"), stacklevel=2)
        else:  # a complete record that lost only its newline
            rows.append(parse_line(path, len(lines) + 1, tail))
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
        for number, row in enumerate(rows, 1):
            problem = record_problem(row)
            if problem:
                raise UserError(f"{path}: kvbench benchmark {number} ({row.get('benchmark')}): {problem}")
    elif not path.exists():
        raise UserError(f"{path}: no such file or folder")
    else:
        raise UserError(f"{path}: not a run folder, records.jsonl or pytest-benchmark JSON file")
    rows = [upgrade(row) for row in rows]  # older schemas read as this one
    for row in rows:
        row.setdefault("run", run)
    return rows


def load_results(*paths: str | Path) -> pd.DataFrame:
    """One DataFrame of records (a row per scenario) from run folders and files; the `run` column names each."""
    if not paths:
        raise UserError("load_results needs at least one path")
    rows = [row for p in paths for row in load_records(p)]
    return pd.DataFrame(rows)
