"""The flat record fields of a cache's bytes by kind and by device, and reading them back into dicts.

Records stay flat (one JSON-safe dict per scenario): the breakdowns are spread over one field per entry,
``kv_cache_kind_<kind>_bytes`` (measured), ``kv_cache_kind_<kind>_bytes_estimate`` (estimated) and
``kv_cache_device_<device>_bytes`` (measured) and ``kv_cache_device_<device>_bytes_estimate`` (the device name
with its colon dropped: cpu, cuda0, ...). Their sums are ``kv_cache_bytes`` and ``kv_cache_bytes_estimate``.
"""

from __future__ import annotations

import re

KIND_PREFIX, DEVICE_PREFIX = "kv_cache_kind_", "kv_cache_device_"
_KIND = re.compile(r"^kv_cache_kind_(\w+?)_bytes(_estimate)?$")
_DEVICE = re.compile(r"^kv_cache_device_(\w+?)_bytes(_estimate)?$")


def kind_fields(by_kind: dict[str, int], estimate: bool = False) -> dict[str, int]:
    suffix = "_estimate" if estimate else ""
    return {f"{KIND_PREFIX}{kind}_bytes{suffix}": n for kind, n in by_kind.items()}


def device_fields(by_device: dict[str, int], estimate: bool = False) -> dict[str, int]:
    suffix = "_estimate" if estimate else ""
    return {f"{DEVICE_PREFIX}{device.replace(':', '')}_bytes{suffix}": n for device, n in by_device.items()}


def is_cache_field(name: str) -> bool:
    """A measured by-kind or by-device field."""
    return any(m is not None and not m.group(2) for m in (_KIND.match(name), _DEVICE.match(name)))


def _matching(record: dict, pattern, estimate: bool) -> dict[str, int]:
    """The record's fields `pattern` matches, measured or estimated, keyed by the part it names (fields that are
    None or NaN left out)."""
    out = {}
    for name, value in record.items():
        match = pattern.match(name)
        if match and bool(match.group(2)) == estimate and value == value and value is not None:
            out[match.group(1)] = int(value)
    return out


def by_kind(record: dict, estimate: bool = False) -> dict[str, int]:
    """The measured (or estimated) bytes by kind a record holds (fields that are None or NaN left out)."""
    return _matching(record, _KIND, estimate)


def by_device(record: dict, estimate: bool = False) -> dict[str, int]:
    """The measured (or estimated) bytes by device a record holds."""
    return _matching(record, _DEVICE, estimate)
