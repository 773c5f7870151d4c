"""The forward-pass recorder: counts the model's forward calls, the positions each processed, when each began, and
whether each ran as compiled code.

The recorder's pre-hook runs around the model's `__call__`, outside the compiled region in every case, and is
excluded from compilation (`torch.compiler.disable`): dynamo would otherwise compile it as a frame of its own and
recompile it at every step (its guard is the length of the marks list), tracing CUDA event records with it.

Compiled or not is read from what ran, not from what was asked: the input embeddings and the LM head carry a tiny
probe pre-hook that counts a call only when it runs as Python. In an eager forward it runs; in a compiled forward
dynamo has traced it (`torch.compiler.is_compiling()` is true then, so it traces to nothing) or never saw it, and
it does not run. A forward during which no probe ran executed compiled code. dynamo guards on the number of a
module's hooks, so the probes stay on for a whole scenario (`eager_probes`): adding or removing them between two
generates would recompile.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .clock import Clock


class _EagerCalls:
    count = 0  # probe calls that ran as Python, process-wide (one global: compiled code never refers to it)


def _probe(module, args):
    if not torch.compiler.is_compiling():
        _EagerCalls.count += 1


@dataclass
class ForwardLog:
    positions: list[int] = field(default_factory=list)  # sequence positions each forward call processed
    marks: list = field(default_factory=list)  # a clock mark at the start of each call
    probe_counts: list[int] = field(default_factory=list)  # eager probe calls so far, at each call's start and the end
    probed: bool = False  # whether the model had modules to probe

    @property
    def compiled(self) -> list[bool] | None:
        """Per forward call: True where it ran as compiled code (no probe ran as Python); None without probes."""
        if not self.probed:
            return None
        counts = self.probe_counts
        return [after == before for before, after in zip(counts, counts[1:])]


def probe_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The input embeddings and the LM head: modules every causal LM's forward calls, inside its compiled region."""
    found = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(module, torch.nn.Module) and module is not model and all(module is not m for m in found):
            found.append(module)
    return found


def _probed(module: torch.nn.Module) -> bool:
    return any(hook is _probe for hook in module._forward_pre_hooks.values())


@contextlib.contextmanager
def eager_probes(model: torch.nn.Module):
    """The probes on the model for the block (nested blocks reuse the outer one's); yields whether there are any."""
    modules = [m for m in probe_modules(model) if not _probed(m)]
    handles = [m.register_forward_pre_hook(_probe) for m in modules]
    try:
        yield any(_probed(m) for m in probe_modules(model))
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def record_forwards(model: torch.nn.Module, clock: Clock):
    """Counts the model's forward calls, the positions each processed, marks when each started, and, inside
    `eager_probes`, whether each ran compiled (`log.compiled`)."""
    log = ForwardLog(probed=any(_probed(m) for m in probe_modules(model)))

    @torch.compiler.disable
    def hook(module, args, kwargs):
        log.marks.append(clock.mark())
        log.probe_counts.append(_EagerCalls.count)
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
        log.probe_counts.append(_EagerCalls.count)
        handle.remove()
