"""Units shown to people: bytes and seconds as text, and memory sizes parsed from text ("14.75GiB").

The bottom layer with `errors`: it imports nothing from kvbench but `errors`, and everything may import it.
"""

from __future__ import annotations

import math
import re

from .errors import UserError

MIB, GIB = 2**20, 2**30


def missing(value) -> bool:
    """None, or the NaN pandas puts where a record lacks a field."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _missing(value) -> bool:  # what a formatter shows as "-": also the text pandas writes for a missing value
    return missing(value) or str(value) in ("nan", "NaN", "<NA>")


def fmt_bytes(n) -> str:
    if _missing(n):
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_bytes_exact(n) -> str:
    """Bytes exactly, beside their binary unit: "131,072 B (128.0 KiB)" (where users check a figure by hand)."""
    if _missing(n):
        return "-"
    short = fmt_bytes(n)
    return f"{int(n):,} B" + ("" if short.endswith(" B") else f" ({short})")


def fmt_seconds(s) -> str:
    if _missing(s):
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text, option: str = "--memory", minimum: int = MIB) -> int:
    """"16GiB", "14.75GiB", "24GB", "1.5e10", "512 MiB" -> bytes (GB = 1e9, GiB = 2**30), at least `minimum`."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UserError(f"{option}: {text!r} is not a memory size (use e.g. 16GiB, 14.75GiB, 24GB or 1.5e10)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if not minimum <= value <= 2**50:
        lowest = "0" if minimum == 0 else "1 MiB"
        raise UserError(f"{option}: {text!r} ({value} bytes) is not a possible GPU memory ({lowest} to 1 PiB)")
    return value
