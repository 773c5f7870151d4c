"""A deterministic 1/N slice of a grid, balanced by estimated cost.

The cost of a scenario is analytic: the positions its forward passes process (all sequences: batch x beams) plus
one unit per forward call (the fixed cost of a step). Scenarios are dealt, costliest first, to the shard with the
least cost so far (ties broken by shard number); the order depends only on the scenarios, so every machine computes
the same slices from the same grid. Each shard keeps its scenarios in grid order.

The unit dealt is an interleave group (`kvbench.inputs.axes.twin_groups`: the scenarios that differ only
in the cache), so a cached scenario and its uncached twin land in the same shard and take turns there. Every shard
of one grid shuffles its rounds with the same seed, derived from the grid (`grid_seed`): the shards' run.json agree
on `order_seed`, and `kvbench merge` joins them like any other setting.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import UserError
from ..estimate.positions import positions_processed_estimate
from ..inputs.scenario import Scenario
from ..inputs.axes import twin_groups


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 0 <= I < N (Slurm: --array=0-(N-1) gives SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UserError(f"--shard: {text!r} is not I/N (e.g. 0/4: the first of 4 shards)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UserError(f"--shard: {text!r} needs 0 <= I < N (shards are numbered 0 to N-1)")
    return index, count


def scenario_cost(scenario: Scenario) -> int:
    """Positions processed by every sequence of the scenario's generate, plus one per forward call."""
    sequences = scenario.batch_size * scenario.num_beams
    positions = positions_processed_estimate(scenario.prompt_len, scenario.new_tokens, scenario.use_cache)
    return sequences * positions + scenario.new_tokens


def assign(scenarios: list[Scenario], count: int) -> list[int]:
    """The shard of each scenario (same order as `scenarios`): whole groups, costliest first, to the least loaded."""
    if count < 1:
        raise UserError(f"shard count must be >= 1, got {count}")
    index = {s.id: i for i, s in enumerate(scenarios)}
    units = sorted(twin_groups(scenarios), key=lambda g: (-sum(map(scenario_cost, g)), g[0].id))
    loads, shard_of = [0] * count, [0] * len(scenarios)
    for unit in units:
        target = min(range(count), key=lambda s: (loads[s], s))
        for scenario in unit:
            shard_of[index[scenario.id]] = target
        loads[target] += sum(map(scenario_cost, unit))
    return shard_of


def grid_seed(ids: list[str]) -> int:
    """The interleaved rounds' seed of every shard of the grid whose scenario ids are `ids` (a SHA-256 of them: the
    same on every machine and in every process)."""
    return int(hashlib.sha256("\n".join(ids).encode()).hexdigest()[:8], 16) % 2**31


def shard(scenarios: list[Scenario], index: int, count: int) -> list[Scenario]:
    """The scenarios of shard `index` of `count`, in grid order."""
    if not 0 <= index < count:
        raise UserError(f"shard {index} of {count}: needs 0 <= index < count")
    return [s for s, k in zip(scenarios, assign(scenarios, count)) if k == index]


def split(scenarios: list[Scenario], count: int) -> list[list[Scenario]]:
    """All `count` shards (some may be empty when there are fewer scenarios than shards)."""
    shard_of = assign(scenarios, count)
    return [[s for s, k in zip(scenarios, shard_of) if k == index] for index in range(count)]
