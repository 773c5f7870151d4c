"""NVML (nvidia-ml-py's `pynvml`): the device handle, memory in use, driver, total memory and peak bandwidth.

Where NVML is unavailable (a CPU device, no library, no driver, no matching device) every reader answers None (or
{}), and `nvml_lookup` says why, so a record can carry the reason (`env_nvml`) instead of a bare null.
"""

from __future__ import annotations

import torch

NVML_OK = "ok"
# What the memory readings count: the v2 call reports driver-reserved memory apart from `used`; v1 counts it as used.
MEMORY_SOURCES = {2: "NVML nvmlDeviceGetMemoryInfo v2 (driver-reserved memory not counted as used)",
                  1: "NVML nvmlDeviceGetMemoryInfo v1 (driver-reserved memory counted as used)"}


def _text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # pynvml's __str__ asks the library for the text, which may itself be missing
        text = ""
    return text or type(exc).__name__


def _uuids(uuid: str) -> list[str]:
    """NVML's spellings of torch's device UUID: a whole GPU is `GPU-...`, a MIG instance `MIG-...`."""
    if uuid.startswith(("GPU-", "MIG-")):
        return [uuid]
    return [f"GPU-{uuid}", f"MIG-{uuid}"]


def nvml_lookup(device: torch.device) -> tuple[object | None, str]:
    """(handle, "ok") for a CUDA device, matched by UUID (NVML ignores CUDA_VISIBLE_DEVICES); else (None, why)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, "no CUDA device"
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py not installed (no pynvml module)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if isinstance(exc, getattr(pynvml, "NVMLError_LibraryNotFound", ())):
            return None, f"library not found ({_text(exc)})"
        return None, f"nvmlInit failed: {_text(exc)}"
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except Exception as exc:  # a torch or device without a UUID: nothing to match NVML's devices against
        return None, f"no device UUID from torch: {_text(exc)}"
    errors = []
    for name in _uuids(uuid):
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(name), NVML_OK
        except pynvml.NVMLError as exc:
            errors.append(f"{name}: {_text(exc)}")
    return None, "no NVML device with torch's UUID (" + "; ".join(errors) + ")"


def nvml_handle(device: torch.device):
    """The NVML handle of a CUDA device, or None (see `nvml_lookup` for the reason)."""
    return nvml_lookup(device)[0]


def nvml_memory(handle) -> tuple[object | None, int | None]:
    """(memory info, API version): the v2 call where the binding and driver have it, else v1; (None, None)."""
    if handle is None:
        return None, None
    import pynvml

    version = getattr(pynvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(handle, version=version), 2
        except (pynvml.NVMLError, TypeError):  # an old driver (function not found) or a binding without `version`
            pass
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(handle), 1
    except pynvml.NVMLError:
        return None, None


def nvml_gpu_info(device: torch.device) -> dict:
    """Driver version, total memory, peak memory bandwidth (2 x max memory clock x bus width / 8) and, under
    "nvml", "ok" or why NVML is unavailable; a figure NVML cannot give is absent."""
    handle, status = nvml_lookup(device)
    info: dict = {"nvml": status}
    if handle is None:
        return info
    import pynvml

    memory, version = nvml_memory(handle)
    if memory is not None:
        info.update(gpu_memory_bytes=int(memory.total), memory_source=MEMORY_SOURCES[version])
    for key, read in {
        "driver": lambda: pynvml.nvmlSystemGetDriverVersion(),
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
