"""Time estimates of a sweep: the analytic work of a scenario matches what the harness counts, finished scenarios
rescale what is left, and a slow model on the CPU is said so before the sweep starts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kvbench.cli.app import main
from kvbench.cli.run import eta_text, fmt_clock, fmt_duration, slow_line
from kvbench.inputs.scenario import Scenario
from kvbench.measuring.harness.eta import SweepEstimate, probe_rates, scenario_work
from kvbench.measuring.measure import measure

SCENARIOS = [Scenario(8, 4, 2, True), Scenario(8, 4, 2, False), Scenario(6, 3, 1, True, decoding="beam", num_beams=2)]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario_work_is_what_generate_does(tiny_loaded, scenario):
    record = measure(tiny_loaded, scenario, repeats=1, warmup=0)
    calls, positions = scenario_work(scenario, repeats=1, warmup=0)
    assert calls == record["forward_calls"]
    assert positions == record["positions_processed"] * scenario.batch_size * scenario.num_beams
    assert scenario_work(scenario, repeats=3, warmup=1) == (4 * calls, 4 * positions)


def test_finished_scenarios_rescale_what_is_left():
    est = SweepEstimate(SCENARIOS, repeats=1, warmup=0, per_call_s=0.5, per_position_s=0.01)
    priors = [0.5 * 4 + 0.01 * 2 * 11, 0.5 * 4 + 0.01 * 2 * (4 * 8 + 6), 0.5 * 3 + 0.01 * 2 * 8]
    assert [est.prior_s(s) for s in SCENARIOS] == pytest.approx(priors)
    assert est.remaining_s() == pytest.approx(sum(priors))
    est.finished(2 * priors[0])  # the machine is twice as slow as the probe said
    assert est.scale == pytest.approx(2.0)
    assert est.remaining_s() == pytest.approx(2 * (priors[1] + priors[2]))
    est.finished(priors[1])
    assert est.scale == pytest.approx((2 * priors[0] + priors[1]) / (priors[0] + priors[1]))
    assert est.expected_s(SCENARIOS[2]) == pytest.approx(priors[2] * est.scale)
    est.finished(1.0)
    assert est.remaining_s() == 0


def test_probe_times_the_model_itself(tiny_loaded):
    """A model whose forward costs 200 ms a call plus 10 ms a position (slept, by hand): the probe reads those rates."""
    import dataclasses
    import time

    def forward(input_ids, **kwargs):
        time.sleep(0.200 + 0.010 * input_ids.shape[1])

    per_call, per_position = probe_rates(dataclasses.replace(tiny_loaded, model=forward), 32)
    assert per_call == pytest.approx(0.200, rel=0.3) and per_position == pytest.approx(0.010, rel=0.3)
    est = SweepEstimate.probe(tiny_loaded, SCENARIOS, repeats=2, warmup=1)
    assert est.remaining_s() > 0 and est.measured_s == []


def test_a_slow_model_on_the_cpu_is_named_with_its_expected_time():
    est = SweepEstimate(SCENARIOS, repeats=1, warmup=0, per_call_s=5.0, per_position_s=0.0)
    big_cpu = SimpleNamespace(name="phi-3-mini-4k", device=torch.device("cpu"), weight_bytes=15 * 10**9)
    line = slow_line(big_cpu, est)
    assert line.startswith("phi-3-mini-4k on the CPU: about 20 s per scenario expected (3 scenarios, about 55 s")
    assert "14.0 GiB of weights" in line
    assert slow_line(SimpleNamespace(**{**vars(big_cpu), "device": torch.device("cuda")}), est) is None
    fast = SweepEstimate(SCENARIOS, repeats=1, warmup=0, per_call_s=0.001, per_position_s=0.0)
    assert slow_line(SimpleNamespace(**{**vars(big_cpu), "weight_bytes": 10**6}), fast) is None
    slow = SimpleNamespace(**{**vars(big_cpu), "weight_bytes": 10**6})  # small weights, but minutes per scenario
    assert slow_line(slow, SweepEstimate(SCENARIOS, 1, 0, 30.0, 0.0)).startswith("phi-3-mini-4k on the CPU: about 2 min")


def test_durations_and_the_eta_countdown():
    assert [fmt_duration(s) for s in (8.4, 200, 3900)] == ["8 s", "3 min 20 s", "1 h 05 min"]
    assert [fmt_clock(s) for s in (8.4, 200, 3900)] == ["0:08", "3:20", "1:05:00"]
    assert eta_text(90.0, 30.0) == "ETA 1:00" and eta_text(10.0, 30.0) == "ETA 0:00" and eta_text(None, 0) == "ETA -:--"


def test_kvbench_run_says_first_when_it_will_be_slow(tiny_config_file, tmp_path, capsys, monkeypatch):
    """The probe says a call takes 4 s: the line comes before the sweep, whose records are still real."""
    monkeypatch.setattr(SweepEstimate, "probe", classmethod(
        lambda cls, loaded, scenarios, repeats, warmup: cls(scenarios, repeats, warmup, 4.0, 0.0)))
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_config_file), "--prompt-len", "8", "--new-tokens", "3", "--batch-size", "1",
                 "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert " on the CPU: about 12 s per scenario expected (2 scenarios, about 24 s in all" in " ".join(
        " ".join(lines[:4]).split())  # however the console wrapped the line
    assert len((out / "records.jsonl").read_text().splitlines()) == 2
