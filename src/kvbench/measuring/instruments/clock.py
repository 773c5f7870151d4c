"""The clock: one code path for CPU and CUDA. The only choice is what a mark is: a CUDA event recorded on the
stream of the model's device (read after one synchronize at the end) or `time.perf_counter()` on the CPU.
"""

from __future__ import annotations

from time import perf_counter

import torch


class Clock:
    """Marks points in time; `intervals` turns consecutive marks into seconds."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        # On the current stream of the model's device: a bare record() lands on the current device's stream,
        # which for a model on cuda:1 is cuda:0's idle one.
        event.record(torch.cuda.current_stream(self.device))
        return event

    def intervals(self, marks: list) -> list[float]:
        """Seconds between consecutive marks (synchronizes once, on the last CUDA event)."""
        if self.cuda:
            marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]
