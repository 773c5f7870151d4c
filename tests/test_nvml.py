"""NVML readers and the environment block on a CUDA device, against a fake `pynvml` and fake torch.cuda functions.

The fake follows nvidia-ml-py's API: `nvmlDeviceGetMemoryInfo(handle, version=None)` (v1 without a version, v2 with
`version=nvmlMemory_v2`; v2 reports driver-reserved memory apart, v1 counts it as used), NVMLError subclasses such
as NVMLError_LibraryNotFound, handles looked up by UUID strings ("GPU-..." or "MIG-...").
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from kvbench.measuring.instruments import environment as environment_module
from kvbench.measuring.instruments.nvml import (
    MEMORY_SOURCES,
    nvml_gpu_info,
    nvml_handle,
    nvml_lookup,
    nvml_memory,
)

UUID = "6f1e2d3c-0000-1111-2222-333344445555"  # as torch prints it: no GPU-/MIG- prefix
GiB = 2**30


def fake_pynvml(uuids=(f"GPU-{UUID}",), init_error=None, v2="yes", total=150 * GiB, used_bytes=40 * GiB,
                reserved=GiB):
    """A pynvml with one device. v2: "yes", "driver lacks it" (FunctionNotFound), "binding lacks it" (no
    `version` argument, no nvmlMemory_v2). `used_bytes`: a number, or a function read at each call."""
    nvml = types.ModuleType("pynvml")
    nvml.calls = []
    nvml.nvmlDeviceGetCount = lambda: len(uuids)
    nvml.nvmlSystemGetNVMLVersion = lambda: "12.580"

    class NVMLError(Exception):
        pass

    for name in ("LibraryNotFound", "NotFound", "FunctionNotFound", "DriverNotLoaded"):
        setattr(nvml, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))
    nvml.NVMLError, nvml.NVML_CLOCK_MEM = NVMLError, 2

    def init():
        nvml.calls.append("nvmlInit")
        if init_error:
            raise getattr(nvml, f"NVMLError_{init_error[0]}")(init_error[1])

    def handle_by_uuid(uuid):
        nvml.calls.append(("nvmlDeviceGetHandleByUUID", uuid))
        if uuid not in uuids:
            raise nvml.NVMLError_NotFound("Not Found")
        return ("handle", uuid)

    def memory_v2(handle, version=None):
        nvml.calls.append(("nvmlDeviceGetMemoryInfo", version))
        used = used_bytes() if callable(used_bytes) else used_bytes
        if not version:
            return SimpleNamespace(total=total, free=total - used - reserved, used=used + reserved)
        if version != nvml.nvmlMemory_v2:
            raise NVMLError("Argument version mismatch")
        if v2 == "driver lacks it":
            raise nvml.NVMLError_FunctionNotFound("Function Not Found")
        return SimpleNamespace(version=version, total=total, reserved=reserved, free=total - used - reserved,
                               used=used)

    def memory_v1(handle):
        return memory_v2(handle)

    nvml.nvmlInit, nvml.nvmlDeviceGetHandleByUUID = init, handle_by_uuid
    if v2 == "binding lacks it":
        nvml.nvmlDeviceGetMemoryInfo = memory_v1
    else:
        nvml.nvmlDeviceGetMemoryInfo, nvml.nvmlMemory_v2 = memory_v2, 0x02000028
    nvml.nvmlSystemGetDriverVersion = lambda: b"580.95.05"
    nvml.nvmlDeviceGetMaxClockInfo = lambda handle, clock: 3201 if clock == nvml.NVML_CLOCK_MEM else 1980
    nvml.nvmlDeviceGetMemoryBusWidth = lambda handle: 6144  # the H200's HBM3e: 6 stacks x 1024 bits
    return nvml


class Props:
    name, total_memory, major, minor, uuid = "NVIDIA H200", 150_106_439_680, 9, 0, UUID


@pytest.fixture
def cuda(monkeypatch):
    """torch.cuda answers as on a machine with one GPU; `install(fake)` puts a fake pynvml in sys.modules."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    environment_module._environment.cache_clear()
    yield lambda fake: monkeypatch.setitem(sys.modules, "pynvml", fake)
    environment_module._environment.cache_clear()


DEVICE = torch.device("cuda", 0)


