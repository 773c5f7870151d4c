"""memory_probe's figures (CUDA branch on fake torch.cuda functions and a fake pynvml; the CPU branch for real), how
summarize carries them over repeats, and the garbage collector's place in a measurement: one collection per
scenario, none inside a timed generate, the figures still measured per repeat."""

from __future__ import annotations

import gc
import sys

import pytest
import torch
from test_nvml import Props, fake_pynvml

import kvbench
from kvbench.measuring.instruments import environment as environment_module
from kvbench.measuring.instruments.clock import Clock
from kvbench.measuring.engines.engine import GenerateEngine
from kvbench.measuring.measure import run_once, summarize
from kvbench.measuring.instruments.memory import collector_paused, memory_probe
from kvbench.measuring.instruments.nvml import MEMORY_SOURCES, nvml_handle
from kvbench.measuring.harness.runner import run_sweep

MiB = 2**20
CONTEXT = 500 * MiB  # what NVML counts beyond torch's reservation: the CUDA context


class FakeAllocator:
    """torch.cuda's allocator statistics for one device: blocks stay reserved (cached) once allocated."""

    def __init__(self, allocated: int, reserved: int):
        self.allocated, self.reserved = allocated, reserved
        self.peak_allocated, self.peak_reserved = allocated, reserved
        self.devices = []  # the device argument of every call

    def alloc(self, n: int):
        self.allocated += n
        self.reserved = max(self.reserved, self.allocated)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, n: int):
        self.allocated -= n

    def install(self, monkeypatch):
        def called(name, value):
            def fn(device=None):
                self.devices.append((name, device))
                return value() if value else None

            monkeypatch.setattr(torch.cuda, name, fn)

        def reset():
            self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

        for name, value in {
            "memory_allocated": lambda: self.allocated, "memory_reserved": lambda: self.reserved,
            "max_memory_allocated": lambda: self.peak_allocated, "max_memory_reserved": lambda: self.peak_reserved,
            "reset_peak_memory_stats": reset, "synchronize": None,
        }.items():
            called(name, value)


@pytest.fixture
def gpu(monkeypatch):
    """One fake GPU as cuda:1: allocator statistics and NVML, NVML's used memory following the reservation."""
    allocator = FakeAllocator(allocated=1000 * MiB, reserved=1024 * MiB)
    allocator.install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    monkeypatch.setitem(sys.modules, "pynvml",
                        fake_pynvml(used_bytes=lambda: CONTEXT + allocator.reserved))
    environment_module._environment.cache_clear()
    yield allocator
    environment_module._environment.cache_clear()


def test_cuda_probe_after_a_warm_up_reads_absolute_peaks(gpu):
    device = torch.device("cuda", 1)
    handle = nvml_handle(device)
    with memory_probe(device, handle) as warm:  # the warm-up grows the reservation by 800 MiB, then frees
        gpu.alloc(800 * MiB)
        gpu.free(800 * MiB)
    with memory_probe(device, handle) as timed:  # a smaller call fits in the cached blocks
        gpu.alloc(500 * MiB)
        gpu.free(500 * MiB)
    assert warm["peak_reserved_delta_bytes"] == 800 * MiB - 24 * MiB
    assert timed["peak_reserved_delta_bytes"] == 0  # why the absolute figures are recorded
    assert timed["peak_reserved_bytes"] == timed["reserved_before_bytes"] == 1800 * MiB
    # peaks restart at each block: the warm-up's 800 MiB do not leak into the timed call's figures
    assert timed["peak_allocated_delta_bytes"] == timed["peak_memory_delta_bytes"] == 500 * MiB
    assert timed["peak_allocated_bytes"] == 1500 * MiB and timed["allocated_before_bytes"] == 1000 * MiB
    assert timed["peak_memory_source"] == "torch.cuda.max_memory_allocated"
    assert timed["nvml_used_before_bytes"] == timed["nvml_used_after_bytes"] == CONTEXT + 1800 * MiB
    assert timed["nvml_used_source"] == MEMORY_SOURCES[2]
    assert "nvml_used_peak_bytes" not in timed  # renamed: it is read after the call, not at a peak
    assert gpu.devices and all(device_arg == device for _, device_arg in gpu.devices)


def test_cuda_probe_without_nvml(gpu):
    with memory_probe(torch.device("cuda", 0), None) as out:
        gpu.alloc(MiB)
    assert out["nvml_used_before_bytes"] is None and out["nvml_used_after_bytes"] is None
    assert out["nvml_used_source"] == "unavailable" and out["peak_allocated_delta_bytes"] == MiB


def test_summarize_keeps_peaks_as_maxima_and_levels_from_the_last_repeat():
    def run(total, peak_reserved, reserved_before, nvml_after):
        return {"total_s": total, "ttft_s": total / 4, "decode_steps_s": [total / 8], "positions": [4, 1],
                "generated_tokens": 2, "kv_cache_bytes": 1024, "peak_memory_delta_bytes": 10,
                "peak_reserved_bytes": peak_reserved, "reserved_before_bytes": reserved_before,
                "nvml_used_after_bytes": nvml_after, "nvml_used_source": MEMORY_SOURCES[1],
                "peak_memory_source": "torch.cuda.max_memory_allocated"}

    out = summarize([run(1.0, 300, 100, 900), run(2.0, 200, 250, 800)])
    assert out["peak_reserved_bytes"] == 300 and out["reserved_before_bytes"] == 250
    assert out["nvml_used_after_bytes"] == 800  # the last repeat's reading, beside its level before
    assert out["nvml_used_source"] == MEMORY_SOURCES[1]
    assert out["peak_memory_source"] == "torch.cuda.max_memory_allocated"


def test_collector_is_paused_inside_and_restored_after():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


