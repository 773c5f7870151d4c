"""`kvbench env` and `kvbench --version`: the environment block of every record, shown; NVML says why it is absent."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import importlib.metadata
import json
import platform
import sys

import pytest
import torch

from kvbench.cli.app import main
from kvbench.measuring.instruments.environment import environment
from kvbench.measuring.instruments.nvml import nvml_status
from kvbench.version import __version__

NEW_KEYS = ("env_accelerate", "env_nvidia_ml_py", "env_torch_cuda", "env_nvml_status", "env_gpu_table_name",
            "env_gpu_table_memory_bytes", "env_gpu_table_bandwidth_gbps", "env_c_compiler", "env_c_compiler_version",
            "env_extras")


def env_json(capsys, *args) -> dict:
    assert main(["env", "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_is_the_records_environment_block_plus_the_devices(capsys):
    shown = env_json(capsys, "--device", "cpu")
    devices = shown.pop("devices")
    assert shown == environment("cpu")  # the very block every record on the CPU carries
    assert set(NEW_KEYS) <= set(shown) and all(k.startswith("env_") for k in shown)
    assert shown["env_torch"] == torch.__version__ and shown["env_python"] == platform.python_version()
    assert shown["env_torch_cuda"] == torch.version.cuda
    assert shown["env_accelerate"] == importlib.metadata.version("accelerate")
    assert shown["env_nvidia_ml_py"] == importlib.metadata.version("nvidia-ml-py")
    assert devices[0]["device"] == "cpu"
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert [d["device"] for d in devices[1:]] == [f"cuda:{i}" for i in range(cuda)]


def test_c_compiler_is_a_real_program_or_none(capsys):
    shown = env_json(capsys, "--device", "cpu")
    if shown["env_c_compiler"] is None:
        assert shown["env_c_compiler_version"] is None
    else:
        import subprocess

        out = subprocess.run([shown["env_c_compiler"], "--version"], capture_output=True, text=True).stdout
        assert out.splitlines()[0] == shown["env_c_compiler_version"]


def test_table_fits_one_screen_and_names_every_field(capsys):
    assert main(["env", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 50
    for key in environment("cpu"):
        assert key in text
    assert "devices torch sees" in text


def test_version_prints_kvbench_and_the_packages(capsys):
    assert main(["--version"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == f"kvbench {__version__}"
    assert second.startswith(f"Python {platform.python_version()}, torch {torch.__version__}, transformers ")
    assert f"nvidia-ml-py {importlib.metadata.version('nvidia-ml-py')}" in second


def test_bad_format_is_one_line_and_exit_2(capsys):
    assert main(["env", "--format", "xml"]) == 2
    err = capsys.readouterr().err
    assert err == "kvbench: error: --format: 'xml' is not one of table, json\n"


def test_without_nvml_library_the_status_says_why(monkeypatch):
    import pynvml

    def no_library():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    assert nvml_status() == "unavailable: NVML Shared Library Not Found"


def test_without_nvidia_ml_py_the_status_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert nvml_status() == "unavailable: nvidia-ml-py is not installed (pip install nvidia-ml-py)"


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has an NVML library")
def test_on_a_machine_without_a_gpu_driver_nvml_is_unavailable(capsys):
    assert env_json(capsys, "--device", "cpu")["env_nvml_status"] == "unavailable: NVML Shared Library Not Found"


def test_extras_are_those_whose_packages_are_all_installed(monkeypatch):
    from kvbench.measuring.instruments import environment as env_module

    requirements = ["torch>=2.11", 'pytest>=8; extra == "a"', "rich>=13 ; extra == 'a'",
                    'no-such-dist-xyz>=1; python_version >= "3.8" and extra == "b"', 'pytest; extra == "b"']
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: requirements)
    assert env_module._extras() == "a"

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    assert env_module._extras() is None  # a source tree never installed: unknown, not "none"


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("taskset") is None
                    or shutil.which("nproc") is None, reason="needs Linux's taskset and nproc")
def test_cpu_count_is_the_machines_and_torch_threads_a_field_of_their_own():
    """env_cpu_count is the CPUs the process may use (what `nproc` says, the affinity mask under taskset), not
    torch's thread count: OMP_NUM_THREADS=1 on a many-core machine once recorded a 1-CPU machine."""
    code = ("import json, torch; from kvbench.measuring.instruments.environment import environment; e = environment('cpu'); "
            "print(json.dumps([e['env_cpu_count'], e['env_torch_threads']]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, env={"PATH": os.environ["PATH"]},
                               check=True).stdout)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out) == [nproc, 1]
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env, "OMP_NUM_THREADS": "1"}, check=True).stdout
    assert json.loads(pinned)[0] == 1
