"""`kvbench report` and the figure functions, on synthetic run folders and one real tiny run."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from matplotlib.figure import Figure
from synthetic_runs import GPU_ENV, grid, record, write_run

from kvbench import load_results
from kvbench.cli.app import main
from kvbench.report import plots
from kvbench.report.report import environment_differences, key_numbers, load_runs

FIGURE_NAMES = ["speedup", "decode_steps", "positions", "memory", "bandwidth", "cache_tradeoff", "cache_memory_latency"]
MARKUP = '<script>alert("x")</script><img src="http://example.invalid/x.png">'


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "run-cpu", grid())


@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    """The report of a synthetic CPU run, written where `kvbench report RUN` puts it by default."""
    run = write_run(tmp_path_factory.mktemp("default") / "run-cpu", grid())
    assert main(["report", str(run)]) == 0
    return run / "report"


def report(tmp_path, *runs, name="out"):
    out = tmp_path / name
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    return out


def test_report_writes_html_markdown_figures_and_tables(default_report):
    out = default_report
    html = (out / "report.html").read_text()
    for name in FIGURE_NAMES:
        assert (out / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert b"<svg" in (out / "figures" / f"{name}.svg").read_bytes()[:2000]
        assert (out / "tables" / f"{name}.csv").is_file()
        assert f'data-figure="{name}"' in html
    # self-contained: every image is a data URI, nothing is fetched, no script at all
    assert re.findall(r'src="([a-z]+):', html) == ["data"] * len(FIGURE_NAMES)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "<link" not in html.replace('<link rel="icon" href="data:,">', "")
    md = (out / "report.md").read_text()
    for name in FIGURE_NAMES:
        assert f"(figures/{name}.png)" in md
    assert (out / "tables" / "environment.csv").is_file()
    # the tables hold the records' numbers
    speedup = pd.read_csv(out / "tables" / "speedup.csv")
    assert len(speedup) == 8
    # P16 N8 B1 by hand (synthetic_runs.record): cached 1.16 ms + 7 x 1.01 ms = 8.23 ms; uncached 1.16 ms +
    # 7 x 1 ms + 0.04 ms x (17 + ... + 23 = 140) = 13.76 ms; speedup 13.76 / 8.23
    row = speedup.set_index("scenario_id").loc["P16-N8-B1-cache-dynamic-greedy"]
    assert row["total_s"] == pytest.approx(0.00823) and row["total_s_nocache"] == pytest.approx(0.01376)
    assert row["speedup"] == pytest.approx(13.76 / 8.23)


def test_report_is_byte_identical_for_the_same_input(tmp_path, default_report):
    first, second = default_report, report(tmp_path, default_report.parent, name="b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 2 + 2 * len(FIGURE_NAMES) + len(FIGURE_NAMES) + 1
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_markup_in_data_reaches_html_and_markdown_as_text(tmp_path):
    run = write_run(tmp_path / "run<b>bold</b>", grid(prompts=(16,), news=(8,), batches=(1,), model=MARKUP))
    out = report(tmp_path, run)
    html = (out / "report.html").read_text()
    assert "<script>alert" not in html and "<b>bold" not in html and 'src="http' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "run&lt;b&gt;bold&lt;/b&gt;" in html
    md = (out / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md


def test_naive_formula_error_is_shown_where_grouped_query_attention_makes_it_wrong(tmp_path, run):
    df = load_results(run)
    memory = plots.memory_table(df)
    assert (memory["estimate_over_measured"] == 1).all()
    assert (memory["naive_over_measured"] == 2).all()  # 8 attention heads, 4 key/value heads
    numbers = key_numbers(df).set_index("quantity")["run-cpu"]
    assert numbers["naive formula vs measured"] == "2.00x"
    assert numbers["exact estimate vs measured"] == "exact to the byte"


def test_estimate_error_is_reported_when_the_cache_holds_other_bytes(tmp_path):
    run = write_run(tmp_path / "r", grid(prompts=(16,), news=(8,), batches=(1,), kv_scale=0.5))
    numbers = key_numbers(load_results(run)).set_index("quantity")["r"]
    assert numbers["exact estimate vs measured"] == "off by up to 100.0%"
    assert numbers["naive formula vs measured"] == "4.00x"


def test_spread_above_ten_percent_earns_a_warning_beside_timing_figures(tmp_path):
    noisy = grid(prompts=(16,), news=(8,), batches=(1,))
    noisy[1] = record(16, 8, 1, False, spread=0.3)  # the uncached twin is noisy
    out = report(tmp_path, write_run(tmp_path / "noisy", noisy))
    html = (out / "report.html").read_text()
    speedup = html[html.index('id="speedup"'):html.index('id="decode_steps"')]
    assert "noisy: P16-N8-B1-nocache-greedy: repeats spread 30%" in speedup
    memory = html[html.index('id="memory"'):html.index('id="bandwidth"')]
    assert 'class="warning"' not in memory  # bytes do not depend on timing
    quiet = report(tmp_path, write_run(tmp_path / "quiet", grid(prompts=(16,), news=(8,), batches=(1,))), name="q")
    assert 'class="warning"' not in (quiet / "report.html").read_text()


def test_records_without_some_columns_degrade_to_notes(tmp_path):
    """Like pytest-benchmark records: no per-step latencies, no cache bytes, no bandwidth."""
    records = grid(prompts=(16, 32), news=(8,), batches=(1,))
    for rec in records:
        for key in ("decode_steps_s", "kv_cache_bytes", "achieved_bandwidth_gbps", "status", "total_s_repeats"):
            rec.pop(key)
    out = report(tmp_path, write_run(tmp_path / "bench", records))
    html = (out / "report.html").read_text()
    assert "No figure: per-step latency: the records have no decode_steps_s." in html
    assert "No figure: memory: the records have no kv_cache_bytes." in html
    assert "No figure: bandwidth: the records have no achieved_bandwidth_gbps." in html
    # the trade-off needs only the analytic bytes; latency against memory the measured ones
    assert sorted(p.stem for p in (out / "figures").glob("*.png")) == ["cache_tradeoff", "positions", "speedup"]


def test_stale_figures_of_an_earlier_report_are_removed(tmp_path):
    out = report(tmp_path, write_run(tmp_path / "both", grid(prompts=(16,), news=(8,), batches=(1,))))
    records = grid(prompts=(16,), news=(8,), batches=(1,), caches=(True,))
    assert main(["report", str(write_run(tmp_path / "cached-only", records)), "--out", str(out)]) == 0
    assert not (out / "figures" / "speedup.png").exists()
    assert "no scenario ran without the cache" in (out / "report.html").read_text()


def test_bandwidth_against_the_gpu_peak_and_note_without_one(tmp_path, run, default_report):
    gpu = write_run(tmp_path / "gpu", grid(env=GPU_ENV))
    table = plots.bandwidth_table(load_results(gpu))
    assert (table["env_gpu_bandwidth_gbps"] == 3352.3).all()
    assert plots.bandwidth_note(table) is None
    cpu_note = plots.bandwidth_note(plots.bandwidth_table(load_results(run)))
    assert cpu_note.startswith("No peak memory bandwidth is known")
    html = (default_report / "report.html").read_text()
    assert "No peak memory bandwidth is known" in html


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_plot_functions_return_figures_and_raise_nodata(run, name):
    from kvbench.report.report import FIGURES

    spec = {f.name: f for f in FIGURES}[name]  # drawn by plots, or by the module the spec names
    df = load_results(run)
    fig = spec.call(f"plot_{name}", df)
    assert isinstance(fig, Figure) and fig.axes
    with pytest.raises(plots.NoData):
        spec.call(f"plot_{name}", df[["run", "prompt_len"]])


def test_decode_steps_table_positions_and_longest_scenario(run):
    steps = plots.decode_steps_table(load_results(run))
    assert set(steps["new_tokens"]) == {16}  # N=8 lies under N=16
    first = steps[(steps["prompt_len"] == 64) & (steps["step"] == 0)]
    assert set(first["position"]) == {64}
    summary = plots.decode_steps_summary(load_results(run))
    assert (summary["steps"] == 15).all()
    uncached = summary[~summary["use_cache"]]
    assert (uncached["last_over_first"] > 1).all()


def test_several_runs_with_the_same_folder_name_stay_apart(tmp_path):
    a = write_run(tmp_path / "a" / "run", grid(prompts=(16,), news=(8,), batches=(1,)))
    b = write_run(tmp_path / "b" / "run", grid(prompts=(16,), news=(8,), batches=(1,), env=GPU_ENV))
    df = load_runs([a, b])
    assert sorted(df["run"].unique()) == sorted([str(a), str(b)])
    diff = environment_differences(df)
    assert "env_device_name" in set(diff["field"])
    out = report(tmp_path, a, b)
    assert "Fields that differ between the runs: device, " in (out / "report.html").read_text()


def test_report_user_errors_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_report_of_a_real_tiny_run(tmp_path):
    """End to end on records the harness really wrote: every figure drawn, positions exactly as estimated."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 64,
    }))
    run = tmp_path / "tiny-run"
    assert main(["run", "--model", str(config), "--out", str(run), "--prompt-len", "4,8", "--new-tokens", "3",
                 "--batch-size", "1", "--repeats", "1", "--warmup", "0"]) == 0
    out = report(tmp_path, run)
    # a new run also has the allocated peak and its estimate: the parity figure
    assert sorted(p.stem for p in (out / "figures").glob("*.png")) == sorted(FIGURE_NAMES + ["peak_parity"])
    positions = pd.read_csv(out / "tables" / "positions.csv")
    assert (positions["positions_processed"] == positions["positions_processed_estimate"]).all()
    memory = pd.read_csv(out / "tables" / "memory.csv")
    assert (memory["naive_over_measured"] == 2).all()


