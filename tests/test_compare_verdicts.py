"""`kvbench compare` tells change from noise: contention, too few repeats, the machine's own speed, JSON, trends."""

from __future__ import annotations

import json

from synthetic_runs import grid, record, write_run

from kvbench.cli.app import main
from kvbench.report.compare import compare_table
from kvbench.report.report import load_runs

SMALL = dict(prompts=(16, 64), news=(8,), batches=(1,))


def test_a_slower_run_measured_under_contention_is_not_a_regression(tmp_path, capsys):
    base = write_run(tmp_path / "base", grid(**SMALL, repeats=7))
    busy = write_run(tmp_path / "busy", grid(**SMALL, repeats=7, slow=1.5, contention=True,
                                             contention_reason="load average 2.9 on 2 CPUs"))
    assert main(["compare", str(base), str(busy)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "contention: busy: load average 2.9 on 2 CPUs" in out
    table = compare_table(load_runs([base, busy], one_run_per_path=True), "base", ["busy"])
    assert (table["total_s_verdict"] == "can't tell").all() and (table["verdict"] == "can't tell").all()


def test_three_repeats_cannot_tell_a_large_slowdown_and_say_seven_would(tmp_path, capsys):
    base = write_run(tmp_path / "base", grid(**SMALL))
    new = write_run(tmp_path / "new", grid(**SMALL, slow=2.0))
    assert main(["compare", str(base), str(new)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "too few repeats (3 and 3)" in out and "7 each would resolve it" in out


def test_a_machine_that_ran_slower_throughout_is_named_and_cannot_be_told(tmp_path, capsys):
    """The machine 1.3x slower for every scenario of the second run (its reference too), the code unchanged: the
    timings divided by 1.3 are shown, and no verdict is given on them (dividing by a reference left two identical
    runs 0.90x to 1.44x apart: results/noise/drift)."""
    base = write_run(tmp_path / "base", grid(**SMALL, repeats=7, machine_reference_s=0.010))
    new = write_run(tmp_path / "new", grid(**SMALL, repeats=7, slow=1.3, machine_reference_s=0.013))
    assert main(["compare", str(base), str(new)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the machine ran 1.30x slower for new than for the base" in out and "rerun both on a steady" in out
    table = compare_table(load_runs([base, new], one_run_per_path=True), "base", ["new"])
    assert (table["total_s_verdict"] == "can't tell").all() and (abs(table["total_s_ratio"] - 1) < 1e-9).all()


def test_a_steady_machine_whose_reference_wobbles_is_not_a_moved_machine(tmp_path):
    """Identical timings; the machine's reference before each scenario wobbles by up to 12% (as a reference forward
    did within one idle run here: 3.9 to 4.8 ms, results/noise/drift/idle-interleaved) in both runs, differently: no
    scenario is put down to the machine, every row is "no change"."""
    wobble = {"base": (4.3, 4.75, 4.7, 4.25, 4.2, 4.2, 3.95, 4.15), "new": (4.2, 4.3, 4.75, 4.7, 3.95, 4.2, 4.15, 4.5)}
    runs = {}
    for name, refs in wobble.items():
        records = grid(prompts=(16, 64), news=(8, 16), batches=(1,), repeats=7)
        for rec, ref in zip(records, refs):
            rec["machine_reference_s"] = ref / 1000
        runs[name] = write_run(tmp_path / name, records)
    assert main(["compare", str(runs["base"]), str(runs["new"])]) == 0
    table = compare_table(load_runs(list(runs.values()), one_run_per_path=True), "base", ["new"])
    assert (table["total_s_verdict"] == "no change").all(), table[["scenario", "total_s_reason"]].to_string()


def test_json_holds_every_rows_ratio_interval_p_value_and_verdict(tmp_path, capsys):
    base = write_run(tmp_path / "base", grid(**SMALL, repeats=7))
    new = write_run(tmp_path / "new", grid(**SMALL, repeats=7, slow=1.2))
    assert main(["compare", str(base), str(new), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["test"] == "Mann-Whitney U, two-sided" and doc["alpha"] == 0.002 and doc["regressions"] == 4
    total = doc["rows"][0]["metrics"]["total_s"]
    assert total["verdict"] == "regression" and abs(total["ratio"] - 1.2) < 1e-9
    assert total["ci_low"] <= total["ratio"] <= total["ci_high"] and total["p"] < 0.002
    # seven evenly spaced repeats a side, every new one above every base one: the exact two-sided p is 2 / C(14, 7)
    assert abs(total["p"] - 2 / 3432) < 1e-12
    assert doc["rows"][0]["metrics"]["kv_cache_bytes"]["p"] is None


def test_a_bad_format_is_one_line_and_exit_2(tmp_path, capsys):
    base = write_run(tmp_path / "base", grid(**SMALL))
    assert main(["compare", str(base), str(base), "--format", "yaml"]) == 2
    assert "--format: 'yaml' is not table or json" in capsys.readouterr().err


def test_several_runs_show_where_a_significant_change_begins(tmp_path, capsys):
    paths = [write_run(tmp_path / name, grid(**SMALL, repeats=7, slow=slow))
             for name, slow in (("r1", 1.0), ("r2", 1.01), ("r3", 1.3), ("r4", 1.31))]
    assert main(["compare", *map(str, paths)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "P16-N8-B1-cache-dynamic-greedy total_s: 1.01x -> 1.3x -> 1.31x; a significant regression begins at r3" \
        in out


def test_a_scenario_the_machine_ran_slower_for_cannot_be_told(tmp_path, capsys):
    """Two runs of the same code on a machine whose speed moved within the second run: before one scenario its
    reference workload took 1.8x as long, and that scenario's repeats 1.7x. Not a regression: can't tell, naming the
    machine's own change."""
    base_records = grid(**SMALL, repeats=7, machine_reference_s=0.005)
    new_records = grid(**SMALL, repeats=7, machine_reference_s=0.005)
    moved = new_records[0]  # P16, cached
    slowed = grid(prompts=(16,), news=(8,), batches=(1,), repeats=7, slow=1.7)[0]
    moved.update(total_s=slowed["total_s"], total_s_repeats=slowed["total_s_repeats"],
                 machine_reference_s=0.009)
    base, new = write_run(tmp_path / "base", base_records), write_run(tmp_path / "new", new_records)
    assert main(["compare", str(base), str(new)]) == 0
    table = compare_table(load_runs([base, new], one_run_per_path=True), "base", ["new"])
    row = table[table["scenario"].str.startswith(moved["scenario_id"][:12]) & (table["total_s_ratio"] > 1.5)]
    assert len(row) == 1 and row["total_s_verdict"].iloc[0] == "can't tell"
    assert "the machine itself ran 1.80x slower for this scenario in new" in row["total_s_reason"].iloc[0]
    assert (table.drop(row.index)["total_s_verdict"] == "no change").all()


def test_a_slowdown_is_flagged_when_the_machine_held_its_speed(tmp_path):
    """The machine 2% slower before every scenario (within the 5% threshold: divided out), the code 25% slower."""
    base = write_run(tmp_path / "base", grid(**SMALL, repeats=7, machine_reference_s=0.005))
    new = write_run(tmp_path / "new", grid(**SMALL, repeats=7, slow=1.25, machine_reference_s=0.0051))
    assert main(["compare", str(base), str(new)]) == 1
    table = compare_table(load_runs([base, new], one_run_per_path=True), "base", ["new"])
    assert (table["total_s_verdict"] == "regression").all()
    assert abs(table["total_s_ratio"].iloc[0] - 1.25 / 1.02) < 1e-9  # new's timings divided by the machine's 1.02


def wobbling_runs(tmp_path, last: float):
    """Eight scenarios with tight repeats (2% apart), the new run's scenarios apart from the base's by the factors
    below, each significant on its own repeats. By hand: log(new / base) = -0.0726, -0.0408, 0, 0, 0.0392, 0.0677,
    0 and log(last); their median is 0, the absolute deviations' median (0.03922 + 0.04082) / 2 = 0.04002 (the last
    one, large, moves neither), so the wobble is 1.4826 x 0.04002 = 0.05934: ±5.9%."""
    factors = (0.93, 0.96, 1.0, 1.0, 1.04, 1.07, 1.0, last)
    keys = [(p, n, c) for p in (16, 64) for n in (8, 16) for c in (True, False)]
    base = write_run(tmp_path / "base", [record(p, n, 1, c, repeats=9) for p, n, c in keys])
    new = write_run(tmp_path / f"new{last}", [record(p, n, 1, c, repeats=9, slow=f)
                                              for (p, n, c), f in zip(keys, factors)])
    return base, new, record(*keys[-1][:2], 1, keys[-1][2])["scenario_id"]


def test_a_scenario_within_the_run_to_run_wobble_is_no_change(tmp_path):
    """11% slower on repeats 2% apart (Mann-Whitney p < 0.001), but the scenarios of these two runs wobble by
    ±5.9% between them: log(1.11) = 0.1044 is 1.759 standard deviations of that (two-sided p = 0.0786), no change;
    as two identical idle runs here were 8% apart on two scenarios (results/noise)."""
    base, new, last = wobbling_runs(tmp_path, 1.11)
    assert main(["compare", str(base), str(new)]) == 0
    table = compare_table(load_runs([base, new], one_run_per_path=True), "base", ["new1.11"])
    row = table[table["scenario"] == last].iloc[0]
    assert row["total_s_p"] < 0.002 and row["total_s_verdict"] == "no change"
    assert "±5.9%" in row["total_s_reason"] and "(p = 0.079" in row["total_s_reason"]
    assert (table["total_s_verdict"] == "no change").all()


def test_a_scenario_far_beyond_the_run_to_run_wobble_is_a_regression(tmp_path):
    """The same runs with the last scenario 30% slower: 4.4 standard deviations of the ±5.9% wobble, flagged."""
    base, new, last = wobbling_runs(tmp_path, 1.30)
    assert main(["compare", str(base), str(new)]) == 1
    table = compare_table(load_runs([base, new], one_run_per_path=True), "base", ["new1.3"])
    flagged = table[table["total_s_verdict"] == "regression"]
    assert flagged["scenario"].tolist() == [last] and "run-to-run wobble of ±5.9%" in flagged["total_s_reason"].iloc[0]


def test_a_regression_that_slows_the_models_own_forward_is_still_flagged(tmp_path):
    """New code 1.3x slower everywhere, the model's own reference forward too (it runs that code), the machine's
    matrix product unchanged: a regression on every row. Divided by the forward, the code's slowdown would have
    been put down to the machine (can't tell), as it was while compare read the forward."""
    base = write_run(tmp_path / "base", grid(**SMALL, repeats=7, machine_reference_s=0.002,
                                             machine_reference_forward_s=0.005))
    new = write_run(tmp_path / "new", grid(**SMALL, repeats=7, slow=1.3, machine_reference_s=0.002,
                                           machine_reference_forward_s=0.0065))
    assert main(["compare", str(base), str(new)]) == 1
    table = compare_table(load_runs([base, new], one_run_per_path=True), "base", ["new"])
    assert (table["total_s_verdict"] == "regression").all() and (table["machine_scale"] == 1).all()
