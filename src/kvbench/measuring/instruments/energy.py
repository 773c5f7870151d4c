"""The energy instrument: a cumulative energy counter read before and after each timed generate.

On CUDA, NVML's total-energy counter of the device (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the
driver loaded; Volta and later). On the CPU, RAPL through Linux's powercap (`/sys/class/powercap/intel-rapl:N/
energy_uj`, microjoules, each package's counter summed, a wrap at `max_energy_range_uj` undone); it counts the whole
package, other processes included. Where neither can be read the figures are null and `energy_unavailable` says why.

Per record: `energy_j_repeats` (joules of each timed generate), `energy_per_token_j` (the median over the tokens
generated, every sequence's), `mean_power_w` (the median of joules over seconds) and `energy_source`.
Unverified on a GPU in this project so far: the CUDA path is tested against a fake pynvml only.
"""

from __future__ import annotations

import statistics
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


class Counter:
    """`read()` -> joules since some origin (None when the read fails); `source`; `reason` when unavailable."""

    def __init__(self, read=None, source: str | None = None, reason: str | None = None):
        self._read, self.source, self.reason = read, source, reason

    def read(self) -> float | None:
        if self._read is None:
            return None
        try:
            return self._read()
        except Exception:  # a counter that stops answering: this repeat has no energy figure
            return None


def rapl_zones(root: Path = POWERCAP) -> list[Path]:
    """The package-level RAPL zones (intel-rapl:0, intel-rapl:1; not their sub-zones) whose counter is readable."""
    zones = []
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") == 1 and (zone / "energy_uj").exists():
            try:
                int((zone / "energy_uj").read_text())
            except (OSError, ValueError):
                continue
            zones.append(zone)
    return zones


def rapl_counter(root: Path = POWERCAP) -> Counter:
    zones = rapl_zones(root)
    if not zones:
        return Counter(reason=f"no readable RAPL counter ({root}/intel-rapl:*/energy_uj): not exposed on this "
                              "machine or not readable by this user")
    ranges = {z: int((z / "max_energy_range_uj").read_text()) if (z / "max_energy_range_uj").exists() else None
              for z in zones}
    last: dict[Path, int] = {}
    total = {"uj": 0}

    def read() -> float:
        for zone in zones:
            now = int((zone / "energy_uj").read_text())
            if zone in last:
                step = now - last[zone]
                if step < 0 and ranges[zone]:  # the counter wrapped
                    step += ranges[zone]
                total["uj"] += step
            last[zone] = now
        return total["uj"] / 1e6

    return Counter(read, "RAPL powercap (" + ", ".join(z.name for z in zones) + "; whole package)")


def nvml_counter(handle) -> Counter:
    if handle is None:
        return Counter(reason="NVML unavailable (see env_nvml)")
    import pynvml

    def read() -> float:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3

    try:
        read()
    except pynvml.NVMLError as exc:
        return Counter(reason=f"NVML has no energy counter for this GPU ({exc})")
    return Counter(read, "NVML nvmlDeviceGetTotalEnergyConsumption")


def energy_counter(device, nvml=None) -> Counter:
    """The counter of `device`: NVML's on CUDA, RAPL's on the CPU."""
    return nvml_counter(nvml) if str(device).startswith("cuda") else rapl_counter()


def energy_fields(runs: list[dict]) -> dict:
    """The record's energy figures from the timed repeats (each with `energy_j`, `total_s`, `tokens_out`)."""
    joules = [r.get("energy_j") for r in runs]
    last = runs[-1] if runs else {}
    out = {"energy_j_repeats": joules, "energy_per_token_j": None, "mean_power_w": None,
           "energy_source": last.get("energy_source"), "energy_unavailable": last.get("energy_unavailable")}
    valid = [(j, r) for j, r in zip(joules, runs) if j is not None and j >= 0]
    per_token = [j / r["tokens_out"] for j, r in valid if r.get("tokens_out")]
    power = [j / r["total_s"] for j, r in valid if r["total_s"] > 0]
    out["energy_per_token_j"] = statistics.median(per_token) if per_token else None
    out["mean_power_w"] = statistics.median(power) if power else None
    return out