def spy_generate(loaded, monkeypatch, seen, allocate_bytes=0):
    """Wrap the model's generate: note whether the collector is on, optionally touch `allocate_bytes` first."""
    real = loaded.model.generate

    def generate(*args, **kwargs):
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        if allocate_bytes:
            block = torch.ones(allocate_bytes // 4)  # written, so resident
            del block
        return real(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "generate", generate)


def test_one_collection_per_scenario_and_none_inside_generate(tiny_loaded, monkeypatch):
    seen, collections = [], []
    spy_generate(tiny_loaded, monkeypatch, seen)
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or real_collect(*a))
    record = kvbench.measure(tiny_loaded, kvbench.Scenario(8, 4), repeats=3, warmup=1)
    # warm-up, repeats and the untimed allocation pass after them: collector off
    assert len(seen) == 5 and not any(enabled for enabled, _ in seen)
    assert len(collections) == 1  # before the warm-up, untimed
    assert gc.isenabled()
    # the figures mean what they say: allocated bytes from the allocation events, the CPU's peak-RSS delta apart
    assert record["peak_memory_source"] == "torch.profiler allocation events"
    assert record["peak_rss_source"] == "process peak RSS (VmHWM)"
    assert record["peak_memory_delta_bytes"] == record["peak_allocated_delta_bytes"] > record["kv_cache_bytes"]
    assert isinstance(record["peak_rss_delta_bytes"], int) and record["peak_rss_delta_bytes"] >= 0
    assert record["kv_cache_bytes"] == record["kv_cache_bytes_estimate"] > 0


def test_cpu_peak_is_still_measured_at_every_repeat(tiny_loaded, monkeypatch):
    """No collection between repeats any more: each repeat's probe still resets and sees its own peak."""
    seen, block = [], 64 * MiB
    spy_generate(tiny_loaded, monkeypatch, seen, allocate_bytes=block)
    scenario = kvbench.Scenario(8, 4)
    engine = GenerateEngine()
    prepared = engine.prepare(tiny_loaded, scenario)
    clock = Clock(tiny_loaded.device)
    with torch.inference_mode():
        runs = [run_once(tiny_loaded, engine, prepared, clock) for _ in range(3)]
    if runs[0]["peak_rss_source"] == "unavailable":
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    for run in runs:
        assert 0.9 * block <= run["peak_rss_delta_bytes"] < 4 * block
        assert "peak_memory_delta_bytes" not in run  # the timed repeats' CPU figure is RSS, named as such
        assert run["kv_cache_bytes"] == kvbench.measuring.measure.kv_estimate(tiny_loaded.config, scenario,
                                                                             torch.float32)


def test_sweep_freezes_what_is_alive_before_it_and_unfreezes_after(tiny_loaded, monkeypatch, tmp_path):
    frozen_before = gc.get_freeze_count()
    gc.unfreeze()  # another test's session fixture may have frozen the heap: start from none
    try:
        seen = []
        spy_generate(tiny_loaded, monkeypatch, seen)
        records = run_sweep(tiny_loaded, [kvbench.Scenario(4, 2), kvbench.Scenario(6, 2)], tmp_path / "run",
                            repeats=1, warmup=0)
        assert [r["status"] for r in records] == ["ok", "ok"]
        assert len(seen) == 4 and all(frozen > 100_000 for _, frozen in seen)  # each: a repeat, the allocation pass; frozen: torch, transformers, the model
        assert gc.get_freeze_count() == 0
    finally:
        if frozen_before:
            gc.freeze()


def test_cuda_probe_counts_the_cuda_graph_pool(gpu, monkeypatch):
    """Compiled decode replays CUDA graphs: their intermediates live in a private pool's memory, reserved but not
    allocated, which max_memory_allocated never sees. The pool's unallocated bytes join the allocated peak (and
    peak_memory_delta_bytes, its older name), the source saying so."""
    segments = [  # the allocator's snapshot: one default-pool segment, two of a graph pool, one on another device
        dict(device=1, segment_pool_id=(0, 0), total_size=1024 * MiB, allocated_size=1000 * MiB),
        dict(device=1, segment_pool_id=(1, 7), total_size=200 * MiB, allocated_size=20 * MiB),
        dict(device=1, segment_pool_id=(1, 7), total_size=100 * MiB, allocated_size=0),
        dict(device=0, segment_pool_id=(1, 3), total_size=999 * MiB, allocated_size=0),
    ]
    monkeypatch.setattr(torch.cuda.memory, "memory_snapshot", lambda include_traces=True: segments)
    with memory_probe(torch.device("cuda", 1), None) as out:
        gpu.alloc(50 * MiB)
        gpu.free(50 * MiB)
    assert out["cuda_graph_pool_reserved_bytes"] == 300 * MiB and out["cuda_graph_pool_allocated_bytes"] == 20 * MiB
    assert out["peak_allocated_delta_bytes"] == out["peak_memory_delta_bytes"] == 50 * MiB + 280 * MiB
    assert out["peak_allocated_source"] == out["peak_memory_source"]
    assert out["peak_memory_source"].startswith("torch.cuda.max_memory_allocated + CUDA graph pool")


def test_cuda_probe_without_a_graph_pool_is_the_allocators_peak(gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda.memory, "memory_snapshot", lambda include_traces=True: [
        dict(device=1, segment_pool_id=(0, 0), total_size=1024 * MiB, allocated_size=1000 * MiB)])
    with memory_probe(torch.device("cuda", 1), None) as out:
        gpu.alloc(50 * MiB)
    assert out["peak_memory_delta_bytes"] == 50 * MiB and "cuda_graph_pool_reserved_bytes" not in out
    assert out["peak_memory_source"] == "torch.cuda.max_memory_allocated"
