"""Pinned host memory around a generate with an offloaded cache (CUDA only).

An offloaded cache trades GPU bytes for host bytes: after each layer's update it copies the layer to the CPU with
``non_blocking=True``, into page-locked (pinned) memory from torch's caching host allocator, and prefetches the
next layer back. ``torch.cuda.host_memory_stats()`` reads that allocator: ``allocated_bytes`` are the pinned
blocks it owns (in use and cached), ``active_bytes`` the blocks handed out. Records of offloaded scenarios on CUDA
carry their peaks during the call beside the GPU allocator's (``peak_allocated_delta_bytes``); elsewhere the probe
records nothing.
"""

from __future__ import annotations

import contextlib

import torch

from ...inputs.scenario import OFFLOADED

SOURCE = "torch.cuda.host_memory_stats"


def pinned_host_applies(device: torch.device, cache_implementation: str | None) -> bool:
    return (device.type == "cuda" and cache_implementation in OFFLOADED
            and hasattr(torch.cuda, "host_memory_stats") and hasattr(torch.cuda, "reset_peak_host_memory_stats"))


@contextlib.contextmanager
def pinned_host_probe(device: torch.device, cache_implementation: str | None):
    """The pinned host allocator's peaks inside the block, absolute and above the level before it."""
    out: dict = {}
    if not pinned_host_applies(device, cache_implementation):
        yield out
        return
    before = torch.cuda.host_memory_stats()
    torch.cuda.reset_peak_host_memory_stats()
    yield out
    torch.cuda.synchronize(device)  # the last offloading copies land before the figures are read
    after = torch.cuda.host_memory_stats()
    owned0, active0 = before.get("allocated_bytes.current", 0), before.get("active_bytes.current", 0)
    owned, active = after.get("allocated_bytes.peak", 0), after.get("active_bytes.peak", 0)
    out.update(
        pinned_host_peak_bytes=owned,
        pinned_host_peak_delta_bytes=owned - owned0,
        pinned_host_active_peak_bytes=active,
        pinned_host_active_peak_delta_bytes=active - active0,
        pinned_host_before_bytes=owned0,
        pinned_host_memory_source=SOURCE,
    )
