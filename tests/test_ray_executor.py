"""The Ray executor on a local Ray cluster (2 CPUs, one machine): the records and settings of one process, one
worker per machine, and a worker killed in a scenario ends in an error record for that scenario with every other
record present. The "without Ray" case runs wherever Ray is missing too (it exists for that case)."""

import json
import os
import signal
import sys

import pytest

from kvbench.cli.app import main
from kvbench.inputs.options import RunOptions
from kvbench.inputs.scenario import grid

CRASHING = "P12-N2-B1-cache-dynamic-greedy"  # the worker measuring this scenario kills itself
SAME = ["scenario_id", "status", "kv_cache_bytes", "kv_cache_bytes_estimate", "kv_cache_bytes_naive",
        "positions_per_call", "positions_processed", "positions_processed_estimate", "forward_calls",
        "generated_tokens", "weight_bytes_estimate", "weight_bytes", "model", "device", "dtype", "repeats",
        "quant_backend", "quant_nbits", "quant_residual_length", "cache_implementation", "profile_forward_calls"]
# run.json's settings of the run (not the environment, not when)
SETTINGS = ["model", "device", "dtype", "repeats", "warmup", "profile_steps", "on_oom", "grid"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def read(folder):
    return {r["scenario_id"]: r for r in map(json.loads, (folder / "records.jsonl").read_text().splitlines())}


def test_ray_measures_with_the_settings_of_a_local_sweep(local_ray, tiny_config_file, tmp_path, capsys):
    """Every run option reaches the workers: profile steps, on-oom, quantization settings, repeats, warm-up (Ray
    once measured without --profile-steps, whatever was asked); and 2 workers asked for on one machine's CPU run as
    one, saying so (two would time each other's load)."""
    argv = ["--model", str(tiny_config_file), "--device", "cpu", "--prompt-len", "8,16", "--new-tokens", "3",
            "--batch-size", "1", "--use-cache", "on", "--cache-implementation", "dynamic,quantized",
            "--quant-backend", "hqq", "--quant-nbits", "3", "--quant-residual-length", "2", "--repeats", "2",
            "--warmup", "0", "--profile-steps", "--on-oom", "skip-larger"]
    assert main(["run", *argv, "--out", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    assert main(["run", *argv, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-workers", "2"]) == 0
    assert "--ray-workers 2: 1 worker, one per machine" in capsys.readouterr().out.replace("\n", " ")
    local, remote = read(tmp_path / "local"), read(tmp_path / "ray")
    assert sorted(local) == sorted(remote) and len(local) == 4
    for sid in local:
        assert {k: local[sid].get(k) for k in SAME} == {k: remote[sid].get(k) for k in SAME}
        assert remote[sid]["repeats"] == 2 and remote[sid]["profile_forward_calls"] == 3  # profiled: 3 forwards
    assert {local[s]["quant_nbits"] for s in local if "quantized" in s} == {3}
    infos = [json.loads((tmp_path / run / "run.json").read_text()) for run in ("local", "ray")]
    assert {k: infos[0].get(k) for k in SETTINGS} == {k: infos[1].get(k) for k in SETTINGS}
    assert infos[1]["profile_steps"] is True and infos[1]["on_oom"] == "skip-larger"
    assert infos[1]["executor"] == "ray" and infos[1]["ray_workers"] == 1 and len(infos[1]["scenarios"]) == 4


def test_a_killed_worker_ends_in_an_error_record(local_ray, tiny_config_file, tmp_path):
    from kvbench.scale.ray_executor import Worker, run_sweep_ray

    class Crashing(Worker):  # the fault is the test's: a crash Ray sees as a dead worker
        def measure(self, scenario):
            if grid([scenario["prompt_len"]], [scenario["new_tokens"]], [1], [True])[0].id == CRASHING:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().measure(scenario)

    scenarios = grid([8, 12, 16], [2], [1], [True])
    assert CRASHING in [s.id for s in scenarios]
    records = run_sweep_ray(str(tiny_config_file), scenarios, tmp_path / "run",
                            RunOptions(device="cpu", repeats=1, warmup=0), worker_class=Crashing)
    on_disk = read(tmp_path / "run")
    assert sorted(on_disk) == sorted(s.id for s in scenarios) and len(records) == 3
    assert on_disk[CRASHING]["status"] == "error" and "Ray worker failed" in on_disk[CRASHING]["error"]
    assert all(on_disk[s.id]["status"] == "ok" for s in scenarios if s.id != CRASHING)


def test_the_fault_hook_is_not_shipped():
    from kvbench.scale import ray_executor

    source = open(ray_executor.__file__, encoding="utf-8").read()
    assert "SIGKILL" not in source and "os.kill" not in source


def test_without_ray_the_executor_says_how_to_install(monkeypatch, tiny_config_file, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["run", "--model", str(tiny_config_file), "--executor", "ray", "--out", str(tmp_path / "r")])
    assert code == 2 and "pip install 'kvbench[ray]'" in capsys.readouterr().err
