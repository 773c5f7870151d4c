"""The load instrument and the machine's speed: /proc/stat read by hand-made snapshots, contention in words, NVML's
clocks and throttle reasons from a fake pynvml, and a real busy loop competing for a core."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

import pytest
from tiny_models import llama_config

from kvbench.measuring.instruments import load as load_module
from kvbench.measuring.instruments.load import contention_reason, gpu_state, load_fields, parse_proc_stat

TICK = os.sysconf("SC_CLK_TCK")


def test_proc_stat_cpu_line_in_seconds():
    text = ("cpu  200 10 50 1000 5 0 3 7 0 0\n"
            "cpu0 100 5 25 500 2 0 1 3 0 0\n")
    stat = parse_proc_stat(text)
    assert stat["user"] == 200 / TICK and stat["steal"] == 7 / TICK and stat["idle"] == 1000 / TICK
    assert parse_proc_stat("intr 1 2 3") is None


def stat(user=0.0, system=0.0, idle=0.0, iowait=0.0, steal=0.0):
    return {"user": user, "nice": 0.0, "system": system, "idle": idle, "iowait": iowait, "irq": 0.0,
            "softirq": 0.0, "steal": steal}


def test_other_processes_are_the_machines_busy_time_less_our_own():
    # 2 s of wall time on 2 CPUs: 4 CPU-seconds; we used 1.5 of them, the machine was busy 3.5 -> others 2.0 s,
    # i.e. 1.0 core; steal 0.4 of 4 -> 10%
    before = {"wall": 10.0, "own": 5.0, "stat": stat()}
    after = {"wall": 12.0, "own": 6.5, "stat": stat(user=3.0, system=0.5, idle=0.1, steal=0.4)}
    fields = load_fields(before, after)
    assert fields["cpu_utilization"] == pytest.approx(0.75)
    assert fields["other_busy_cores"] == pytest.approx(1.0)
    assert fields["steal_fraction"] == pytest.approx(0.1)
    assert contention_reason(fields) == ("other processes kept 1.0 CPU core(s) busy; "
                                         "the hypervisor took 10% of the CPU time (steal)")


def test_a_quiet_machine_is_no_contention_and_a_short_window_decides_nothing():
    before = {"wall": 0.0, "own": 0.0, "stat": stat()}
    quiet = load_fields(before, {"wall": 1.0, "own": 1.9, "stat": stat(user=2.0, idle=0.05)})
    assert quiet["other_busy_cores"] == pytest.approx(0.1) and contention_reason(quiet) is None
    short = load_fields(before, {"wall": 0.1, "own": 0.0, "stat": stat(user=0.2)})
    assert short["other_busy_cores"] == pytest.approx(2.0) and contention_reason(short) is None
    no_proc = load_fields({"wall": 0.0, "own": 0.0, "stat": None}, {"wall": 1.0, "own": 1.0, "stat": None})
    assert no_proc["other_busy_cores"] is None and contention_reason(no_proc) is None


def fake_pynvml(mask=0x4 | 0x40, pids=(os.getpid(), 4242)):
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nvml.NVMLError, nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM = NVMLError, 1, 2
    nvml.nvmlDeviceGetClockInfo = lambda handle, kind: {1: 1980, 2: 2619}[kind]
    nvml.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: mask
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda handle: [types.SimpleNamespace(pid=p) for p in pids]
    return nvml


def test_gpu_clocks_throttle_reasons_and_other_processes_from_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    state = gpu_state("handle")
    assert state == {"gpu_sm_clock_mhz": 1980, "gpu_mem_clock_mhz": 2619,
                     "gpu_throttle_reasons": ["software power cap", "hardware thermal slowdown"],
                     "gpu_other_processes": 1}
    assert contention_reason(state) == ("1 other process(es) on the GPU; "
                                        "the GPU slowed its clocks: hardware thermal slowdown")
    assert gpu_state(None) == {}


def test_an_older_binding_names_them_throttle_reasons_and_a_failing_call_is_null(monkeypatch):
    nvml = fake_pynvml(mask=0x1)
    del nvml.nvmlDeviceGetCurrentClocksEventReasons
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = lambda handle: 0x1

    def fails(handle):
        raise nvml.NVMLError("Not Supported")

    nvml.nvmlDeviceGetComputeRunningProcesses = fails
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    state = gpu_state("handle")
    assert state["gpu_throttle_reasons"] == ["gpu idle"] and state["gpu_other_processes"] is None
    assert contention_reason(state) is None


@pytest.fixture(scope="module")
def tiny():
    from kvbench.measuring.loading.models import load_model

    return load_model(llama_config())


def test_a_busy_loop_competing_for_a_core_is_recorded_as_contention(tiny):
    import kvbench

    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 60\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        record = kvbench.measure(tiny, kvbench.Scenario(prompt_len=16, new_tokens=8), repeats=5, warmup=1)
    finally:
        busy.kill()
        busy.wait()
    assert record["load_window_s"] >= load_module.MIN_WINDOW_S
    assert record["contention"] is True and "other processes kept" in record["contention_reason"]
    assert record["other_busy_cores"] >= 0.5
    assert record["machine_reference_s"] > 0 and record["machine_reference_forward_s"] > 0
