"""The energy instrument: RAPL's powercap files (a fake tree, with a counter that wraps), NVML's energy counter (a
fake pynvml), the per-token and power figures worked out by hand, and null with the reason where nothing reads."""

from __future__ import annotations

import sys
import types

import pytest

from kvbench.measuring.instruments.energy import energy_counter, energy_fields, nvml_counter, rapl_counter


def zone(root, name, uj, max_uj=None):
    path = root / name
    path.mkdir(parents=True)
    (path / "energy_uj").write_text(f"{uj}\n")
    if max_uj is not None:
        (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def test_rapl_sums_packages_skips_subzones_and_undoes_a_wrap(tmp_path):
    p0 = zone(tmp_path, "intel-rapl:0", 999_000_000, max_uj=1_000_000_000)
    p1 = zone(tmp_path, "intel-rapl:1", 5_000_000)
    zone(tmp_path, "intel-rapl:0:0", 123)  # a sub-zone (core): inside package 0, not counted again
    counter = rapl_counter(tmp_path)
    assert counter.source == "RAPL powercap (intel-rapl:0, intel-rapl:1; whole package)"
    start = counter.read()
    (p0 / "energy_uj").write_text("2000000\n")  # wrapped: 1,000,000 uJ to the top, then 2,000,000 more
    (p1 / "energy_uj").write_text("6500000\n")  # 1,500,000 uJ
    assert counter.read() - start == pytest.approx(4.5)


def test_no_rapl_is_null_with_the_reason(tmp_path):
    counter = rapl_counter(tmp_path)
    assert counter.read() is None and "no readable RAPL counter" in counter.reason


def fake_pynvml(mj):
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nvml.NVMLError = NVMLError

    def energy(handle):
        if mj is None:
            raise NVMLError("Not Supported")
        return mj.pop(0)

    nvml.nvmlDeviceGetTotalEnergyConsumption = energy
    return nvml


def test_nvml_energy_counter_in_joules(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([1_000, 1_000, 351_000]))
    counter = energy_counter("cuda:0", nvml="handle")
    assert counter.source == "NVML nvmlDeviceGetTotalEnergyConsumption"
    assert counter.read() == 1.0 and counter.read() == 351.0
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(None))
    assert "no energy counter" in nvml_counter("handle").reason
    assert nvml_counter(None).reason == "NVML unavailable (see env_nvml)"


def test_energy_per_token_and_power_by_hand():
    runs = [{"energy_j": 6.0, "total_s": 2.0, "tokens_out": 120, "energy_source": "RAPL"},
            {"energy_j": 9.0, "total_s": 3.0, "tokens_out": 120, "energy_source": "RAPL"},
            {"energy_j": 12.0, "total_s": 3.0, "tokens_out": 120, "energy_source": "RAPL"}]
    out = energy_fields(runs)
    assert out["energy_per_token_j"] == pytest.approx(9.0 / 120)   # median of 0.05, 0.075, 0.1
    assert out["mean_power_w"] == pytest.approx(3.0)                # median of 3, 3, 4 W
    none = energy_fields([{"energy_j": None, "total_s": 1.0, "tokens_out": 8, "energy_source": None,
                           "energy_unavailable": "no readable RAPL counter"}])
    assert none["energy_per_token_j"] is None and none["energy_unavailable"] == "no readable RAPL counter"
