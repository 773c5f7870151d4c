"""The environment a record was measured in: versions, device, driver, memory, bandwidth, commit, NVML, compiler.

`environment(device)` is the block of `env_*` fields every record carries; `kvbench env` prints the same block
(and `devices()`, what torch sees). `versions()` reads package versions without importing them (`--version`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import psutil
import torch

from ... import compat
from ...estimate.gpus import match_device_name
from ...version import __version__
from .nvml import nvml_gpu_info, nvml_status

# env_* key -> (distribution, module): the packages whose versions every record keeps.
PACKAGES = {
    "env_torch": ("torch", "torch"),
    "env_transformers": ("transformers", "transformers"),
    "env_accelerate": ("accelerate", "accelerate"),
    "env_nvidia_ml_py": ("nvidia-ml-py", "pynvml"),
}


def package_version(distribution: str, module: str) -> str | None:
    """The installed distribution's version, else the imported module's `__version__` (a package run from a
    source tree); None when neither is there. Nothing is imported."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(sys.modules.get(module), "__version__", None)
        return None if version is None else str(version)


def versions() -> dict:
    """kvbench, Python and the PACKAGES' versions (env_* keys), nothing imported."""
    return {"env_kvbench": __version__, "env_python": platform.python_version(),
            **{key: package_version(*names) for key, names in PACKAGES.items()}}


def _c_compiler() -> tuple[str | None, str | None]:
    """(path, first line of --version) of the C compiler torch.compile's Triton backend builds with: $CC, else
    gcc, else clang (Triton's own rule); (None, None) when there is none."""
    path = shutil.which(os.environ.get("CC") or "gcc") or shutil.which("clang")
    if path is None:
        return None, None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return path, None
    return path, (out.strip().splitlines() or [None])[0]


def _extras() -> str | None:
    """The optional extras of kvbench whose packages are all installed, comma-separated ("" for none); None when
    kvbench's metadata is not there (run from a source tree that was never installed)."""
    try:
        requirements = importlib.metadata.requires("kvbench") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted: dict[str, list[str]] = {}
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*).*;.*extra\s*==\s*[\"']([^\"']+)[\"']", requirement)
        if match:
            wanted.setdefault(match[2], []).append(match[1])
    installed = [extra for extra, names in wanted.items() if all(package_version(n, n) for n in names)]
    return ",".join(sorted(installed))


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


def cpu_count() -> int | None:
    """The CPUs this process may run on: its affinity mask where the OS keeps one (taskset, cgroups' cpusets),
    else the machine's count. Not torch's thread count (`env_torch_threads`), which OMP_NUM_THREADS can lower."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows: no affinity mask
        return os.cpu_count()


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
        "env_cpu_count": cpu_count(),
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
    c_compiler, c_compiler_version = _c_compiler()
    env.update({  # the rest of what `kvbench env` shows
        "env_accelerate": package_version(*PACKAGES["env_accelerate"]),
        "env_nvidia_ml_py": package_version(*PACKAGES["env_nvidia_ml_py"]),
        "env_torch_cuda": torch.version.cuda,  # the CUDA torch was built for; None: a CPU build
        "env_nvml_status": nvml_status(),
        "env_gpu_table_name": None,
        "env_gpu_table_memory_bytes": None,
        "env_gpu_table_bandwidth_gbps": None,
        "env_c_compiler": c_compiler,
        "env_c_compiler_version": c_compiler_version,
        "env_extras": _extras(),
        "env_transformers_newest_tested": compat.TESTED_RELEASES[-1],
    })
    if compat.beyond_tested():
        warnings.warn(compat.beyond_tested(), stacklevel=2)
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
            env_gpu_table_name=table.get("name"),
            env_gpu_table_memory_bytes=table.get("memory_bytes"),
            env_gpu_table_bandwidth_gbps=table.get("bandwidth_gbps"),
        )
    return tuple(env.items())


def environment(device: torch.device | str = "cpu") -> dict:
    """Flat `env_*` fields, JSON-safe (read once per device and process; torch's thread count at each call)."""
    return dict(_environment(str(device))) | {"env_torch_threads": torch.get_num_threads()}


def devices() -> list[dict]:
    """The devices torch sees: the CPU, then every CUDA GPU with its memory, compute capability and the bundled
    table's entry for it (None where the table has none)."""
    found = [{"device": "cpu", "name": _cpu_name(), "memory_bytes": None, "capability": None, "table_name": None}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        found.append({"device": f"cuda:{index}", "name": props.name, "memory_bytes": props.total_memory,
                      "capability": f"{props.major}.{props.minor}",
                      "table_name": (match_device_name(props.name) or {}).get("name")})
    return found
