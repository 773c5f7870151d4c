"""tools/gpu_selfcheck.py on synthetic records (PASS and FAIL cases), its clock comparison, and the acceptance
script's argument handling. Nothing here needs a GPU."""

import importlib.util
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_selfcheck", ROOT / "tools" / "gpu_selfcheck.py")
selfcheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(selfcheck)


def record(**fields):
    base = dict(scenario_id="P8-N4-B1-cache-dynamic-greedy", status="ok", use_cache=True, device="cuda:0",
                cache_implementation="dynamic", kv_cache_bytes=4096, kv_cache_bytes_estimate=4096)
    return {**base, **fields}


def static(compile, device, compiled):
    return record(scenario_id=f"P8-N4-B1-cache-static-greedy-compile-{compile}", cache_implementation="static",
                  compile=compile, device=device, decode_compiled=compiled)


def test_kv_bytes_pass_and_fail():
    ok = [record(), record(use_cache=False, kv_cache_bytes=0, kv_cache_bytes_estimate=0),
          record(status="oom", kv_cache_bytes=None)]  # uncached and failed records are not checked
    verdict, message = selfcheck.check_kv_bytes(ok)
    assert verdict == "PASS" and "all 1 cached ok records" in message
    verdict, message = selfcheck.check_kv_bytes(ok + [record(scenario_id="P9", kv_cache_bytes=4100)])
    assert verdict == "FAIL" and "1 of 2" in message and "measured 4100, estimate 4096" in message
    assert selfcheck.check_kv_bytes(ok + [record(kv_cache_bytes_estimate=None)])[0] == "FAIL"
    assert selfcheck.check_kv_bytes([record(use_cache=False)]) == ("FAIL", "no cached ok record to check")


def test_compile_recorded_pass_and_fail():
    good = [static("auto", "cuda:0", True), static("off", "cuda:0", False), static("on", "cpu", True),
            static("auto", "cpu", False), record()]  # a dynamic record is not checked
    verdict, message = selfcheck.check_compile_recorded(good)
    assert verdict == "PASS" and "4 static records" in message and "2 compiled, 2 eager" in message
    # transformers' auto choice did not compile on CUDA
    verdict, message = selfcheck.check_compile_recorded(good + [static("auto", "cuda:0", False)])
    assert verdict == "FAIL" and "expected True" in message
    # compile off, yet compiled
    assert selfcheck.check_compile_recorded([static("off", "cuda:0", True)])[0] == "FAIL"
    # a kvbench without the compile axis writes no decode_compiled
    no_field = record(cache_implementation="static")
    verdict, message = selfcheck.check_compile_recorded([no_field])
    assert verdict == "FAIL" and "no decode_compiled field" in message
    assert selfcheck.check_compile_recorded([record()])[0] == "FAIL"  # nothing static to check


def test_device_time_agrees_with_the_profiler_on_the_cpu():
    verdict, message = selfcheck.live_device_time("cpu", nbytes=8 * 2**20, launches=4)
    assert verdict == "PASS", message
    assert "4 additions over 8 MiB on cpu (perf_counter)" in message


def test_device_time_fails_for_a_clock_that_misses_the_work(monkeypatch):
    """The check can fail: a clock that sees a third of the queued work (marks on the wrong stream, say)."""
    from kvbench.measuring.instruments.clock import Clock

    real = Clock.intervals
    monkeypatch.setattr(Clock, "intervals", lambda self, marks: [t / 3 for t in real(self, marks)])
    verdict, message = selfcheck.live_device_time("cpu", nbytes=8 * 2**20, launches=4)
    assert verdict == "FAIL" and "apart (limit 10%)" in message


def test_step_busy_on_a_profiled_record_and_on_a_blind_profiler(tiny_loaded):
    import kvbench

    rec = {"_run": "live", **kvbench.measure(tiny_loaded, kvbench.Scenario(8, 5), repeats=1, warmup=0,
                                             profile_steps=True)}
    verdict, message = selfcheck.check_step_busy([rec])
    assert verdict == "PASS" and "every decode step busy > 0" in message
    # a profiler that saw no kernels in a step (CUDA graphs captured before CUPTI was initialised)
    blind = {**rec, "decode_steps_device_s": [0.0] + rec["decode_steps_device_s"][1:]}
    verdict, message = selfcheck.check_step_busy([rec, blind])
    assert verdict == "FAIL" and "1 of 2" in message and "the profiler missed its kernels" in message
    # device time longer than the step it ran in
    over = {**rec, "decode_step_device_s": 2 * rec["decode_step_profiled_s"]}
    assert selfcheck.check_step_busy([over])[0] == "FAIL"
    assert selfcheck.check_step_busy([record()])[0] == "SKIP"  # nothing profiled


