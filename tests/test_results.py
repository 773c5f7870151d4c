import json
import math

import numpy as np
import pytest
import torch

import kvbench
from kvbench.measuring.harness.runner import run_sweep
from kvbench.results.schema import SCHEMA_VERSION
from kvbench.results.store import RunWriter, json_safe


def test_json_safe():
    value = {"a": np.float32(1.5), "b": float("nan"), "c": torch.float16, "d": torch.tensor(3), "e": [np.int64(2)]}
    assert json_safe(value) == {"a": 1.5, "b": None, "c": "torch.float16", "d": 3, "e": [2]}


def test_sweep_round_trips_to_dataframe(tiny_loaded, tmp_path):
    scenarios = kvbench.grid([6, 10], [3], [1, 2])
    records = run_sweep(tiny_loaded, scenarios, tmp_path / "run", repeats=1, warmup=0)
    lines = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(scenarios) == len(records) == 8
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["scenarios"] == [s.id for s in scenarios] and info["schema_version"] == SCHEMA_VERSION == 2
    df = kvbench.load_results(tmp_path / "run")
    assert len(df) == 8 and set(df["run"]) == {"run"}
    row = df[df["scenario_id"] == scenarios[0].id].iloc[0]
    assert row["positions_per_call"] == records[0]["positions_per_call"]
    assert row["kv_cache_bytes"] == records[0]["kv_cache_bytes"]
    for col, value in records[0].items():
        if isinstance(value, float):
            assert math.isclose(row[col], value), col


def test_a_failing_scenario_keeps_the_finished_records(tiny_loaded, tmp_path, monkeypatch):
    import kvbench.measuring.harness.runner as runner

    real = runner.measure

    def flaky(loaded, scenario, **kw):
        if scenario.prompt_len == 10:
            raise RuntimeError("boom")
        return real(loaded, scenario, **kw)

    monkeypatch.setattr(runner, "measure", flaky)
    records = run_sweep(tiny_loaded, kvbench.grid([6, 10, 12], [2], use_cache=[True]), tmp_path, repeats=1, warmup=0)
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert "boom" in records[1]["error"]
    assert len(kvbench.load_results(tmp_path)) == 3


def test_load_results_errors(tmp_path):
    with pytest.raises(kvbench.UserError, match="no records.jsonl"):
        kvbench.load_results(tmp_path)
    bad = tmp_path / "x.jsonl"
    bad.write_text("{not json}\n")
    with pytest.raises(kvbench.UserError, match="x.jsonl:1"):
        kvbench.load_results(bad)


def test_writer_appends_and_flushes(tmp_path):
    with RunWriter(tmp_path, {"k": 1}) as w:
        w.write({"a": 1})
        assert (tmp_path / "records.jsonl").read_text() == '{"a": 1}\n'  # on disk before close
