"""Shards partition a grid exactly and the same way in every process; merge joins shard runs into the unsharded run."""

import json
import os
import subprocess
import sys

import pytest
from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.inputs.scenario import grid
from kvbench.scale.merge import merge_runs
from kvbench.scale.shards import parse_shard, scenario_cost, shard, split

GRIDS = {
    "one": grid([16], [8], [1], [True]),
    "quick": grid([16, 64, 256], [32], [1, 4]),
    "wide": grid([8, 32, 128, 512, 2048], [1, 16, 64], [1, 2, 8], [True, False], ["dynamic", "static"],
                 ["greedy", "sample", "beam"]),
    "same-cost": grid([32], [8], [1, 1, 1]) + grid([32], [8], [2]),
}


@pytest.mark.parametrize("name", GRIDS)
@pytest.mark.parametrize("count", range(1, 8))
def test_shards_partition_the_grid(name, count):
    scenarios = GRIDS[name]
    shards = [shard(scenarios, i, count) for i in range(count)]
    ids = [s.id for part in shards for s in part]
    assert sorted(ids) == sorted(s.id for s in scenarios)  # none lost, none doubled
    assert len(ids) == len(set(ids))
    assert split(scenarios, count) == shards
    for part in shards:  # each keeps grid order
        assert [scenarios.index(s) for s in part] == sorted(scenarios.index(s) for s in part)


def twins(scenario):
    """What a scenario shares with the scenarios it is compared with: every axis but the cache's."""
    return (scenario.prompt_len, scenario.new_tokens, scenario.batch_size, scenario.decoding, scenario.num_beams)


def test_shards_are_balanced_by_cost():
    scenarios = GRIDS["wide"]
    loads = [sum(scenario_cost(s) for s in part) for part in split(scenarios, 5)]
    pairs = {}
    for s in scenarios:
        pairs[twins(s)] = pairs.get(twins(s), 0) + scenario_cost(s)
    assert max(loads) - min(loads) <= max(pairs.values())  # the unit dealt is a cached scenario and its twins


@pytest.mark.parametrize("count", [2, 3, 7])
def test_a_scenario_and_its_uncached_twin_share_a_shard(count):
    """Interleaved repeats pair a cached scenario with its uncached twin: a shard boundary between them would leave
    each alone."""
    shard_of = {}
    for i, part in enumerate(split(GRIDS["wide"], count)):
        for s in part:
            assert shard_of.setdefault(twins(s), i) == i, s.id
    assert len(shard_of) == 5 * 3 * 3 * 3  # every prompt, new tokens, batch and decoding (beam: one width)


def test_the_slice_is_the_same_in_another_process():
    code = ("from kvbench.inputs.scenario import grid; from kvbench.scale.shards import shard; "
            "s = grid([8, 32, 128, 512, 2048], [1, 16, 64], [1, 2, 8], [True, False], ['dynamic', 'static'], "
            "['greedy', 'sample', 'beam']); print([x.id for x in shard(s, 2, 7)])")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([x.id for x in shard(GRIDS["wide"], 2, 7)])


@pytest.mark.parametrize("text", ["3", "1/0", "4/4", "-1/2", "a/b", "1/2/3"])
def test_bad_shard_is_refused(text):
    with pytest.raises(UserError, match="--shard"):
        parse_shard(text)


def sweep(config, out, *extra):
    argv = ["run", "--model", str(config), "--prompt-len", "8,16,24", "--new-tokens", "2", "--batch-size", "1,2",
            "--use-cache", "on", "--repeats", "1", "--warmup", "0", "--out", str(out), *extra]
    return main(argv)


def ids(folder):
    return [json.loads(line)["scenario_id"] for line in (folder / "records.jsonl").read_text().splitlines()]


def test_merged_shards_equal_the_unsharded_run(tiny_config_file, tmp_path, capsys):
    assert sweep(tiny_config_file, tmp_path / "whole") == 0
    for i in range(3):
        assert sweep(tiny_config_file, tmp_path / f"s{i}", "--shard", f"{i}/3") == 0
    result = merge_runs([tmp_path / f"s{i}" for i in (2, 0, 1)], tmp_path / "merged")
    assert result["missing"] == [] and result["records"] == 6
    assert ids(tmp_path / "merged") == ids(tmp_path / "whole")  # the grid's order, whatever the shards' order
    info = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert info["scenarios"] == ids(tmp_path / "whole") and len(info["merged_from"]) == 3
    # the shards shuffle their interleaved rounds with one seed (so merge finds no conflict), kept in the merged run
    seeds = {json.loads((tmp_path / f"s{i}" / "run.json").read_text())["order_seed"] for i in range(3)}
    assert len(seeds) == 1 and info["order_seed"] in seeds
    # the CLI: a missing shard is reported, conflicting settings refused with the field named
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "partial")]) == 0
    assert "missing" in capsys.readouterr().out
    run_json = tmp_path / "s2" / "run.json"
    changed = json.loads(run_json.read_text()) | {"repeats": 7}
    run_json.write_text(json.dumps(changed))
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s2"), "--out", str(tmp_path / "bad")]) == 2
    assert "repeats differs" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s2"), "--out", str(tmp_path / "ok"),
                 "--ignore", "repeats"]) == 0


def test_merge_refuses_a_scenario_recorded_twice_and_a_used_out(tiny_config_file, tmp_path):
    assert sweep(tiny_config_file, tmp_path / "a", "--shard", "0/2") == 0
    with pytest.raises(UserError, match="recorded in both"):
        merge_runs([tmp_path / "a", tmp_path / "a"], tmp_path / "m")
    with pytest.raises(UserError, match="is one of the runs"):
        merge_runs([tmp_path / "a"], tmp_path / "a")
    assert sweep(tiny_config_file, tmp_path / "b", "--shard", "1/2") == 0
    with pytest.raises(UserError, match="already holds records"):
        merge_runs([tmp_path / "a"], tmp_path / "b")
    with pytest.raises(UserError, match="not a run folder"):
        merge_runs([tmp_path / "nowhere"], tmp_path / "m2")


def test_an_empty_shard_runs_nothing(tiny_config_file, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_config_file), "--prompt-len", "8", "--new-tokens", "2",
                 "--batch-size", "1", "--use-cache", "on", "--shard", "3/4", "--out", str(tmp_path / "e")]) == 0
    assert "no scenarios" in capsys.readouterr().out
    assert not (tmp_path / "e").exists()
