"""Host time and device time of the decode steps: one extra generate under `torch.profiler`.

The timed repeats measure wall-clock steps (`decode_step_s`: the time between consecutive forward starts). This
profiled generate, run apart from them so they stay unperturbed, says how much of a step the device was busy:
a profiler range spans each forward start to the next (the last to the end of generate), and

* on CUDA a step's device time is the summed duration of the kernels launched inside its range (CUPTI's kernel
  records, attributed to the range through their launches; CUDA-graph replays included);
* on the CPU, where the "device" is the CPU itself, it is the time spent inside torch operators started in the
  range (the summed durations of the range's top-level operators: everything but the Python around them).

Steps are the N-1 ranges after the first (whose range holds the prefill and the first token), as in
`decode_steps_s`. The busy fraction (device time over the timed repeats' wall-clock step) near 1 says the device
bounds the step; well below 1, the host (Python, kernel launches) does, and compiling should help. It can exceed 1
a little, the profiled run being slower than the timed ones, or by more on CUDA where the host runs ahead of the
device.

CUDA graphs (compiled decode, mode reduce-overhead) captured before CUPTI is first initialised are replayed unseen
or crash the profiler (pytorch/pytorch#75504): `prepare_for_cuda_graphs` initialises it once per process, and
`measure` calls it before a profiled scenario's first generate, ahead of any capture. A graph captured earlier in
the process (a scenario measured without --profile-steps before one with it) is still a hazard: `kvbench run
--profile-steps` profiles every scenario, so the first capture comes after the call.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys

import torch

STEP_RANGE = "kvbench::forward"
_CUPTI_READY: set = set()


def prepare_for_cuda_graphs(device) -> bool:
    """On CUDA, initialise CUPTI (an empty profiler session: torch's own workaround, `_init_for_cuda_graphs`) once
    per process, before CUDA graphs are captured. True where done (now or before); False off CUDA or where the torch
    at hand lacks the workaround."""
    if torch.device(device).type != "cuda":
        return False
    if not _CUPTI_READY:
        try:
            from torch.profiler._utils import _init_for_cuda_graphs
        except ImportError:
            return False
        _init_for_cuda_graphs()
        _CUPTI_READY.add(True)
    return True


@contextlib.contextmanager
def step_ranges(model: torch.nn.Module):
    """A profiler range from each forward start to the next; the last one closes on leaving the block."""
    current = []

    def close():
        if current:
            current.pop().__exit__(None, None, None)

    @torch.compiler.disable
    def hook(module, args, kwargs):
        close()
        step = torch.profiler.record_function(STEP_RANGE)
        step.__enter__()
        current.append(step)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        close()


def busy_us(event, cuda: bool) -> float:
    """Microseconds the device was busy for one step range (see the module docstring)."""
    if cuda:
        return float(event.device_time_total)
    return float(sum(child.cpu_time_total for child in event.cpu_children))


def step_events(events) -> list:
    """The host-side step ranges of a profile, in order (CUDA mirrors user ranges on the device timeline: skipped)."""
    from torch.autograd import DeviceType

    ranges = [e for e in events if e.name == STEP_RANGE and e.device_type == DeviceType.CPU]
    return sorted(ranges, key=lambda e: e.time_range.start)


def step_figures(ranges, cuda: bool, decode_step_s: float | None) -> dict:
    """The record fields from the step ranges of one profiled generate."""
    decode = ranges[1:]
    device = [busy_us(e, cuda) / 1e6 for e in decode]
    wall = [e.cpu_time_total / 1e6 for e in decode]
    step_device = statistics.median(device) if device else None
    return {
        "profile_device": "cuda" if cuda else "cpu",
        "profile_forward_calls": len(ranges),
        "decode_steps_device_s": device,
        "decode_step_device_s": step_device,
        "decode_step_profiled_s": statistics.median(wall) if wall else None,
        "decode_device_busy_fraction": step_device / decode_step_s if step_device and decode_step_s else None,
    }


def profile_steps(model: torch.nn.Module, device: torch.device, run_generate, decode_step_s: float | None) -> dict:
    """Run `run_generate()` once under the profiler and measure its decode steps' device time.

    `decode_device_busy_fraction` divides the median device time of a step by `decode_step_s`, the median wall-clock
    step of the unprofiled timed repeats (the profiler slows the host; `decode_step_profiled_s` shows by how much).
    """
    from torch.profiler import ProfilerActivity

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with quiet_profile(activities=activities) as prof:
        with step_ranges(model):
            run_generate()
        if cuda:
            torch.cuda.synchronize(device)
    return step_figures(step_events(prof.events()), cuda, decode_step_s)


@contextlib.contextmanager
def quiet_profile(**options):
    """`torch.profiler.profile(**options)` around the block, its start and stop with the process's native stderr
    silenced: torch's profiler library (kineto) prints "profiler_start" / "profiler_stop" lines there at every start
    and stop, which `KINETO_LOG_LEVEL` does not turn off. Python's own stderr and the block's output are untouched."""
    from torch.profiler import profile

    prof = profile(**options)
    with native_stderr_silenced():
        prof.start()
    try:
        yield prof
    finally:
        with native_stderr_silenced():
            prof.stop()


@contextlib.contextmanager
def native_stderr_silenced():
    """File descriptor 2 pointed at the null device for the block (what C++ libraries write there), then restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


NOT_PROFILED = dict.fromkeys(
    ("profile_device", "profile_forward_calls", "decode_steps_device_s", "decode_step_device_s",
     "decode_step_profiled_s", "decode_device_busy_fraction")
)
