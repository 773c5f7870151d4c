"""The GPU acceptance run's environment facts (tools/gpu_selfcheck.py --versions and --env print them): versions,
tools and nvidia-smi's reports; kvbench's env block, torch's view of the device, NVML's memory (v2 where it
exists), clocks and bus width, and a device-to-device copy bandwidth measured with torch."""

from __future__ import annotations

import statistics
import sys
from time import perf_counter

MIB = 2**20


def versions() -> str:
    """What the machine has, each read on its own: Python and package versions, nvidia-smi, git and the compilers
    (never fails: a missing tool is a line saying so)."""
    import importlib.metadata
    import platform
    import shutil
    import subprocess

    lines = [f"python {platform.python_version()} ({sys.executable})"]
    for package in ("torch", "transformers", "accelerate", "triton", "nvidia-ml-py", "pandas", "seaborn",
                    "pytest-benchmark", "typer", "rich", "kvbench"):
        try:
            lines.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{package}: not installed" + (" (run from the source tree)" if package == "kvbench" else ""))
    try:
        import torch

        lines.append(f"torch.version.cuda {torch.version.cuda}; torch.cuda.is_available() {torch.cuda.is_available()}")
    except Exception as exc:  # a broken torch is what this step is for
        lines.append(f"import torch failed: {type(exc).__name__}: {exc}")
    for tool in ("git", "gcc", "cc", "c++", "nvcc", "nvidia-smi"):
        lines.append(f"which {tool}: {shutil.which(tool) or 'not found'}")
    if shutil.which("nvidia-smi"):
        for command in (["nvidia-smi"], ["nvidia-smi", "-q", "-d", "MEMORY,CLOCK,POWER,PERFORMANCE,COMPUTE"]):
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=20)
                lines.append(f"--- {' '.join(command)} (exit {done.returncode})\n{done.stdout}{done.stderr}")
            except subprocess.TimeoutExpired:
                lines.append(f"--- {' '.join(command)}: no answer in 20 s")
    else:
        lines.append("nvidia-smi: not on this machine")
    return "\n".join(lines)


def copy_bandwidth(device, nbytes: int, repeats: int = 20) -> dict:
    """A copy of `nbytes` random bytes into another buffer, timed (CUDA events on a GPU): bytes read + written / s."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()  # never time on zeros
    dst = torch.empty_like(src)
    cuda = device.type == "cuda"
    times = []
    for i in range(repeats + 3):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = perf_counter()
            dst.copy_(src)
            seconds = perf_counter() - t0
        if i >= 3:  # three warm-ups
            times.append(seconds)
    assert torch.equal(dst[:4096], src[:4096]) and torch.equal(dst[-4096:], src[-4096:])
    median = statistics.median(times)
    return {"copy_bytes": nbytes, "copy_repeats": repeats, "copy_median_s": median,
            "copy_bandwidth_gbps": 2 * nbytes / median / 1e9, "copy_timer": "CUDA events" if cuda else "perf_counter"}


def _fields(info, names) -> dict:
    return {name: int(getattr(info, name)) for name in names}


def nvml_facts(device) -> dict:
    """NVML's own figures for the device (matched by UUID, GPU- or MIG-), each read on its own."""
    import torch

    uuid = str(torch.cuda.get_device_properties(device).uuid)
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver
        return {"nvml": f"unavailable: {type(exc).__name__}: {exc}"}
    handle = None
    for candidate in ([uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]):
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(candidate)
            break
        except pynvml.NVMLError:
            continue
    if handle is None:
        return {"nvml": f"no NVML device with UUID {uuid}"}
    reads = {
        "nvml_driver": lambda: pynvml.nvmlSystemGetDriverVersion(),
        "nvml_name": lambda: pynvml.nvmlDeviceGetName(handle),
        "nvml_memory_v1": lambda: _fields(pynvml.nvmlDeviceGetMemoryInfo(handle), ("total", "used", "free")),
        "nvml_memory_v2": lambda: _fields(pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2),
                                          ("total", "reserved", "used", "free")),
        "nvml_max_memory_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "nvml_memory_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "nvml_max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "nvml_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "nvml_bus_width_bits": lambda: pynvml.nvmlDeviceGetMemoryBusWidth(handle),
        "nvml_power_limit_w": lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1e3,
    }
    out = {}
    for key, read in reads.items():
        try:
            value = read()
            out[key] = value.decode() if isinstance(value, bytes) else value
        except Exception as exc:  # NVMLError, or an nvidia-ml-py without the v2 call
            out[key] = f"unavailable: {type(exc).__name__}"
    clock, width = out.get("nvml_max_memory_clock_mhz"), out.get("nvml_bus_width_bits")
    if isinstance(clock, int) and isinstance(width, int):
        out["nvml_bandwidth_gbps"] = 2 * clock * 1e6 * width / 8 / 1e9
    return out


def environment_facts(device_name: str) -> dict:
    import platform

    import torch

    from kvbench.measuring.instruments.environment import environment
    from kvbench.measuring.loading.models import resolve_device

    device = resolve_device(device_name)
    facts = {"python": platform.python_version(), "torch": str(torch.__version__), **environment(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        try:
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            bf16 = f"{torch.cuda.is_bf16_supported()} (emulation counted: no including_emulation argument)"
        free, total = torch.cuda.mem_get_info(device)
        facts.update(torch_device_name=props.name, torch_total_memory_bytes=props.total_memory,
                     torch_free_bytes=free, torch_mem_get_info_total_bytes=total,
                     compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                     bf16_native=bf16, cuda=torch.version.cuda, device_count=torch.cuda.device_count(),
                     **nvml_facts(device))
    facts.update(copy_bandwidth(device, 2 * 2**30 if device.type == "cuda" else 64 * MIB))
    return facts
