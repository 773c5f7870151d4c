"""Memory readers: torch's CUDA allocator, NVML and the process's resident set, as a probe around a block."""

from __future__ import annotations

import contextlib
import gc

import torch

from .nvml import nvml_used_bytes


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM (peak resident set) to the current RSS when 5 is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def memory_probe(device: torch.device, nvml=None):
    """Peak memory above the level just before the block, each figure named for its source.

    CUDA: torch's allocator peaks (allocated and reserved) and NVML's device memory in use. The caching
    allocator never hands memory back during generate, so NVML read right after the block (before anything
    is freed) sees the peak reservation. CPU: the process's peak resident set (VmHWM, reset before the block).
    """
    out: dict = {}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        alloc0, reserved0 = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
        nvml0 = nvml_used_bytes(nvml)
        yield out
        torch.cuda.synchronize(device)
        nvml1 = nvml_used_bytes(nvml)
        out.update(
            peak_allocated_delta_bytes=torch.cuda.max_memory_allocated(device) - alloc0,
            peak_reserved_delta_bytes=torch.cuda.max_memory_reserved(device) - reserved0,
            allocated_before_bytes=alloc0,
            nvml_used_before_bytes=nvml0,
            nvml_used_peak_bytes=nvml1,
            peak_memory_source="torch.cuda.max_memory_allocated",
        )
        out["peak_memory_delta_bytes"] = out["peak_allocated_delta_bytes"]
    else:
        ok = _reset_peak_rss()
        rss0 = _proc_status_kib("VmRSS")
        yield out
        hwm = _proc_status_kib("VmHWM")
        delta = (hwm - rss0) * 1024 if ok and hwm is not None and rss0 is not None else None
        out.update(
            peak_rss_delta_bytes=delta,
            rss_before_bytes=rss0 * 1024 if rss0 is not None else None,
            peak_memory_source="process peak RSS (VmHWM)" if delta is not None else "unavailable",
            peak_memory_delta_bytes=delta,
        )