def test_peak_check_bounds():
    """Within 15% passes, twice the estimate fails, nothing to compare skips; the tiny preset's cache holds 4 KiB per
    token per sequence in float32 (its description, from its config)."""
    kv = 4096 * 2 * (32 + 8 - 1)  # the last token is never fed back
    assert selfcheck.compare_peak(int(kv * 1.1), kv)[0] == "PASS" and selfcheck.compare_peak(kv, None)[0] == "SKIP"
    assert selfcheck.compare_peak(None, kv)[0] == "SKIP"
    assert selfcheck.compare_peak(kv, kv)[0] == "PASS" and selfcheck.compare_peak(2 * kv, kv)[0] == "FAIL"


def test_live_checks_on_the_cpu(capsys):
    assert selfcheck.main(["--live", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--prompt-len",
                           "16", "--new-tokens", "4", "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "PASS device-time", "PASS kv-bytes-live", "PASS peak-vs-estimate", "PASS step-busy-live",
        "SKIP oom-recovered"]


def test_versions_survive_a_missing_git(monkeypatch):
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name in ("git", "nvidia-smi")
                        else real(name, *a, **k))
    text = selfcheck.versions()
    assert "which git: not found" in text and "nvidia-smi: not on this machine" in text
    assert f"torch {torch.__version__}" in text


def test_oom_check_needs_cuda():
    verdict, message = selfcheck.live_oom(SimpleNamespace(device=torch.device("cpu")))
    assert verdict == "SKIP" and "needs CUDA" in message


def write_run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir()
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_main_passes_and_fails_on_run_folders(tmp_path, capsys):
    good = write_run(tmp_path / "good", [record(), record(use_cache=False, scenario_id="P8-N4-B1-nocache-greedy",
                                                          total_s=2.0, kv_cache_bytes=0), static("auto", "cuda:0", True)])
    assert selfcheck.main(["--records", str(good)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["PASS kv-bytes: measured == estimate on all 2 cached ok records",
                       "PASS compile-recorded: 1 static records as their setting implies (1 compiled, 0 eager)"]
    bad = write_run(tmp_path / "bad", [record(kv_cache_bytes=1), static("auto", "cuda:0", False)])
    assert selfcheck.main(["--records", str(good), str(bad), str(tmp_path / "missing")]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL ") == 3 and "missing: no records.jsonl" in out


def test_info_lines_give_the_speedup_and_the_step_split():
    lines = selfcheck.info_lines([
        {**record(prompt_len=55, new_tokens=100, batch_size=1, decoding="greedy", total_s=1.0, decode_step_s=0.01,
                  decode_step_device_s=0.002, decode_device_busy_fraction=0.2), "_run": "study"},
        {**record(use_cache=False, prompt_len=55, new_tokens=100, batch_size=1, decoding="greedy", total_s=4.07),
         "_run": "study"},
    ])
    assert lines[0].startswith("INFO study P55-N100-B1-greedy:") and "without: 4.07x; KV" in lines[0]
    assert lines[0].endswith("the guide's T4 (phi-3-mini-4k fp16, one run each): 9.53 s with the cache, 38.8 s "
                             "without: 4.07x")
    assert "host 10.00 ms device 2.00 ms busy 20%" in lines[1]


def test_acceptance_script_arguments(tmp_path):
    script = ROOT / "tools" / "gpu_acceptance.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = subprocess.run(["bash", str(script), "--gpu-please"], capture_output=True, text=True,
                          env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "unknown argument --gpu-please" in done.stderr
    done = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--cpu" in done.stdout
    done = subprocess.run(["bash", str(script), "--cpu"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "OUT" in done.stderr