def test_report_and_compare_read_pytest_benchmark_json(tmp_path):
    pytest.importorskip("kvbench.results.benchjson", reason="kvbench.results.benchjson (pytest-benchmark JSON reader) not here")
    from synthetic_runs import write_benchmark_json

    # 7 repeats a side: enough for compare's test to call the 1.5x a regression (p < 0.002)
    base = write_benchmark_json(tmp_path / "base.json", grid(prompts=(16, 64), news=(8,), batches=(1,), repeats=7))
    new = write_benchmark_json(tmp_path / "new.json", grid(prompts=(16, 64), news=(8,), batches=(1,), slow=1.5,
                                                           repeats=7))
    assert main(["report", str(base)]) == 0
    out = tmp_path / "base-report"
    # synthetic records without an allocated peak: no parity figure
    assert sorted(p.stem for p in (out / "figures").glob("*.png")) == sorted(FIGURE_NAMES)
    speedup = pd.read_csv(out / "tables" / "speedup.csv")
    assert len(speedup) == 2 and (speedup["run"] == "base").all()
    assert main(["compare", str(base), str(new)]) == 1
    assert main(["compare", str(base), str(base)]) == 0


def test_failed_scenarios_and_missing_estimates_are_reported_not_fatal(tmp_path):
    records = grid(prompts=(16, 64), news=(8,), batches=(1,))
    records[0]["kv_cache_bytes_estimate"] = None  # an architecture kvbench cannot predict
    oom = {k: records[3][k] for k in ("schema_version", "model", "device", "dtype", "scenario_id", "prompt_len",
                                      "new_tokens", "batch_size", "use_cache", "cache_implementation", "decoding",
                                      "num_beams")}
    records[3] = {**oom, "status": "oom", "error": "CUDA out of memory. Tried to allocate 2.00 GiB"}
    out = report(tmp_path, write_run(tmp_path / "partial", records))
    html = (out / "report.html").read_text()
    assert "off by up to 0.0% (1 without estimate)" in html and "3 ok of 4, 1 oom" in html
    assert "Scenarios that did not run" in html and "CUDA out of memory" in html
    assert pd.read_csv(out / "tables" / "failures.csv")["status"].tolist() == ["oom"]
    assert len(pd.read_csv(out / "tables" / "speedup.csv")) == 1  # the pair with its oom twin is left out


