"""Interleaved repeats: groups, the shuffled rounds and their recorded seed, and records equal in shape to grouped."""

from __future__ import annotations

import random

import pytest
from tiny_models import llama_config

from kvbench.inputs.scenario import Scenario
from kvbench.measuring.harness.interleave import groups
from kvbench.measuring.harness.runner import run_sweep
from kvbench.results.store import load_results


def test_groups_are_the_scenarios_differing_only_in_the_cache():
    a = Scenario(prompt_len=16, new_tokens=4, use_cache=True)
    b = Scenario(prompt_len=16, new_tokens=4, use_cache=False)
    c = Scenario(prompt_len=16, new_tokens=4, use_cache=True, cache_implementation="static")
    d = Scenario(prompt_len=32, new_tokens=4, use_cache=True)
    assert [[s.id for s in g] for g in groups([a, d, b, c])] == [[a.id, b.id, c.id], [d.id]]


@pytest.fixture(scope="module")
def tiny():
    from kvbench.measuring.loading.models import load_model

    return load_model(llama_config())


def sweep(tmp_path, loaded, order, seed=None):
    scenarios = [Scenario(prompt_len=p, new_tokens=4, use_cache=c) for p in (8, 16) for c in (True, False)]
    run_sweep(loaded, scenarios, tmp_path / order, repeats=3, warmup=1, order=order, order_seed=seed)
    return load_results(tmp_path / order)


def test_interleaved_rounds_follow_the_recorded_seed(tmp_path, tiny):
    df = sweep(tmp_path, tiny, "interleaved", seed=1234)
    assert (df["order"] == "interleaved").all() and (df["order_seed"] == 1234).all()
    first = df[df["prompt_len"] == 8].iloc[0]
    ids = list(first["interleave_group"])
    assert sorted(ids) == ["P8-N4-B1-cache-dynamic-greedy", "P8-N4-B1-nocache-greedy"]
    # the rounds are the recorded seed's shuffles, round after round
    rng = random.Random(1234)
    expected = []
    for _ in range(3):
        order = list(ids)
        rng.shuffle(order)
        expected.append(order)
    assert [list(r) for r in first["round_orders"]] == expected
    assert (df["total_s_n"] == 3).all() and df["total_s_repeats"].map(len).eq(3).all()


def test_grouped_order_is_recorded_and_has_the_same_fields(tmp_path, tiny):
    grouped = sweep(tmp_path, tiny, "grouped")
    interleaved = sweep(tmp_path, tiny, "interleaved")
    assert (grouped["order"] == "grouped").all()
    missing = set(grouped.columns) - set(interleaved.columns)
    assert not missing
    assert list(grouped["scenario_id"]) == list(interleaved["scenario_id"])  # written in the grid's order


def test_a_bad_order_is_one_line_and_exit_2(tmp_path, capsys):
    from kvbench.cli.app import main

    assert main(["run", "--order", "shuffled", "--out", str(tmp_path / "x")]) == 2
    assert "--order: 'shuffled' is not one of interleaved, grouped" in capsys.readouterr().err


def test_repeats_auto_stops_and_says_why(tmp_path, tiny):
    scenarios = [Scenario(prompt_len=8, new_tokens=2, use_cache=c) for c in (True, False)]
    run_sweep(tiny, scenarios, tmp_path / "auto", repeats=8, warmup=0, target_ci=0.9)
    df = load_results(tmp_path / "auto")
    # a 90% target is met once the interval reaches 95% (6 repeats) unless the machine is wildly noisy; never past 8
    assert df["total_s_n"].between(6, 8).all()
    assert df["repeats_stop"].str.startswith(("interval within ±90%", "the cap of 8")).all()


def test_bad_repeats_and_target_are_one_line_and_exit_2(tmp_path, capsys):
    from kvbench.cli.app import main

    assert main(["run", "--repeats", "many", "--out", str(tmp_path / "x")]) == 2
    assert "Invalid value for '--repeats': Input should be a valid integer or auto, not 'many'" in capsys.readouterr().err
    assert main(["run", "--repeats", "auto", "--target-ci", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--target-ci: '0' is not a percentage" in capsys.readouterr().err
