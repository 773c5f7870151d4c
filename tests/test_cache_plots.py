"""The report's figures comparing cache implementations (kvbench.report.cache_plots): speedup against the analytic
KV bytes, and latency against stored and peak memory."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from matplotlib.figure import Figure
from synthetic_runs import record, write_run

from kvbench import compat
from kvbench.cli.app import main
from kvbench.report import cache_plots
from kvbench.report.plots import NoData
from kvbench.report.report import FIGURES, write_report


def _records():
    rows = []
    for p in (16, 64):
        for b in (1, 2):
            rows.append(record(p, 8, b, False))
            rows.append(record(p, 8, b, True))
            rows.append(record(p, 8, b, True, cache_implementation="static", slow=0.9))
            quant = record(p, 8, b, True, cache_implementation="quantized", slow=1.3, kv_scale=0.3)
            quant.update(quant_backend="quanto", quant_nbits=4, quant_residual_length=128,
                         kv_cache_bytes_estimate=quant["kv_cache_bytes"],
                         scenario_id=quant["scenario_id"].replace("quantized", "quantized-quanto4"))
            rows.append(quant)
    return pd.DataFrame(rows).assign(run="r")


def test_registered_as_report_figures():
    names = [(f.name, f.module) for f in FIGURES]
    assert ("cache_tradeoff", "cache_plots") in names and ("cache_memory_latency", "cache_plots") in names


def test_tradeoff_table_pairs_each_implementation_with_its_uncached_twin():
    table = cache_plots.cache_tradeoff_table(_records())
    assert len(table) == 2 * 2 * 3  # prompts x batches x implementations
    assert set(table["cache"]) == {"dynamic", "static", "quantized quanto int4"}
    quant = table[table["cache"] == "quantized quanto int4"]
    dynamic = table[table["cache"] == "dynamic"]
    assert (quant["kv_cache_bytes_estimate"].to_numpy() < dynamic["kv_cache_bytes_estimate"].to_numpy()).all()
    assert (quant["speedup"].to_numpy() < dynamic["speedup"].to_numpy()).all()  # slower, as recorded
    assert isinstance(cache_plots.plot_cache_tradeoff(_records()), Figure)


def test_memory_latency_table_puts_stored_peak_and_step_side_by_side():
    table = cache_plots.cache_memory_latency_table(_records())
    assert len(table) == 12 and table["decode_step_s"].notna().all()
    old = cache_plots.cache_memory_latency_display(_records())  # schema-1 CPU records: RSS only, not drawn
    assert "peak_memory_delta_bytes" not in old and "peak_allocated_delta_bytes" not in old
    records = _records()
    records["peak_allocated_delta_bytes"] = records["peak_memory_delta_bytes"]
    shown = cache_plots.cache_memory_latency_display(records)
    assert {"kv_cache_bytes", "peak_allocated_delta_bytes", "decode_step_s", "cache"} <= set(shown.columns)
    assert isinstance(cache_plots.plot_cache_memory_latency(_records()), Figure)


def test_labels_name_the_quantization():
    df = pd.DataFrame([
        {"cache_implementation": "quantized", "quant_backend": "hqq", "quant_nbits": 2.0, "quant_residual_length": 64},
        {"cache_implementation": "quantized", "quant_backend": "fp8", "quant_nbits": float("nan"),
         "quant_residual_length": None},
        {"cache_implementation": "offloaded", "quant_backend": None},
    ])
    assert list(cache_plots.implementation_label(df)) == ["quantized hqq int2 R64", "quantized fp8", "offloaded"]


def test_without_uncached_twins_or_steps_the_figures_say_why():
    cached = _records()[lambda d: d["use_cache"]]
    with pytest.raises(NoData, match="without the cache"):
        cache_plots.cache_tradeoff_table(cached)
    with pytest.raises(NoData, match="decode_step_s"):
        cache_plots.cache_memory_latency_table(cached.assign(decode_step_s=None))


def test_report_of_a_real_run_draws_both(tmp_path, tiny_config_file):
    run = tmp_path / "run"
    # fp8 from transformers 5.21; before, hqq 4-bit (refusing fp8 there is tested in test_caches.py)
    quant, label = (["fp8"], "quantized fp8") if "fp8" in compat.quantized_backends() else \
        (["hqq", "--quant-nbits", "4"], "quantized hqq int4")
    if quant[0] == "hqq":
        pytest.importorskip("hqq")
    assert main(["run", "--model", str(tiny_config_file), "--device", "cpu", "--cache-implementation",
                 "dynamic,quantized", "--quant-backend", *quant, "--prompt-len", "8", "--new-tokens", "3",
                 "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--out", str(run)]) == 0
    written = write_report([run], tmp_path / "report")
    for name in ("cache_tradeoff", "cache_memory_latency"):
        assert (tmp_path / "report" / "figures" / f"{name}.png").exists()
        assert (tmp_path / "report" / "tables" / f"{name}.csv").exists()
    assert written
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "speedup against KV-cache bytes" in markdown and label in markdown


def test_synthetic_run_folder_report(tmp_path):
    records = _records().drop(columns="run").to_dict("records")
    write_run(tmp_path / "run", [json.loads(json.dumps(r)) for r in records])
    write_report([tmp_path / "run"], tmp_path / "report")
    assert (tmp_path / "report" / "figures" / "cache_tradeoff.svg").exists()