def test_header_and_at_a_glance_name_model_device_dtype_and_version(default_report):
    md = (default_report / "report.md").read_text()
    header = ("**model:** tiny-llama (llama, config.json (random weights)) · **device:** cpu (Test CPU) · "
              "**dtype:** float32 · **kvbench:** 0.1.0")
    assert md.splitlines()[2] == header
    html = (default_report / "report.html").read_text()
    for field, value in [("model", "tiny-llama (llama, config.json (random weights))"), ("device", "cpu (Test CPU)"),
                         ("dtype", "float32"), ("kvbench", "0.1.0")]:
        assert f'<dd data-field="{field}">{value}</dd>' in html
    glance = md[md.index("## At a glance"):md.index("## 1.")]
    for row in ["| model | tiny-llama (llama, config.json (random weights)) |", "| device | cpu (Test CPU) |",
                "| dtype | float32 |", "| kvbench | 0.1.0 |"]:
        assert row in glance


def test_kv_bytes_are_shown_beside_the_weights_and_the_device_memory(tmp_path, run):
    """Largest cache 647,168 B (P64, 79 positions, batch 2); weights 13,000,000 B; 64 GiB of RAM or an 85 GB GPU."""
    numbers = key_numbers(load_results(run)).set_index("quantity")["run-cpu"]
    assert numbers["largest KV cache measured"] == "632.0 KiB (P64-N16-B2-cache-dynamic-greedy)"
    assert numbers["weights"] == "12.4 MiB (the largest KV cache is 5% of that)"
    assert numbers["device memory"] == "64.0 GiB of RAM (weights 0.019%, largest KV cache 0.00094%)"
    gpu = write_run(tmp_path / "gpu", grid(env=GPU_ENV))
    numbers = key_numbers(load_results(gpu)).set_index("quantity")["gpu"]
    assert numbers["device memory"] == "79.2 GiB of GPU memory (weights 0.015%, largest KV cache 0.00076%)"
    old = [{k: v for k, v in r.items() if k != "env_ram_bytes"} for r in grid()]
    numbers = key_numbers(load_results(write_run(tmp_path / "old", old))).set_index("quantity")["old"]
    assert numbers["device memory"] == "not recorded (the records have no env_ram_bytes)"


