"""The bytes a live cache object holds: the instrument beside `kvbench.estimate.kvcache`'s estimate, which must
agree with it to the byte, in total and kind by kind (its module docstring gives the rules; tests/test_kvcache.py
and tests/test_caches.py check them).

Every tensor reachable from the cache is found by walking its attributes, dicts, lists and tuples, opening tensor
subclasses through ``__tensor_flatten__`` (quanto's quantized tensors wrap a packed tensor, a scale and a shift), and
counted by its *storage*, each storage once. The name it was reached by gives its kind:

* ``key_value`` -- ``keys`` / ``values`` of attention layers (dynamic, static, sliding, hybrid, MLA latents);
* ``quantized_data``, ``quantized_scales``, ``quantized_zero_points`` -- what ``_quantized_keys`` /
  ``_quantized_values`` hold: quanto's ``_data`` / ``_scale`` / ``_shift``, hqq's (packed, {"scale", "zero"}), fp8's
  (data, scale); ``quantized_residual`` -- the full-precision ``keys`` / ``values`` of a quantized layer;
  ``beam_index`` -- the beam reordering a quantized layer defers (``_pending_beam_idx``);
* ``conv_state``, ``recurrent_state`` -- the constant-size states of linear-attention layers;
* ``indexer`` -- the indexer keys of sparse-attention layers; ``paged_pool`` -- the pool of a paged cache;
  ``other`` -- any other tensor (none in transformers' caches today: a test says so).

Zero-dim tensors are counted inside quantized storage (fp8's per-tensor scales, 4 bytes each) and skipped elsewhere,
where they are step counters (``cumulative_length``, ``_sliding_window_tensor``): bookkeeping, not cache.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ...results.cache_fields import device_fields, kind_fields

_QUANTIZED = {"_data": "quantized_data", "_scale": "quantized_scales", "scale": "quantized_scales",
              "_shift": "quantized_zero_points", "zero": "quantized_zero_points", "_zeropoint": "quantized_zero_points"}
_NAMED = {"conv_states": "conv_state", "recurrent_states": "recurrent_state", "indexer_keys": "indexer",
          "indexer_position_ids": "indexer", "_pending_beam_idx": "beam_index", "key_cache": "paged_pool",
          "value_cache": "paged_pool", "cache_tensor": "paged_pool"}


class Held(NamedTuple):
    """One tensor the cache references, with the kind its name gives it."""

    tensor: torch.Tensor
    kind: str


def _kind(name: str, kind: str | None, owner: Any) -> str | None:
    """The kind of what is reached by `name` from an object of kind `kind` (None: not known yet)."""
    if kind == "quantized":
        return _QUANTIZED.get(name, "quantized")
    if kind is not None and kind != "other":
        return kind
    if name in ("_quantized_keys", "_quantized_values"):
        return "quantized"
    if name in ("keys", "values"):
        return "quantized_residual" if hasattr(owner, "_quantized_keys") else "key_value"
    return _NAMED.get(name, kind)


def _walk(obj: Any, kind: str | None, seen: set[int], found: list[Held]) -> None:
    if obj is None or isinstance(obj, (str, bytes, int, float, bool, type, torch.dtype, torch.device, torch.Size)):
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter) and hasattr(obj, "__tensor_flatten__"):
            for name in obj.__tensor_flatten__()[0]:  # a wrapper (quanto): its inner tensors hold the bytes
                _walk(getattr(obj, name), _kind(name, kind, obj), seen, found)
        else:
            found.append(Held(obj, kind or "other"))
    elif isinstance(obj, dict):
        for name, value in obj.items():
            _walk(value, _kind(name, kind, obj) if isinstance(name, str) else kind, seen, found)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(obj):
            sub = kind
            if kind == "quantized":  # hqq's (data, {"scale", "zero"}) and fp8's (data, scale) pairs
                sub = "quantized_data" if i == 0 else "quantized" if isinstance(value, dict) else "quantized_scales"
            _walk(value, sub, seen, found)
    elif isinstance(obj, torch.nn.Module) or type(obj).__name__.endswith("Config"):
        return
    elif hasattr(obj, "__dict__"):
        for name, value in vars(obj).items():
            _walk(value, _kind(name, kind, obj), seen, found)


def held_tensors(cache: Any) -> list[Held]:
    """Every tensor the cache holds, with its kind; the 0-dim step counters left out (module docstring)."""
    found: list[Held] = []
    _walk(cache, None, set(), found)
    return [h for h in found if h.tensor.dim() > 0 or h.kind.startswith("quantized_")]


def _storages(cache: Any) -> dict[tuple[str, int], tuple[int, str]]:
    """(device, address) -> (bytes, kind) of every storage, each once (the first name that reaches it gives the kind,
    unless it is "other" and a later one is named: the paged pool is reached through its allocators' views first)."""
    storages: dict[tuple[str, int], tuple[int, str]] = {}
    for held in held_tensors(cache):
        storage = held.tensor.untyped_storage()
        key = (str(held.tensor.device), storage.data_ptr())
        if storage.nbytes() and storages.get(key, (0, "other"))[1] == "other":  # a named kind wins over "other"
            storages[key] = (storage.nbytes(), held.kind)
    return storages


def cache_nbytes(cache: Any) -> int:
    """Bytes of memory the cache holds: the storage under every tensor it references, each storage counted once
    (keys and values that are views of one buffer, or one tensor shared by two layers, count once). None -> 0."""
    return sum(nbytes for nbytes, _ in _storages(cache).values())


def cache_nbytes_by_kind(cache: Any) -> dict[str, int]:
    """`cache_nbytes` by kind (module docstring), the kinds with bytes only."""
    out: dict[str, int] = {}
    for nbytes, kind in _storages(cache).values():
        out[kind] = out.get(kind, 0) + nbytes
    return out


def cache_nbytes_by_device(cache: Any) -> dict[str, int]:
    """`cache_nbytes` per device ("cpu", "cuda:0", ...): an offloaded cache keeps most layers in (pinned) host
    memory, a model split across devices keeps each layer's cache where the layer runs."""
    out: dict[str, int] = {}
    for (device, _), (nbytes, _) in _storages(cache).items():
        out[device] = out.get(device, 0) + nbytes
    return out


def cache_visible_nbytes(cache: Any) -> int:
    """Bytes of the tensors as seen (``numel * element_size``), each tensor once. In transformers' caches it is
    below ``cache_nbytes`` only for sliding-window layers of a dynamic cache outside beam search (module docstring);
    overlapping views of one buffer could also put it above."""
    return sum(h.tensor.numel() * h.tensor.element_size() for h in held_tensors(cache))


def cache_class(cache: Any) -> str | None:
    """The class of the cache generate really built ("DynamicCache", "StaticCache", "QuantizedCache", ...)."""
    return None if cache is None else type(cache).__name__



def cache_fields(cache: Any) -> dict:
    """The flat record fields of a returned cache (None: the scenario ran without one): its class, its bytes, and
    its bytes by kind and by device (`kvbench.results.cache_fields`)."""
    return {"cache_class": cache_class(cache), "kv_cache_bytes": cache_nbytes(cache),
            **kind_fields(cache_nbytes_by_kind(cache)), **device_fields(cache_nbytes_by_device(cache))}
