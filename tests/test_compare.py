"""`kvbench compare`: matching scenarios across runs, ratios, verdicts, exit codes, pages."""

from __future__ import annotations

import pandas as pd
import pytest
from synthetic_runs import ENV, GPU_ENV, grid, write_run

from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.report.compare import (
    PEAK_MEMORY_FLOOR_BYTES,
    compare_table,
    parse_threshold,
)
from kvbench.report.report import load_runs

SMALL = dict(prompts=(16, 64), news=(8,), batches=(1,), repeats=7)  # 7: enough for p < 0.002


def runs(tmp_path, base_kwargs=None, new_kwargs=None):
    base = write_run(tmp_path / "base", grid(**SMALL, **(base_kwargs or {})))
    new = write_run(tmp_path / "new", grid(**SMALL, **(new_kwargs or {})))
    return base, new


def table_of(base, new, threshold=0.05):
    df = load_runs([base, new], one_run_per_path=True)
    return compare_table(df, "base", ["new"], threshold)


def test_identical_runs_match_every_scenario_and_pass(tmp_path, capsys):
    base, new = runs(tmp_path)
    assert main(["compare", str(base), str(new)]) == 0
    table = table_of(base, new)
    assert len(table) == 4
    assert (table["total_s_ratio"] == 1).all() and (table["verdict"] == "no change").all()
    assert set(table["scenario"]) == {"P16-N8-B1-cache-dynamic-greedy", "P16-N8-B1-nocache-greedy",
                                      "P64-N8-B1-cache-dynamic-greedy", "P64-N8-B1-nocache-greedy"}
    assert "environment differs" not in capsys.readouterr().out


def test_slower_new_run_is_a_regression_and_exits_1(tmp_path, capsys):
    base, new = runs(tmp_path, new_kwargs={"slow": 1.2})
    assert main(["compare", str(base), str(new)]) == 1
    table = table_of(base, new)
    assert table["total_s_ratio"].round(6).eq(1.2).all()
    assert (table["total_s_verdict"] == "regression").all() and (table["verdict"] == "regression").all()
    assert "regression" in capsys.readouterr().out
    # within a wider threshold it passes; without gating latency it passes too
    assert main(["compare", str(base), str(new), "--threshold", "25%"]) == 0
    assert main(["compare", str(base), str(new), "--gate", "kv_cache_bytes"]) == 0


def test_faster_new_run_is_an_improvement_and_exits_0(tmp_path):
    base, new = runs(tmp_path, new_kwargs={"slow": 0.8})
    assert main(["compare", str(base), str(new)]) == 0
    assert (table_of(base, new)["verdict"] == "improvement").all()


def test_bigger_kv_cache_is_a_memory_regression(tmp_path):
    base, new = runs(tmp_path, new_kwargs={"kv_scale": 1.5})
    assert main(["compare", str(base), str(new)]) == 1
    table = table_of(base, new)
    cached = table[table["scenario"].str.contains("-cache-")]
    assert (cached["kv_cache_bytes_ratio"] == 1.5).all() and (cached["verdict"] == "regression").all()
    assert table.loc[~table.index.isin(cached.index), "kv_cache_bytes_ratio"].isna().all()  # 0 bytes: no ratio


