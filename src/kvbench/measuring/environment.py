"""The environment a record was measured in: versions, device, driver, memory, bandwidth, commit."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import psutil
import torch

from ..estimate.gpus import match_device_name
from ..version import __version__
from .nvml import nvml_gpu_info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The commit of the kvbench checkout running (None when installed from a wheel)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=8)
def _environment(device_str: str) -> tuple:
    import transformers

    device = torch.device(device_str)
    env = {
        "env_kvbench": __version__,
        "env_torch": str(torch.__version__),
        "env_transformers": transformers.__version__,
        "env_python": platform.python_version(),
        "env_platform": platform.platform(),
        "env_cpu": _cpu_name(),
        "env_cpu_count": torch.get_num_threads(),
        "env_git_commit": _git_commit(),
        "env_device": device.type,
        "env_device_name": _cpu_name(),
        "env_cuda": None,
        "env_driver": None,
        "env_gpu_memory_bytes": None,
        "env_gpu_memory_nvml_bytes": None,
        "env_gpu_bandwidth_gbps": None,
        "env_gpu_bandwidth_source": None,
        "env_nvml": "no CUDA device",
        "env_ram_bytes": psutil.virtual_memory().total,  # the host's RAM (the CPU's device memory)
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        nvml = nvml_gpu_info(device)
        table = match_device_name(props.name) or {}
        bandwidth, source = nvml.get("gpu_bandwidth_gbps"), "NVML (2 x max memory clock x bus width)"
        if bandwidth is None and table.get("bandwidth_gbps"):
            bandwidth, source = table["bandwidth_gbps"], f"datasheet ({table['name']})"
        env.update(
            env_device_name=props.name,
            env_cuda=torch.version.cuda,
            env_driver=nvml.get("driver"),
            env_gpu_memory_bytes=int(props.total_memory),  # torch's figure (the device's global memory)
            env_gpu_memory_nvml_bytes=nvml.get("gpu_memory_bytes"),  # the driver's total, beside it
            env_gpu_bandwidth_gbps=round(bandwidth, 1) if bandwidth else None,
            env_gpu_bandwidth_source=source if bandwidth else None,
            env_nvml=nvml.get("nvml", "unavailable"),
        )
    return tuple(env.items())


def environment(device: torch.device | str = "cpu") -> dict:
    """Flat `env_*` fields, JSON-safe (read once per device and process)."""
    return dict(_environment(str(device)))
