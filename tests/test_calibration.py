"""Calibration: the fit recovers known terms from records, reports its residuals, and fits what CPU runs measured
(the activations) while saying which terms kept their defaults."""

from pathlib import Path

import pandas as pd
import pytest

from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.estimate import capacity
from kvbench.plan.calibration import calibrate, fit_quality
from kvbench.plan.plan import plan_capacity
from kvbench.results.store import RunWriter, load_results

ROOT = Path(__file__).resolve().parents[1]
TRUE = dict(scale=1.7, offset=3_000_000, overhead=400_000_000, fraction=0.6, step_s=2e-4, bandwidth=2000.0)
SCENARIOS = [(1, 16, 8), (4, 256, 8), (8, 512, 4), (1, 4, 300), (2, 8, 400), (16, 1024, 2), (2, 128, 64)]


def cuda_like_records(truth=TRUE, noise=None):
    """Records shaped like `measure` output on a CUDA GPU, their peaks and step times made from known terms: the
    planner's KV (kvcache.kv_cache_bytes_at) and analytic activations, with scale/offset/overhead/fraction set."""
    w = capacity.make_workload("tiny", "float16")
    records = []
    for i, (b, p, n) in enumerate(SCENARIOS):
        kvp, ap = capacity.kv_prefill_bytes(w, b, p, p + n), capacity.activation_prefill_bytes(w, b, p, p + n)
        kvd, ad = capacity.kv_decode_bytes(w, b, p + n, n), capacity.activation_decode_bytes(w, b, p + n, n)
        act = lambda a: truth["scale"] * a + truth["offset"]  # noqa: E731
        peak = max(kvp + act(ap), kvd + act(ad) if n >= 2 else 0)
        per_step = w.weight_bytes + kvd
        step = truth["step_s"] + per_step / (truth["fraction"] * truth["bandwidth"] * 1e9)
        if noise:
            peak, step = peak * (1 + noise[i % len(noise)]), step * (1 - noise[i % len(noise)])
        records.append(dict(
            model="tiny", dtype="float16", cache_implementation="dynamic", num_beams=1, decoding="greedy",
            status="ok", use_cache=True, device="cuda:0", prompt_len=p, new_tokens=n, batch_size=b,
            scenario_id=f"P{p}-N{n}-B{b}-cache-dynamic-greedy", peak_memory_source="torch.cuda.max_memory_allocated",
            peak_allocated_delta_bytes=peak, allocated_before_bytes=10_000_000,
            nvml_used_after_bytes=10_000_000 + peak + truth["overhead"] - 1_000_000 * (i % 3),
            decode_bytes_per_step_estimate=per_step, env_gpu_bandwidth_gbps=truth["bandwidth"],
            decode_step_s=step, kv_cache_bytes=kvd,
        ))
    return records


def test_fit_recovers_known_terms():
    cal, report = calibrate(pd.DataFrame(cuda_like_records()).assign(run="synthetic"))
    assert cal.activation_scale == pytest.approx(TRUE["scale"], rel=1e-9)
    assert cal.activation_offset_bytes == pytest.approx(TRUE["offset"], rel=1e-6)
    assert cal.overhead_bytes == TRUE["overhead"]  # the largest seen
    assert cal.bandwidth_fraction == pytest.approx(TRUE["fraction"], rel=1e-9)
    assert cal.step_overhead_s == pytest.approx(TRUE["step_s"], rel=1e-6)
    assert "7 records" in cal.source and "synthetic" in cal.source
    memory = report[report.term == "peak memory"]
    assert len(memory) == len(SCENARIOS) and memory["error"].abs().max() < 1e-9
    # some records peak at the prefill, some at the last decode step (long generations from short prompts)
    assert set(memory["peak_phase"]) == {"prefill", "decode"}
    quality = fit_quality(report).set_index("term")
    assert quality.loc["peak memory", "records"] == len(SCENARIOS)
    assert quality.loc["overhead", "max_abs_error"] == pytest.approx(2_000_000 / 398_000_000)


def test_runs_recorded_before_the_rename_calibrate_the_same():
    """Older run folders name the NVML reading after the call `nvml_used_peak_bytes`."""
    new = pd.DataFrame(cuda_like_records())
    old = new.rename(columns={"nvml_used_after_bytes": "nvml_used_peak_bytes"})
    assert calibrate(old)[0].overhead_bytes == calibrate(new)[0].overhead_bytes == TRUE["overhead"]


def test_fit_reports_residuals_of_noisy_records():
    cal, report = calibrate(pd.DataFrame(cuda_like_records(noise=[0.05, -0.03, 0.02])))
    quality = fit_quality(report).set_index("term")
    assert 0 < quality.loc["peak memory", "max_abs_error"] < 0.2
    assert 0 < quality.loc["decode step", "median_abs_error"] < 0.1
    assert 0.4 < cal.bandwidth_fraction < 0.8


