"""The summary table `kvbench run` prints: the axes that vary, the numbers in the columns of the --use-cache
choice, noisy rows marked, and a table that fits 80 and 100 columns without cutting a cell."""

from __future__ import annotations

import pytest
from rich.console import Console
from synthetic_runs import grid, record

from kvbench.cli.app import main
from kvbench.report.summary import NOISY, print_summary, summary_columns
from kvbench.units import fmt_seconds


def rendered(records, width, wide=False) -> str:
    console = Console(width=width, record=True, color_system=None)
    print_summary(records, console, wide=wide)
    return console.export_text()


def columns(records, wide=False) -> dict[str, list[str]]:
    cols, _ = summary_columns(records, wide)
    return {c.header.replace("\n", " "): c.cells for c in cols}


def decoded(rec: dict, decoding: str, beams: int = 1, slow: float = 1.0) -> dict:
    """A copy of a synthetic record as another decoding would have produced it (other latency)."""
    name = f"beam{beams}" if decoding == "beam" else decoding
    return {**rec, "decoding": decoding, "num_beams": beams, "total_s": rec["total_s"] * slow,
            "total_s_repeats": [t * slow for t in rec["total_s_repeats"]],
            "scenario_id": rec["scenario_id"].replace("greedy", name)}


def decodings() -> list[dict]:
    """greedy, sample and 4-beam rows of the same P/N/B/cache: only decoding and beams tell them apart."""
    base = grid(prompts=(16, 64), news=(8,), batches=(1,))
    return [*base, *(decoded(r, "sample", slow=1.1) for r in base), *(decoded(r, "beam", 4, slow=2.0) for r in base)]


def big_sweep() -> list[dict]:
    """Every axis varying, long numbers: the widest table a sweep gives."""
    records = []
    for impl in ("dynamic", "static"):
        records += [r for r in grid(prompts=(16, 1024), news=(8, 256), batches=(1, 16), cache_implementation=impl,
                                    slow=40.0) if r["use_cache"] or impl == "dynamic"]
    return [*records, *(decoded(r, "beam", 4, slow=3.0) for r in records)]


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("sweep", [big_sweep, decodings])
def test_table_fits_the_width_and_cuts_no_cell(width, sweep):
    text = rendered(sweep(), width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    assert "with" in text and "speedup" in text
    # each cell shown is whole: every latency of the speedup column appears as printed
    for cell in columns(sweep())["speedup"]:
        assert cell in text


def test_columns_left_out_for_width_are_named_and_wide_keeps_them():
    narrow = rendered(big_sweep(), 80)
    assert "left out to fit 80 columns:" in narrow and "KV naive" in narrow
    assert "naive" not in narrow.split("left out")[0]
    wide = rendered(big_sweep(), 80, wide=True)
    assert "naive" in wide and "left out" not in wide
    assert "…" not in wide
    assert max(len(line) for line in wide.splitlines()) > 80  # rendered at its own width, not squeezed


def test_only_axes_that_vary_are_columns_and_the_rest_are_named_once():
    records = grid(prompts=(16, 64), news=(8,), batches=(1,))
    cols = columns(records)
    assert "P" in cols and "N" not in cols and "B" not in cols and "decoding" not in cols and "cache" not in cols
    text = rendered(records, 100)
    assert "every row: N=8, B=1, cache=dynamic, decoding=greedy, beams=1" in text
    assert {"P", "N", "B", "cache", "decoding", "beams"} <= set(columns(records, wide=True))


def test_several_decodings_get_their_own_columns_and_rows_are_told_apart():
    cols = columns(decodings())
    assert cols["decoding"].count("beam") == 2 and cols["decoding"].count("sample") == 2
    assert set(cols["beams"]) == {"1", "4"}
    keys = list(zip(cols["P"], cols["decoding"], cols["beams"]))
    assert len(set(keys)) == len(keys) == 6
    # the numbers follow the rows: beam search ran twice as long as greedy
    greedy = [r for r in decodings() if r["use_cache"] and r["decoding"] == "greedy"]
    beam_cells = [c for c, d in zip(cols["with cache"], cols["decoding"]) if d == "beam"]
    assert beam_cells == [fmt_seconds(r["total_s"] * 2.0) for r in greedy]


def test_compile_off_and_on_each_pair_with_the_one_uncached_row():
    """As `kvbench run --cache-implementation static --compile off,on` records it: two cached rows (compile off,
    on) and one uncached row whose compile is null (not applicable), never a value of its own: each cached row
    gets its speedup over that uncached row."""
    cached = record(16, 8, 1, True, cache_implementation="static")
    off = {**cached, "compile": "off", "scenario_id": cached["scenario_id"] + "-compile-off"}
    on = {**cached, "compile": "on", "scenario_id": cached["scenario_id"] + "-compile-on", "total_s": 0.004,
          "total_s_repeats": [0.004] * 3}
    uncached = record(16, 8, 1, False)
    assert uncached["compile"] is None and uncached["cache_implementation"] is None
    cols = columns([off, on, uncached])
    assert cols["compile"] == ["off", "on"]
    assert cols["with cache"] == [fmt_seconds(off["total_s"]), fmt_seconds(0.004)]
    assert cols["without cache"] == [fmt_seconds(uncached["total_s"])] * 2
    assert cols["speedup"] == [f"{uncached['total_s'] / off['total_s']:.2f}x", f"{uncached['total_s'] / 0.004:.2f}x"]


def test_use_cache_off_puts_latency_in_the_without_cache_column():
    records = grid(prompts=(16, 64), news=(8,), batches=(1,), caches=(False,))
    cols = columns(records)
    assert "with cache" not in cols and "speedup" not in cols and "KV measured" not in cols
    assert cols["without cache"] == [fmt_seconds(r["total_s"]) for r in records]
    assert cols["positions"] == [f"{r['positions_processed']:,}" for r in records]
    text = rendered(records, 80)
    assert "without" in text and "with\n" not in text and "speedup" not in text


def test_use_cache_on_shows_only_the_cached_columns():
    records = grid(prompts=(16, 64), news=(8,), batches=(1,), caches=(True,))
    cols = columns(records)
    assert "without cache" not in cols and "speedup" not in cols
    assert cols["with cache"] == [fmt_seconds(r["total_s"]) for r in records]
    assert cols["KV estimate"] == ["exact", "exact"]


def test_noisy_rows_are_marked_with_a_footnote():
    records = grid(prompts=(16, 64), news=(8,), batches=(1,))
    records[3] = record(64, 8, 1, False, spread=0.4)  # the uncached twin of P64 stalled once
    cols = columns(records)
    assert cols["without cache"][1].endswith(NOISY) and cols["speedup"][1].endswith(NOISY)
    assert not cols["with cache"][1].endswith(NOISY) and not cols["speedup"][0].endswith(NOISY)
    text = rendered(records, 100)
    assert "timed repeats more than 10% apart" in text
    assert "timed repeats" not in rendered(grid(prompts=(16, 64), news=(8,), batches=(1,)), 100)


def test_kvbench_run_use_cache_off_end_to_end(tiny_config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_config_file), "--prompt-len", "8,16", "--new-tokens", "3",
                 "--use-cache", "off", "--repeats", "1", "--warmup", "0", "--out", str(out), "--wide"]) == 0
    text = capsys.readouterr().out
    assert "without" in text and "speedup" not in text and "every row" not in text