def test_the_header_names_each_run_where_they_differ(tmp_path):
    cpu = write_run(tmp_path / "cpu-run", grid(prompts=(16,), news=(8,), batches=(1,)))
    gpu = write_run(tmp_path / "gpu-run", grid(prompts=(16,), news=(8,), batches=(1,), env=GPU_ENV, dtype="float16"))
    md = (report(tmp_path, cpu, gpu) / "report.md").read_text()
    assert ("**device:** cpu-run: cpu (Test CPU); gpu-run: cuda (NVIDIA H100 80GB HBM3) · "
            "**dtype:** cpu-run: float32; gpu-run: float16 · **kvbench:** 0.1.0") in md.splitlines()[2]


def test_report_is_byte_identical_when_regenerated_in_other_processes(tmp_path, default_report):
    """Two fresh processes (other hash seeds, so no set or dict order can leak) write the same bytes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import kvbench

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(kvbench.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        subprocess.run([sys.executable, "-m", "kvbench", "report", str(default_report.parent), "--out", str(out)],
                       check=True, env={**env, "PYTHONHASHSEED": seed}, capture_output=True)
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert len(files) == 2 + 2 * len(FIGURE_NAMES) + len(FIGURE_NAMES) + 1
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
        if rel.suffix in (".png", ".svg"):  # and the same figures as this process drew
            assert (outs[0] / rel).read_bytes() == (default_report / rel).read_bytes(), rel


def test_saved_figures_have_their_panels_on_a_fixed_grid(default_report):
    """The layout is frozen on a 1/8-point grid before saving: no solver's last bits reach the SVG, whose six
    decimals otherwise flip between machines (a spine at 32.6401575 pt written as ...157 or ...158)."""
    for name in FIGURE_NAMES:
        svg = (default_report / "figures" / f"{name}.svg").read_text()
        panels = re.findall(r'<g id="axes_\d+">\s*<g id="patch_\d+">\s*<path d="([^"]+)"', svg)
        assert panels, name
        for path in panels:  # a multiple of 1/8 pt from the figure's edge: three decimals at most, never six
            decimals = [len(v.partition(".")[2]) for v in re.findall(r"-?\d+\.?\d*", path)]
            assert decimals and max(decimals) <= 4, (name, path)