def test_peak_memory_changes_below_the_floor_are_ignored(tmp_path):
    base, new = runs(tmp_path, new_kwargs={"peak_extra_bytes": PEAK_MEMORY_FLOOR_BYTES // 2})
    assert main(["compare", str(base), str(new), "--gate", "total_s,peak_rss_delta_bytes"]) == 0
    table = table_of(base, new)
    assert (table["peak_rss_delta_bytes_ratio"] > 1.05).any()
    assert (table["peak_rss_delta_bytes_verdict"] == "no change").all()
    base2, new2 = runs(tmp_path / "big", new_kwargs={"peak_extra_bytes": 4 * PEAK_MEMORY_FLOOR_BYTES})
    assert main(["compare", str(base2), str(new2), "--gate", "total_s,peak_rss_delta_bytes"]) == 1


def test_rss_peaks_gate_only_when_asked(tmp_path, capsys):
    """On a CPU the peak is the process's RSS: a 4 MiB swing is shown, marked, and fails only under --gate."""
    base, new = runs(tmp_path, new_kwargs={"peak_extra_bytes": 4 * PEAK_MEMORY_FLOOR_BYTES})
    assert main(["compare", str(base), str(new)]) == 0
    printed = capsys.readouterr().out
    assert "peak_rss_delta_bytes" in printed and "pass: no gated metric (total_s, kv_cache_bytes)" in printed
    table = table_of(base, new)
    assert (table["peak_rss_delta_bytes_verdict"] == "regression").all() and (table["verdict"] == "no change").all()
    assert "peak_allocated_delta_bytes_ratio" not in table  # no CUDA allocator in a CPU run
    assert main(["compare", str(base), str(new), "--gate", "peak_rss_delta_bytes"]) == 1
    assert "FAIL: 4 of 4 matched scenario(s) regressed beyond ±5%: peak_rss_delta_bytes in 4" in capsys.readouterr().out


def test_cuda_allocator_peaks_gate_by_default(tmp_path, capsys):
    base, new = runs(tmp_path, base_kwargs={"env": GPU_ENV},
                     new_kwargs={"env": GPU_ENV, "peak_extra_bytes": 4 * PEAK_MEMORY_FLOOR_BYTES})
    assert main(["compare", str(base), str(new)]) == 1
    printed = capsys.readouterr().out
    assert "peak_allocated_delta_bytes in 4 scenario(s)" in printed and "peak_rss" not in printed
    table = table_of(base, new)
    assert (table["regressed"] == "peak_allocated_delta_bytes").all()


def test_default_gate_is_latency_and_exact_memory():
    from kvbench.cli.report import GATE_DEFAULT, GATE_METRICS
    from kvbench.report.compare import GATED, METRICS

    assert GATED == ("total_s", "kv_cache_bytes", "peak_allocated_delta_bytes")
    assert GATE_DEFAULT == ",".join(GATED) and GATE_METRICS == ", ".join(METRICS)


def md_column(md: str, column: str) -> list[str]:
    """The cells of one column of the first Markdown table that has it."""
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    head = next(i for i, line in enumerate(lines) if f" {column} " in line)
    index = [c.strip() for c in lines[head].strip("|").split("|")].index(column)
    rows = []
    for line in lines[head + 1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(lines[head].strip("|").split("|")):
            break
        rows.append(cells[index])
    return rows


def html_column(html: str, column: str) -> list[str]:
    import re

    table = next(t for t in re.findall(r"<table.*?</table>", html, re.S) if f"<th>{column}</th>" in t)
    heads = re.findall(r"<th>(.*?)</th>", table)
    return [re.findall(r"<td>(.*?)</td>", row)[heads.index(column)] for row in re.findall(r"<tr><td>.*?</tr>", table)]


def test_ratios_are_ratios_in_every_format(tmp_path, capsys):
    """A 12.62x slowdown and a cache at 0.056 of its size: shown as ratios, never as seconds or bytes."""
    base, new = runs(tmp_path, new_kwargs={"slow": 12.62, "kv_scale": 0.056})
    out = tmp_path / "cmp"
    assert main(["compare", str(base), str(new), "--out", str(out)]) == 1
    terminal = capsys.readouterr().out
    md, html = (out / "compare.md").read_text(), (out / "compare.html").read_text()
    csv = pd.read_csv(out / "tables" / "compare.csv")
    assert csv["total_s_ratio"].round(6).eq(12.62).all()
    assert csv["kv_cache_bytes_ratio"].dropna().round(3).eq(0.056).all()
    for cells in (md_column(md, "total_s_ratio"), html_column(html, "total_s_ratio")):
        assert cells == ["12.6x"] * 4
    for cells in (md_column(md, "kv_cache_bytes_ratio"), html_column(html, "kv_cache_bytes_ratio")):
        assert sorted(cells) == ["-", "-", "0.056x", "0.056x"]
    assert md_column(md, "total_s_base")[0].endswith(" ms")  # the figures themselves keep their units
    rows = [line for line in terminal.splitlines() if "P16-N8-B1-cache" in line and "│" in line]
    assert len(rows) == 1 and rows[0].count("12.6x") == 3 and "0.056x" in rows[0]  # total, TTFT, step; KV
    assert "new: P16-N8-B1-nocache-greedy: total_s 12.6x" in terminal
    for text in (md, html, terminal):
        assert "12.62 s" not in text and "12.6 s" not in text


def test_the_verdict_names_each_failed_metric_and_scenario(tmp_path, capsys):
    base, new = runs(tmp_path, new_kwargs={"slow": 1.2, "kv_scale": 1.5})
    out = tmp_path / "cmp"
    assert main(["compare", str(base), str(new), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    cached = "new: P16-N8-B1-cache-dynamic-greedy: total_s 1.200x, kv_cache_bytes 1.500x"
    uncached = "new: P16-N8-B1-nocache-greedy: total_s 1.200x"
    verdict = ("FAIL: 4 of 4 matched scenario(s) regressed beyond ±5%: total_s in 4 scenario(s), "
               "kv_cache_bytes in 2 scenario(s)")
    assert cached in printed and uncached in printed
    assert printed.strip().splitlines()[-2].startswith("FAIL: 4 of 4")  # the last line before "comparison: ..."
    assert " ".join(printed.split()).count(verdict) == 1
    for page in ("compare.md", "compare.html"):
        text = (out / page).read_text()
        assert cached in text and uncached in text
        assert verdict in text
    assert main(["compare", str(base), str(new), "--gate", "kv_cache_bytes"]) == 1
    printed = capsys.readouterr().out
    assert "new: P16-N8-B1-cache-dynamic-greedy: kv_cache_bytes 1.500x" in printed
    assert "FAIL: 2 of 4 matched scenario(s) regressed beyond ±5%: kv_cache_bytes in 2 scenario(s)" in printed


def test_runs_differing_in_dtype_are_matched_across_it_and_the_environment_is_named(tmp_path, capsys):
    env = {**ENV, "env_torch": "2.11.0+cu130"}
    base, new = runs(tmp_path, base_kwargs={"dtype": "float16"}, new_kwargs={"dtype": "bfloat16", "env": env})
    out = tmp_path / "cmp"
    assert main(["compare", str(base), str(new), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "env_torch: 2.13.0+cpu vs 2.11.0+cu130" in printed
    assert len(table_of(base, new)) == 4
    html = (out / "compare.html").read_text()
    assert "Matched across: dtype (float16 vs bfloat16)." in html
    assert "env_torch" in (out / "tables" / "environment_differences.csv").read_text()


def test_cache_implementations_compare_side_by_side(tmp_path):
    base, new = runs(tmp_path, new_kwargs={"cache_implementation": "static"})
    table = table_of(base, new)
    assert len(table) == 4  # cached rows matched across dynamic/static, uncached rows with each other
    assert "cache_implementation" not in table.columns


def test_unmatched_scenarios_are_named_and_nothing_matching_is_an_error(tmp_path, capsys):
    base = write_run(tmp_path / "base", grid(**SMALL))
    new = write_run(tmp_path / "new", grid(prompts=(16, 128), news=(8,), batches=(1,)))
    assert main(["compare", str(base), str(new)]) == 0
    out = capsys.readouterr().out
    assert "base: no counterpart in new for P64-N8-B1-cache-dynamic-greedy, P64-N8-B1-nocache-greedy" in out
    other = write_run(tmp_path / "other", grid(prompts=(32,), news=(4,), batches=(1,)))
    assert main(["compare", str(base), str(other)]) == 2
    assert "no scenario of other matches one of base" in capsys.readouterr().err


def test_same_folder_name_in_two_places_and_several_new_runs(tmp_path):
    a = write_run(tmp_path / "a" / "run", grid(**SMALL))
    b = write_run(tmp_path / "b" / "run", grid(**SMALL, slow=1.5))
    c = write_run(tmp_path / "c" / "run", grid(**SMALL, slow=0.5))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), str(c), "--out", str(out)]) == 1
    table = pd.read_csv(out / "tables" / "compare.csv")
    assert set(table["new_run"]) == {str(b), str(c)}
    assert set(table.loc[table["new_run"] == str(b), "verdict"]) == {"regression"}
    assert set(table.loc[table["new_run"] == str(c), "verdict"]) == {"improvement"}
    for suffix in ("png", "svg"):
        assert (out / "figures" / f"compare.{suffix}").stat().st_size > 1000


def test_compare_page_escapes_markup_and_embeds_its_figure(tmp_path):
    base, new = runs(tmp_path, base_kwargs={"model": "<i>m</i>"}, new_kwargs={"model": "<script>x</script>"})
    out = tmp_path / "cmp"
    main(["compare", str(base), str(new), "--out", str(out)])
    html = (out / "compare.html").read_text()
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html and "<i>m" not in html
    assert html.count('src="data:image/svg+xml;base64,') == 1


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("0.05", 0.05), ("12.5%", 0.125), ("0", 0.0)])
def test_parse_threshold(text, value):
    assert parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["5", "abc", "-5%", "2000%"])
def test_bad_threshold_is_a_user_error(text):
    with pytest.raises(UserError, match="--threshold"):
        parse_threshold(text)


def test_bad_gate_and_threshold_exit_2(tmp_path, capsys):
    base, new = runs(tmp_path)
    assert main(["compare", str(base), str(new), "--threshold", "5"]) == 2
    assert "write 5% for 5 percent" in capsys.readouterr().err
    assert main(["compare", str(base), str(new), "--gate", "speed"]) == 2
    assert "--gate: 'speed' is not one of" in capsys.readouterr().err
