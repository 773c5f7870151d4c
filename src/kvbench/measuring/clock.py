"""The clock: one code path for CPU and CUDA. The only choice is what a mark is: a CUDA event recorded on the
stream (read after one synchronize at the end) or `time.perf_counter()` on the CPU.
"""

from __future__ import annotations

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
