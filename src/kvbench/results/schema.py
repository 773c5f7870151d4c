"""The record: its schema version, and the plain JSON types every field is reduced to before it is written."""

from __future__ import annotations

import math

# 2: an uncached record stores its cache-only axes (cache_implementation, compile, quant_*) as null; 1 stored
# cache_implementation "none" and compile "auto" there (read as 2 by `upgrade`).
SCHEMA_VERSION = 2


def json_safe(value):
    """Plain JSON types only: numpy scalars to Python, tensors and dtypes to text, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalars, 0-d tensors
        return json_safe(value.item())
    return str(value)


# Fields every kvbench record has (measured scenarios, frontier probes, records from pytest-benchmark files).
RECORD_KEYS = ("model", "prompt_len")


def record_problem(row) -> str | None:
    """What keeps `row` from being a kvbench record this version can read, or None when it is one."""
    if not isinstance(row, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(row), "number")
        return f"a JSON {kind} where a record (a JSON object) belongs"
    missing = [key for key in RECORD_KEYS if key not in row]
    if missing:
        return f"not a kvbench record (no {' or '.join(repr(k) for k in missing)} field)"
    version = row.get("schema_version", SCHEMA_VERSION)  # records written without one are taken as current
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return f"schema_version {version!r} is not a kvbench schema version"
    if version > SCHEMA_VERSION:
        return (f"written by a newer kvbench (schema_version {version}; this kvbench reads up to "
                f"{SCHEMA_VERSION}): upgrade kvbench to read it")
    return None


def upgrade(row: dict) -> dict:
    """A record as this schema version holds it: an uncached record of schema 1 gets null cache-only axes."""
    from ..inputs.axes import not_applicable

    version = row.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and version < 2 and row.get("use_cache") is False:
        return not_applicable(row)
    return row


class PartialLineWarning(UserWarning):
    """A records file ends in a half-written line (its writer was killed); the line was skipped."""
