"""NVML (nvidia-ml-py's `pynvml`): the device handle, memory in use, driver, total memory and peak bandwidth.

Every reader answers None (or {}) where NVML is unavailable: no driver, no library, a CPU device.
"""

from __future__ import annotations

import torch


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


def nvml_gpu_info(device: torch.device) -> dict:
    """Driver version, total memory and peak memory bandwidth (2 x max memory clock x bus width / 8)."""
    handle = nvml_handle(device)
    if handle is None:
        return {}
    import pynvml

    info = {}
    for key, read in {
        "driver": lambda: pynvml.nvmlSystemGetDriverVersion(),
        "gpu_memory_bytes": lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
        "gpu_bandwidth_gbps": lambda: 2 * pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        * 1e6 * pynvml.nvmlDeviceGetMemoryBusWidth(handle) / 8 / 1e9,
    }.items():
        try:
            value = read()
            info[key] = value.decode() if isinstance(value, bytes) else value
        except pynvml.NVMLError:
            pass
    return info


def nvml_status() -> str:
    """NVML as this process finds it: "NVML <version>, driver <version>, <n> GPU(s)", or why it is unavailable."""
    try:
        import pynvml
    except ImportError:
        return "unavailable: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        versions = [pynvml.nvmlSystemGetNVMLVersion(), pynvml.nvmlSystemGetDriverVersion()]
    except pynvml.NVMLError as exc:  # no driver or library (a machine without a GPU), driver/library mismatch, ...
        return f"unavailable: {exc}"
    nvml, driver = (v.decode() if isinstance(v, bytes) else v for v in versions)
    return f"NVML {nvml}, driver {driver}, {count} GPU(s)"
