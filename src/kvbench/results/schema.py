"""The record: its schema version, and the plain JSON types every field is reduced to before it is written."""

from __future__ import annotations

import math

SCHEMA_VERSION = 1


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
