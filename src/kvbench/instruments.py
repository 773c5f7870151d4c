"""The instruments: a clock, a forward-pass recorder, and memory readers.

One code path for CPU and CUDA. The only choice is what a clock mark is: a CUDA event recorded on the
stream (read after one synchronize at the end) or `time.perf_counter()` on the CPU.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from time import perf_counter

import torch


class Clock:
    """Marks points in time; `intervals` turns consecutive marks into seconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def intervals(self, marks: list) -> list[float]:
        """Seconds between consecutive marks (synchronizes once, on the last CUDA event)."""
        if self.cuda:
            marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]


@dataclass
class ForwardLog:
    positions: list[int] = field(default_factory=list)  # sequence positions each forward call processed
    marks: list = field(default_factory=list)  # a clock mark at the start of each call


@contextlib.contextmanager
def record_forwards(model: torch.nn.Module, clock: Clock):
    """Counts the model's forward calls, the positions each processed, and marks when each started."""
    log = ForwardLog()

    def hook(module, args, kwargs):
        log.marks.append(clock.mark())
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        log.positions.append(int(x.shape[1]))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield log
    finally:
        handle.remove()


# ---------------------------------------------------------------- memory
def nvml_handle(device: torch.device):
    """The NVML handle of a CUDA device, matched by UUID (NVML ignores CUDA_VISIBLE_DEVICES); None if absent."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception:  # pynvml.NVMLError subclasses, no driver, no library: NVML is simply unavailable
        return None


def nvml_used_bytes(handle) -> int | None:
    if handle is None:
        return None
    import pynvml

    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except pynvml.NVMLError:
        return None


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
