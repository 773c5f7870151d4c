"""The bytes a live cache object holds: the instrument beside `kvbench.estimate.kvcache`'s estimate, which must
agree with it to the byte (its module docstring gives the rules; tests/test_kvcache.py checks them).
"""

from __future__ import annotations

from typing import Any

import torch


def _collect_tensors(obj: Any, seen: set[int], found: list[torch.Tensor]) -> None:
    """Append every tensor reachable from ``obj``: a Cache, its layers, dicts/lists/tuples (the legacy
    tuple-of-tuples format included) and any attribute of theirs; tensor subclasses that wrap inner tensors
    (quantized tensors) are opened. Models and configs a cache may point to are not walked into."""
    if obj is None or isinstance(obj, (str, bytes, int, float, bool, type, torch.dtype, torch.device)):
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter) and hasattr(obj, "__tensor_flatten__"):
            for name in obj.__tensor_flatten__()[0]:
                _collect_tensors(getattr(obj, name), seen, found)
        else:
            found.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _collect_tensors(value, seen, found)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            _collect_tensors(value, seen, found)
    elif isinstance(obj, torch.nn.Module) or type(obj).__name__.endswith("Config"):
        return
    elif hasattr(obj, "__dict__"):
        for value in vars(obj).values():
            _collect_tensors(value, seen, found)


def _state_tensors(cache: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _collect_tensors(cache, set(), found)
    return [t for t in found if t.dim() > 0]  # 0-dim tensors are counters/scales, see the module docstring


def _storages(cache: Any) -> dict[tuple[str, int], int]:
    storages: dict[tuple[str, int], int] = {}
    for t in _state_tensors(cache):
        storage = t.untyped_storage()
        if storage.nbytes():
            storages[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return storages


def cache_nbytes(cache: Any) -> int:
    """Bytes of memory the cache holds: the storage under every tensor it references, each storage counted once
    (keys and values that are views of one buffer, or one tensor shared by two layers, count once). None -> 0."""
    return sum(_storages(cache).values())


def cache_nbytes_by_device(cache: Any) -> dict[str, int]:
    """`cache_nbytes` per device ("cpu", "cuda:0", ...): a model split across devices keeps each layer's cache
    where the layer runs."""
    out: dict[str, int] = {}
    for (device, _), nbytes in _storages(cache).items():
        out[device] = out.get(device, 0) + nbytes
    return out


def cache_visible_nbytes(cache: Any) -> int:
    """Bytes of the tensors as seen (``numel * element_size``), each tensor once. In transformers' caches it is
    below ``cache_nbytes`` only for sliding-window layers of a dynamic cache outside beam search (module docstring);
    overlapping views of one buffer could also put it above."""
    return sum(t.numel() * t.element_size() for t in _state_tensors(cache))


