"""The Ray executor on a local Ray cluster (2 CPUs): the same records as one process, and a worker killed in a
scenario ends in an error record for that scenario with every other record present."""

import json
import os
import sys

import pytest
from kvbench.cli.app import main
from kvbench.inputs.scenario import grid
from kvbench.scale.ray_executor import FAULT_ENV, run_sweep_ray

ray = pytest.importorskip("ray")
CRASHING = "P12-N2-B1-cache-dynamic-greedy"  # the worker measuring this scenario kills itself
SAME = ["scenario_id", "status", "kv_cache_bytes", "kv_cache_bytes_estimate", "kv_cache_bytes_naive",
        "positions_per_call", "positions_processed", "positions_processed_estimate", "forward_calls",
        "generated_tokens", "weight_bytes_estimate", "weight_bytes", "model", "device", "dtype"]


@pytest.fixture(scope="module")
def local_ray():
    os.environ[FAULT_ENV] = CRASHING  # inherited by the workers this cluster starts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    del os.environ[FAULT_ENV]


def read(folder):
    return {r["scenario_id"]: r for r in map(json.loads, (folder / "records.jsonl").read_text().splitlines())}


def test_ray_records_equal_those_of_one_process(local_ray, tiny_config_file, tmp_path):
    argv = ["--model", str(tiny_config_file), "--device", "cpu", "--prompt-len", "8,16", "--new-tokens", "3",
            "--batch-size", "1,2", "--repeats", "1", "--warmup", "0"]
    assert main(["run", *argv, "--out", str(tmp_path / "local")]) == 0
    assert main(["run", *argv, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-workers", "2"]) == 0
    local, remote = read(tmp_path / "local"), read(tmp_path / "ray")
    assert sorted(local) == sorted(remote) and len(local) == 8
    for sid in local:
        assert {k: local[sid].get(k) for k in SAME} == {k: remote[sid].get(k) for k in SAME}
    info = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert info["executor"] == "ray" and info["ray_workers"] == 2 and len(info["scenarios"]) == 8


def test_a_killed_worker_ends_in_an_error_record(local_ray, tiny_config_file, tmp_path):
    scenarios = grid([8, 12, 16], [2], [1], [True])
    assert CRASHING in [s.id for s in scenarios]
    records = run_sweep_ray(str(tiny_config_file), scenarios, tmp_path / "run", load={"device": "cpu"}, repeats=1,
                            warmup=0, workers=2)
    on_disk = read(tmp_path / "run")
    assert sorted(on_disk) == sorted(s.id for s in scenarios) and len(records) == 3
    assert on_disk[CRASHING]["status"] == "error" and "Ray worker failed" in on_disk[CRASHING]["error"]
    assert all(on_disk[s.id]["status"] == "ok" for s in scenarios if s.id != CRASHING)


def test_without_ray_the_executor_says_how_to_install(monkeypatch, tiny_config_file, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["run", "--model", str(tiny_config_file), "--executor", "ray", "--out", str(tmp_path / "r")])
    assert code == 2 and "pip install 'kvbench[ray]'" in capsys.readouterr().err
