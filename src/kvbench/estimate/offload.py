"""Where an offloaded cache's bytes lie after generate: the GPU or (pinned) host memory. The bytes themselves are
those of the dynamic or static cache it offloads (`kvbench.estimate.kvcache`); offloading only moves them.

Rules read in transformers 5.24's ``Cache.update`` / ``prefetch`` / ``offload`` (to be confirmed on a GPU, see
tools/gpu_offload_check.py): a layer is offloadable unless it is a linear-attention layer (updated outside
``Cache.update``), a no-cache layer, or -- for ``offloaded_static`` (``StaticCache``, ``offload_only_non_sliding``
True) -- a sliding layer; ``offloaded`` (``DynamicCache``) offloads sliding layers too. Each ``update`` first
prefetches the next offloadable layer to the GPU (circling back to the first after the last), then offloads the
layer it updated. After the last forward, the first offloadable layer is therefore back on the GPU (if there are
two or more), every other offloadable layer is on the CPU, and the layers that are never offloaded stay on the GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from .kvcache import cache_rules, estimate_kv_cache_bytes, kv_layer_specs


def layer_bytes(config: Any, *, batch_size: int, prompt_len: int, new_tokens: int, dtype: torch.dtype | str,
                num_beams: int = 1, cache_implementation: str = "dynamic") -> list[int]:
    """Bytes each decoder layer's cache holds after generate (dynamic or static rules; KV plus any state): the
    per-layer figures of `kvbench.estimate.kvcache.estimate_kv_cache_bytes`."""
    if cache_rules(cache_implementation) not in ("dynamic", "static"):
        raise ValueError(f"{cache_implementation!r} has no per-layer offloading rule")
    return estimate_kv_cache_bytes(config, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
                                   dtype=dtype, num_beams=num_beams, cache_implementation=cache_implementation,
                                   by_layer=True)


def offloadable(config: Any, cache_implementation: str) -> list[bool]:
    only_non_sliding = cache_rules(cache_implementation) == "static"
    return [spec.kind == "full" or (spec.kind == "sliding" and not only_non_sliding)
            for spec in kv_layer_specs(config)]


def device_name(device: torch.device | str) -> str:
    """The key of a device in the by-device fields: "cpu", "cuda0", ... (the colon dropped, index 0 by default)."""
    device = torch.device(device)
    return device.type if device.type == "cpu" else f"{device.type}{device.index or 0}"


def estimate_kv_cache_bytes_by_device(config: Any, *, device: torch.device | str, batch_size: int, prompt_len: int,
                                      new_tokens: int, dtype: torch.dtype | str, num_beams: int = 1,
                                      cache_implementation: str = "dynamic", total: int | None = None) -> dict[str, int]:
    """Bytes of the cache after generate by device ("cpu", "cuda0"): all on the model's device unless the
    implementation offloads (module docstring). ``total``: the cache's bytes, when they are known already (any
    implementation; needed for the quantized cache, which has no per-layer rule here)."""
    here = device_name(device)
    if not str(cache_implementation).startswith("offloaded"):
        if total is None:
            total = sum(layer_bytes(config, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
                                    dtype=dtype, num_beams=num_beams, cache_implementation=cache_implementation))
        return {here: total} if total else {}
    layers = layer_bytes(config, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens, dtype=dtype,
                         num_beams=num_beams, cache_implementation=cache_implementation)
    moved = offloadable(config, cache_implementation)
    on_gpu = [i for i, m in enumerate(moved) if not m]
    if sum(moved) >= 2:
        on_gpu.append(moved.index(True))  # prefetched back by the last update
    out = {here: sum(layers[i] for i in on_gpu), "cpu": sum(n for i, n in enumerate(layers) if i not in on_gpu)}
    return {k: n for k, n in out.items() if n}