def test_calibrated_plan_uses_the_fit():
    cal, _ = calibrate(pd.DataFrame(cuda_like_records()))
    plan = plan_capacity("phi-3-mini-4k", "t4", dtype="float16", batch_sizes=[1], contexts=[2048],
                         calibration=cal)
    row = plan[plan.question == "breakdown"].iloc[0]
    assert row["overhead_bytes"] == TRUE["overhead"]
    assert row["decode_step_s"] == pytest.approx(TRUE["step_s"] + row["decode_step_roofline_s"] / TRUE["fraction"])
    assert row["calibration"].startswith("calibrated on 7 records")


def cpu_like(records):
    """The same records as a CPU run writes them: the profiler's allocator peak, no NVML, no GPU bandwidth."""
    drop = ("nvml_used_after_bytes", "allocated_before_bytes", "env_gpu_bandwidth_gbps")
    return [{k: v for k, v in r.items() if k not in drop} | {"device": "cpu",
            "peak_memory_source": "torch.profiler allocation events"} for r in records]


def test_cpu_records_fit_the_activations_and_say_the_rest_kept_defaults():
    cal, report = calibrate(pd.DataFrame(cpu_like(cuda_like_records())).assign(run="cpu-synthetic"))
    assert cal.activation_scale == pytest.approx(TRUE["scale"], rel=1e-9)
    assert cal.activation_offset_bytes == pytest.approx(TRUE["offset"], rel=1e-6)
    assert cal.overhead_bytes == 500 * 2**20 and cal.bandwidth_fraction is None  # the defaults
    assert cal.fitted == ("activations",)
    assert cal.source == ("calibrated on 7 records (cpu-synthetic); fitted: activations; defaults kept: overhead "
                          "(no NVML readings), decode speed (no GPU bandwidth)")
    assert list(report["term"].unique()) == ["peak memory"]


def test_records_with_nothing_to_fit_are_refused():
    rss_only = [r | {"peak_memory_source": "process peak RSS (VmHWM)"} for r in cpu_like(cuda_like_records())]
    with pytest.raises(UserError, match="7 records with the cache on, none with an allocator peak"):
        calibrate(pd.DataFrame(rss_only))


def test_a_measured_cpu_record_calibrates(tmp_path):
    from kvbench.inputs.scenario import Scenario
    from kvbench.measuring.measure import measure
    from kvbench.measuring.loading.models import load_model

    loaded = load_model("tiny", device="cpu", dtype="float32")
    with RunWriter(tmp_path / "cpu", {"model": "tiny"}) as writer:
        for p in (8, 64):
            writer.write(measure(loaded, Scenario(prompt_len=p, new_tokens=3), repeats=1, warmup=0))
    cal, report = calibrate(load_results(tmp_path / "cpu"))
    assert cal.fitted == ("activations",) and "defaults kept: overhead" in cal.source
    assert len(report) == 2 and report["error"].abs().max() < 0.05


def test_cli_calibrate_prints_the_fit(tmp_path, capsys):
    with RunWriter(tmp_path / "gpu-run", {"model": "tiny"}) as writer:
        for record in cuda_like_records():
            writer.write(record)
    rc = main(["plan", "--model", "phi-3-mini-4k", "--gpu", "t4", "--batch-sizes", "1", "--contexts", "2048",
               "--calibrate", str(tmp_path / "gpu-run"), "--format", "markdown"])
    out = capsys.readouterr().out
    assert rc == 0
    assert ("Calibration (calibrated on 7 records (gpu-run); fitted: activations, overhead, decode speed)" in out
            and "How well the fit matches" in out)
    assert "| bandwidth fraction | 60.0% | fitted |" in out
    assert "decode step (calibrated)" in out
    assert main(["plan", "--model", "tiny", "--gpu", "t4", "--calibrate", str(tmp_path / "gpu-run"),
                 "--format", "csv", "--batch-sizes", "1", "--contexts", "1024"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("calibrated on 7 records (gpu-run); fitted: activations, overhead, decode speed: "
                                   "peak memory: 7 records, median |error| 0.0%")
    assert "decode_step_s" in captured.out.splitlines()[0]
    rc = main(["plan", "--model", "tiny", "--memory", "1GiB", "--calibrate", str(tmp_path / "missing")])
    assert rc == 2


def test_cli_calibrates_from_the_committed_cpu_run_and_names_the_terms_kept(capsys):
    rc = main(["plan", "--model", "tiny", "--memory", "1GiB", "--batch-sizes", "1", "--contexts", "1024",
               "--calibrate", str(ROOT / "results/cpu-memory/runs/tiny"), "--format", "markdown"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "calibrated on 4 records (tiny); fitted: activations; defaults kept: overhead" in out
    assert "| overhead | 500.0 MiB | default |" in out and "| activation scale |" in out
