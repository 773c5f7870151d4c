"""The forward-pass recorder: counts the model's forward calls, the positions each processed, and when each began."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .clock import Clock


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
