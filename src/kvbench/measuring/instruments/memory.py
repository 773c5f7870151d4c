"""Memory readers: torch's CUDA allocator, NVML and the process's resident set, as a probe around a block."""

from __future__ import annotations

import contextlib
import gc

import torch

from .nvml import MEMORY_SOURCES, nvml_memory


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
def collector_paused():
    """The cyclic garbage collector off inside the block (back on after it, if it was on).

    generate makes no cyclic garbage (its tensors go by reference counting), so a collection inside a timed call
    would only add its own time (a full one scans every object of transformers and torch) and move the memory
    figures; measure() collects once per scenario, before the warm-up, instead.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cuda_graph_pool_bytes(device: torch.device) -> tuple[int | None, int | None]:
    """(reserved, allocated) bytes of the allocator's private pools on `device`: the CUDA graphs' pools (compiled
    decode, mode reduce-overhead). A replayed graph allocates nothing: its intermediates live in its pool's memory,
    reserved but not allocated, which `max_memory_allocated` never sees. (None, None) where unreadable; (0, 0) with
    no graph captured."""
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            segments = torch.cuda.memory.memory_snapshot(include_traces=False)
        except TypeError:  # a torch without include_traces
            segments = torch.cuda.memory.memory_snapshot()
        private = [s for s in segments
                   if s.get("device") == index and tuple(s.get("segment_pool_id") or (0, 0)) != (0, 0)]
        return sum(int(s["total_size"]) for s in private), sum(int(s["allocated_size"]) for s in private)
    except Exception:  # a CPU build, a fake allocator, a snapshot without these keys
        return None, None


def _nvml_used(handle) -> tuple[int | None, int | None]:
    info, version = nvml_memory(handle)
    return (None if info is None else int(info.used)), version


@contextlib.contextmanager
def memory_probe(device: torch.device, nvml=None):
    """Memory around the block, each figure named for its source; the garbage collector is paused inside it.

    CUDA: torch's allocator peaks, absolute and above the level just before the block (allocated and reserved;
    after a warm-up the reserved delta is about 0, since the warm-up's blocks stay cached, so the absolute peak is
    the figure to read), and NVML's device memory in use before and right after the block (the caching allocator
    never hands memory back during generate, so the after-reading sees the peak reservation). CPU: the process's
    peak resident set (VmHWM, reset before the block) above the resident set before it, labelled process RSS (the
    allocated peak on the CPU comes from `alloc_peak`, in an untimed pass of its own).
    """
    out: dict = {}
    with collector_paused():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            alloc0, reserved0 = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
            torch.cuda.reset_peak_memory_stats(device)
            nvml0, _ = _nvml_used(nvml)
            yield out
            torch.cuda.synchronize(device)
            nvml1, version = _nvml_used(nvml)
            peak_alloc, peak_reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
            out.update(
                peak_allocated_delta_bytes=peak_alloc - alloc0,
                peak_reserved_delta_bytes=peak_reserved - reserved0,
                peak_allocated_bytes=peak_alloc,
                peak_reserved_bytes=peak_reserved,
                allocated_before_bytes=alloc0,
                reserved_before_bytes=reserved0,
                nvml_used_before_bytes=nvml0,
                nvml_used_after_bytes=nvml1,
                nvml_used_source=MEMORY_SOURCES.get(version, "unavailable"),
                peak_memory_source="torch.cuda.max_memory_allocated",
            )
            pool_reserved, pool_allocated = cuda_graph_pool_bytes(device)
            if pool_reserved:  # compiled decode: its graphs' pool counted (an upper bound: free pool blocks included)
                out.update(cuda_graph_pool_reserved_bytes=pool_reserved, cuda_graph_pool_allocated_bytes=pool_allocated,
                           peak_memory_source="torch.cuda.max_memory_allocated + CUDA graph pool (reserved, not "
                                              "allocated)")
                out["peak_allocated_delta_bytes"] += pool_reserved - pool_allocated
            out.update(peak_memory_delta_bytes=out["peak_allocated_delta_bytes"],
                       peak_allocated_source=out["peak_memory_source"])
        else:
            ok = _reset_peak_rss()
            rss0 = _proc_status_kib("VmRSS")
            yield out
            hwm = _proc_status_kib("VmHWM")
            delta = (hwm - rss0) * 1024 if ok and hwm is not None and rss0 is not None else None
            out.update(
                peak_rss_delta_bytes=delta,
                rss_before_bytes=rss0 * 1024 if rss0 is not None else None,
                peak_rss_source="process peak RSS (VmHWM)" if delta is not None else "unavailable",
            )
