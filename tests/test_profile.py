"""--profile-steps: device-busy time per decode step from one extra profiled generate (on the CPU: time in
operators)."""

import json
import statistics
from types import SimpleNamespace

import pytest

import kvbench
from kvbench.estimate.roofline import roofline
from kvbench.measuring.instruments.profile import NOT_PROFILED, step_figures


def test_profiled_record_on_the_cpu(tiny_loaded):
    P, N = 8, 5
    rec = kvbench.measure(tiny_loaded, kvbench.Scenario(P, N, batch_size=2), repeats=2, warmup=0, profile_steps=True)
    assert rec["profile_device"] == "cpu" and rec["profile_forward_calls"] == N  # one range per forward
    steps = rec["decode_steps_device_s"]
    assert len(steps) == N - 1 and all(s > 0 for s in steps)
    assert rec["decode_step_device_s"] == statistics.median(steps)
    assert 0 < rec["decode_step_device_s"] <= rec["decode_step_profiled_s"]  # operators run inside the step
    assert rec["decode_device_busy_fraction"] > 0
    # a decode step reads every weight but the input embedding (a row per sequence): the bytes behind each
    # bandwidth are at least the parameters torch holds without that table
    model = tiny_loaded.model
    table = model.get_input_embeddings().weight
    gathered = 0 if table is model.get_output_embeddings().weight else table.numel() * table.element_size()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) - gathered
    assert rec["achieved_bandwidth_device_gbps"] * 1e9 * rec["decode_step_device_s"] >= weights
    assert rec["achieved_bandwidth_gbps"] * 1e9 * rec["decode_step_s"] >= weights
    # the profiled generate is not one of the timed repeats
    assert rec["repeats"] == 2 and len(rec["total_s_repeats"]) == 2 and rec["forward_calls"] == N
    json.dumps(rec, allow_nan=False)


def test_unprofiled_record_has_the_fields_empty(tiny_loaded):
    rec = kvbench.measure(tiny_loaded, kvbench.Scenario(6, 3), repeats=1, warmup=0)
    assert {k: rec[k] for k in NOT_PROFILED} == NOT_PROFILED and rec["achieved_bandwidth_device_gbps"] is None
    one_token = kvbench.measure(tiny_loaded, kvbench.Scenario(6, 1), repeats=1, warmup=0, profile_steps=True)
    assert one_token["decode_step_device_s"] is None  # no decode step to profile


def fake_range(wall_us, device_us, children_us=()):
    children = [SimpleNamespace(cpu_time_total=c) for c in children_us]
    return SimpleNamespace(cpu_time_total=wall_us, device_time_total=device_us, cpu_children=children)


def test_step_figures_cuda_counts_kernel_time_of_the_decode_steps():
    ranges = [fake_range(9000, 8000), fake_range(1000, 300), fake_range(1200, 500), fake_range(1100, 400)]
    out = step_figures(ranges, cuda=True, decode_step_s=0.001)
    assert out["profile_device"] == "cuda" and out["profile_forward_calls"] == 4
    assert out["decode_steps_device_s"] == pytest.approx([3e-4, 5e-4, 4e-4])  # the prefill's range left out
    assert out["decode_step_device_s"] == pytest.approx(4e-4)
    assert out["decode_step_profiled_s"] == pytest.approx(1.1e-3)
    assert out["decode_device_busy_fraction"] == pytest.approx(0.4)


def test_step_figures_cpu_counts_time_in_top_level_operators():
    ranges = [fake_range(900, 0, (500,)), fake_range(100, 0, (30, 20)), fake_range(100, 0, (10, 10))]
    out = step_figures(ranges, cuda=False, decode_step_s=None)
    assert out["decode_steps_device_s"] == pytest.approx([5e-5, 2e-5])
    assert out["decode_device_busy_fraction"] is None  # no wall-clock step to divide by


def test_roofline_reports_both_bandwidths():
    out = roofline(2e9, 1000.0, 0.004, 0.002)
    assert out["achieved_bandwidth_gbps"] == pytest.approx(500) and out["bandwidth_fraction"] == pytest.approx(0.5)
    assert out["achieved_bandwidth_device_gbps"] == pytest.approx(1000)
    assert roofline(2e9, None, 0.004)["achieved_bandwidth_device_gbps"] is None


def test_cupti_is_initialised_once_before_cuda_graphs(monkeypatch):
    """torch's workaround for profiling CUDA graphs (pytorch/pytorch#75504): an empty profiler session before any
    capture, once per process; nothing on the CPU."""
    from torch.profiler import _utils

    from kvbench.measuring.instruments import profile

    calls = []
    monkeypatch.setattr(_utils, "_init_for_cuda_graphs", lambda: calls.append(1))
    monkeypatch.setattr(profile, "_CUPTI_READY", set())
    assert profile.prepare_for_cuda_graphs("cpu") is False and calls == []
    assert profile.prepare_for_cuda_graphs("cuda:0") is True and profile.prepare_for_cuda_graphs("cuda:1") is True
    assert calls == [1]


def test_a_profiled_scenario_prepares_before_its_first_generate(tiny_loaded, monkeypatch):
    from kvbench.measuring import measure as measure_module

    order = []
    real = measure_module.run_once
    monkeypatch.setattr(measure_module, "prepare_for_cuda_graphs", lambda device: order.append("prepare"))
    monkeypatch.setattr(measure_module, "run_once", lambda *a, **k: order.append("generate") or real(*a, **k))
    kvbench.measure(tiny_loaded, kvbench.Scenario(6, 3), repeats=1, warmup=1, profile_steps=True)
    assert order == ["prepare", "generate", "generate"]
    order.clear()
    kvbench.measure(tiny_loaded, kvbench.Scenario(6, 3), repeats=1, warmup=0)
    assert order == ["generate"]  # unprofiled: nothing to prepare
