"""The load instrument: how much of the machine a scenario had, read around its generates.

On every device: the CPU time this process got against the wall time (`cpu_utilization`: cores' worth), the CPU time
other processes took meanwhile (`other_busy_cores`: the whole machine's busy time from /proc/stat less this
process's own, over the wall time), the share of time the hypervisor gave to other guests (`steal_fraction`) and the
CPUs waited on I/O (`iowait_fraction`), the 1-minute load average and the CPU frequency where readable. On CUDA also
the SM and memory clocks at the end, NVML's clock-event ("throttle") reasons and the other processes on the GPU.

A scenario is measured under contention (`contention: true`, with `contention_reason` in words) when other
processes kept at least `OTHER_CORES_LIMIT` of a core busy, the steal exceeded `STEAL_LIMIT`, another process ran
on the GPU, or the GPU slowed its clocks for heat or a hardware brake. /proc/stat counts in ticks of 10 ms, so the
figures of a window shorter than `MIN_WINDOW_S` are recorded but decide nothing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from time import perf_counter

OTHER_CORES_LIMIT = 0.5
STEAL_LIMIT = 0.05
MIN_WINDOW_S = 0.2
PROC_STAT = Path("/proc/stat")
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
BUSY = ("user", "nice", "system", "irq", "softirq")
# NVML's clock-event reason bits (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*), and those that mean
# the GPU ran slower than it would on a quiet, cool machine.
THROTTLE_REASONS = {0x1: "gpu idle", 0x2: "applications clocks setting", 0x4: "software power cap",
                    0x8: "hardware slowdown", 0x10: "sync boost", 0x20: "software thermal slowdown",
                    0x40: "hardware thermal slowdown", 0x80: "hardware power brake", 0x100: "display clock setting"}
SLOWDOWNS = {"hardware slowdown", "software thermal slowdown", "hardware thermal slowdown", "hardware power brake"}


def parse_proc_stat(text: str) -> dict[str, float] | None:
    """The machine-wide `cpu` line of /proc/stat as seconds per field (all CPUs together); None if absent."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) / tick for v in parts[1:1 + len(STAT_FIELDS)]]
            return dict(zip(STAT_FIELDS, values + [0.0] * (len(STAT_FIELDS) - len(values))))
    return None


def read_proc_stat() -> dict[str, float] | None:
    try:
        return parse_proc_stat(PROC_STAT.read_text())
    except OSError:
        return None


def own_cpu_s() -> float:
    """CPU seconds (user + system, every thread) this process has used."""
    times = os.times()
    return times.user + times.system


def snapshot() -> dict:
    return {"wall": perf_counter(), "own": own_cpu_s(), "stat": read_proc_stat()}


def load_fields(before: dict, after: dict) -> dict:
    """What happened between two snapshots (pure: the snapshots are plain numbers)."""
    wall = after["wall"] - before["wall"]
    own = after["own"] - before["own"]
    out = {"load_window_s": wall, "cpu_time_s": own, "cpu_utilization": own / wall if wall > 0 else None,
           "other_busy_cores": None, "steal_fraction": None, "iowait_fraction": None}
    if before.get("stat") and after.get("stat") and wall > 0:
        delta = {k: after["stat"][k] - before["stat"][k] for k in STAT_FIELDS}
        total = sum(delta.values())
        out["other_busy_cores"] = max(0.0, (sum(delta[k] for k in BUSY) - own) / wall)
        out["steal_fraction"] = delta["steal"] / total if total > 0 else None
        out["iowait_fraction"] = delta["iowait"] / total if total > 0 else None
    return out


def contention_reason(fields: dict) -> str | None:
    """Why a scenario counts as measured under contention, in words; None when nothing says so."""
    reasons = []
    if (fields.get("load_window_s") or 0) >= MIN_WINDOW_S:
        others, steal = fields.get("other_busy_cores"), fields.get("steal_fraction")
        if others is not None and others >= OTHER_CORES_LIMIT:
            reasons.append(f"other processes kept {others:.1f} CPU core(s) busy")
        if steal is not None and steal > STEAL_LIMIT:
            reasons.append(f"the hypervisor took {steal:.0%} of the CPU time (steal)")
    if fields.get("gpu_other_processes"):
        reasons.append(f"{fields['gpu_other_processes']} other process(es) on the GPU")
    slowed = SLOWDOWNS.intersection(fields.get("gpu_throttle_reasons") or [])
    if slowed:
        reasons.append("the GPU slowed its clocks: " + ", ".join(sorted(slowed)))
    return "; ".join(reasons) or None


def cpu_freq_mhz() -> float | None:
    """The CPUs' mean current frequency (psutil: cpufreq in /sys, or /proc/cpuinfo), None where unreadable."""
    try:
        import psutil

        freq = psutil.cpu_freq()
    except Exception:  # psutil raises where neither source exists (containers, some VMs)
        return None
    return float(freq.current) if freq and freq.current else None


def load_average_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


def gpu_state(handle) -> dict:
    """SM and memory clocks, the clock-event reasons and other processes on the GPU, from NVML; {} without it."""
    if handle is None:
        return {}
    import pynvml

    out = {}
    readers = {
        "gpu_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "gpu_mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "gpu_throttle_reasons": lambda: throttle_names(int(getattr(
            pynvml, "nvmlDeviceGetCurrentClocksEventReasons",
            getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))(handle))),
        "gpu_other_processes": lambda: sum(p.pid != os.getpid()
                                           for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)),
    }
    for key, read in readers.items():
        try:
            out[key] = read()
        except (pynvml.NVMLError, TypeError, AttributeError):
            out[key] = None
    return out


class LoadProbe:
    """`fields` after the `with` block: the load figures, `contention` and `contention_reason`."""

    def __init__(self, nvml=None):
        self.nvml = nvml
        self.fields: dict = {}


@contextlib.contextmanager
def load_probe(nvml=None):
    """Reads the load around the block (the warm-ups and timed repeats of one scenario)."""
    probe = LoadProbe(nvml)
    before = snapshot()
    yield probe
    fields = load_fields(before, snapshot())
    fields.update(load_average_1m=load_average_1m(), cpu_freq_mhz=cpu_freq_mhz(), **gpu_state(nvml))
    reason = contention_reason(fields)
    probe.fields = {**fields, "contention": reason is not None, "contention_reason": reason}
