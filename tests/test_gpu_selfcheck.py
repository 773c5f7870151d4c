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


def test_compare_clocks():
    assert selfcheck.compare_clocks([1.00, 1.01, 0.99], [1.01, 1.02, 1.00])[0] == "PASS"
    verdict, message = selfcheck.compare_clocks([1.0, 1.0, 1.0], [1.03, 1.03, 1.03])
    assert verdict == "FAIL" and "2.91% apart" in message
    assert selfcheck.compare_clocks([], [])[0] == "FAIL"
    assert selfcheck.compare_clocks([0.0], [1.0])[0] == "FAIL"


def test_live_clock_on_the_cpu_nests_the_clock_inside_the_wall(tiny_loaded, monkeypatch):
    seen = {}
    real = selfcheck.compare_clocks
    monkeypatch.setattr(selfcheck, "compare_clocks", lambda e, w: seen.update(e=e, w=w) or real(e, w))
    verdict, message = selfcheck.live_clock(tiny_loaded, prompt_len=6, new_tokens=3, repeats=3)
    assert verdict in ("PASS", "FAIL") and "perf_counter" in message
    assert len(seen["e"]) == 3 and all(0 < e <= w for e, w in zip(seen["e"], seen["w"]))


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
    assert lines[0].startswith("INFO study P55-N100-B1-greedy:") and "4.07x" in lines[0]
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


@pytest.mark.parametrize("name", ["env.txt", "study.tar.gz", "sweep.tar.gz", "frontier.tar.gz", "bench.tar.gz",
                                  "selfcheck.txt", "log.txt", "summary.txt"])
def test_acceptance_script_names_its_eight_files(name):
    assert name in (ROOT / "tools" / "gpu_acceptance.sh").read_text()