def test_v2_memory_call_reports_driver_reserved_memory_apart(cuda):
    fake = fake_pynvml()
    cuda(fake)
    handle = nvml_handle(DEVICE)
    info, version = nvml_memory(handle)
    assert version == 2 and info.used == 40 * GiB and info.reserved == GiB
    assert ("nvmlDeviceGetMemoryInfo", 0x02000028) in fake.calls


@pytest.mark.parametrize("v2", ["driver lacks it", "binding lacks it"])
def test_v1_memory_call_where_v2_is_missing(cuda, v2):
    cuda(fake_pynvml(v2=v2))
    info, version = nvml_memory(nvml_handle(DEVICE))
    assert version == 1 and info.used == 41 * GiB  # v1 counts the driver's reserved GiB as used


@pytest.mark.parametrize("registered", [f"GPU-{UUID}", f"MIG-{UUID}"])
def test_handle_lookup_tries_gpu_and_mig_uuids(cuda, registered):
    fake = fake_pynvml(uuids=(registered,))
    cuda(fake)
    handle, status = nvml_lookup(DEVICE)
    assert handle == ("handle", registered) and status == "ok"


def test_a_uuid_nvml_does_not_know_says_what_was_tried(cuda):
    cuda(fake_pynvml(uuids=("GPU-someone-else",)))
    handle, status = nvml_lookup(DEVICE)
    assert handle is None
    assert f"GPU-{UUID}: Not Found" in status and f"MIG-{UUID}: Not Found" in status


@pytest.mark.parametrize("error, reason", [
    (("LibraryNotFound", "NVML Shared Library Not Found"), "library not found (NVML Shared Library Not Found)"),
    (("DriverNotLoaded", "Driver Not Loaded"), "nvmlInit failed: Driver Not Loaded"),
])
def test_why_nvml_is_unavailable(cuda, error, reason):
    cuda(fake_pynvml(init_error=error))
    assert nvml_lookup(DEVICE) == (None, reason)
    assert nvml_gpu_info(DEVICE) == {"nvml": reason}


def test_no_library_and_no_cuda_device(cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert nvml_lookup(DEVICE) == (None, "nvidia-ml-py not installed (no pynvml module)")
    assert nvml_lookup(torch.device("cpu")) == (None, "no CUDA device")


def test_gpu_info_driver_total_and_bandwidth(cuda):
    cuda(fake_pynvml())
    info = nvml_gpu_info(DEVICE)
    bandwidth = info.pop("gpu_bandwidth_gbps")
    assert info == {"nvml": "ok", "gpu_memory_bytes": 150 * GiB, "memory_source": MEMORY_SOURCES[2],
                    "driver": "580.95.05"}
    # NVIDIA's datasheet: 4.8 TB/s for the H200 SXM; NVML's clock x bus width lands within 3 % of it
    assert bandwidth == pytest.approx(4800, rel=0.03) and round(bandwidth, 1) == 4916.7


def test_environment_names_torch_total_and_nvml_total(cuda):
    cuda(fake_pynvml())
    env = environment_module.environment("cuda:0")
    assert env["env_gpu_memory_bytes"] == Props.total_memory  # torch's figure
    assert env["env_gpu_memory_nvml_bytes"] == 150 * GiB  # the driver's, beside it
    assert env["env_nvml"] == "ok" and env["env_driver"] == "580.95.05"
    assert env["env_gpu_bandwidth_gbps"] == 4916.7  # 2 x 3201 MHz x 6144 bits / 8 = 4,916,736 MB/s
    assert env["env_gpu_bandwidth_source"].startswith("NVML")


def test_environment_without_nvml_records_why(cuda):
    cuda(fake_pynvml(init_error=("LibraryNotFound", "NVML Shared Library Not Found")))
    env = environment_module.environment("cuda:0")
    assert env["env_nvml"] == "library not found (NVML Shared Library Not Found)"
    assert env["env_gpu_memory_bytes"] == Props.total_memory and env["env_gpu_memory_nvml_bytes"] is None
    assert env["env_gpu_bandwidth_gbps"] == 4800 and env["env_gpu_bandwidth_source"] == "datasheet (NVIDIA H200)"
    assert environment_module.environment("cpu")["env_nvml"] == "no CUDA device"
