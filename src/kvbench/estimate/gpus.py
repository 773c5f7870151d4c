"""The bundled GPU table (datasheet figures) and lookup by the names users type or NVML reports."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from ..errors import UserError


@lru_cache(maxsize=1)
def gpu_table() -> list[dict]:
    return json.loads((resources.files("kvbench") / "data" / "gpus.json").read_text())["gpus"]


def _key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def find_gpu(name: str) -> dict:
    """A GPU by alias or name, case-insensitive ("t4", "A100-80GB", "H100 SXM")."""
    wanted = _key(name)
    for gpu in gpu_table():
        if wanted in {_key(a) for a in [gpu["name"], *gpu.get("aliases", [])]}:
            return gpu
    names = ", ".join(gpu["aliases"][0] if gpu.get("aliases") else gpu["name"] for gpu in gpu_table())
    raise UserError(f"unknown GPU {name!r}; known: {names}")


def match_device_name(device_name: str) -> dict | None:
    """The table entry whose NVML name matches a device name (the longest match wins), or None."""
    best, best_len = None, 0
    for gpu in gpu_table():
        for pattern in gpu.get("nvml_names", []):
            if pattern.lower() in device_name.lower() and len(pattern) > best_len:
                best, best_len = gpu, len(pattern)
    return best
