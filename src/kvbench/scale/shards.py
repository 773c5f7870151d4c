"""A deterministic 1/N slice of a grid, balanced by estimated cost.

The cost of a scenario is analytic: the positions its forward passes process (all sequences: batch x beams) plus
one unit per forward call (the fixed cost of a step). Scenarios are dealt, costliest first, to the shard with the
least cost so far (ties broken by shard number); the order depends only on the scenarios, so every machine computes
the same slices from the same grid. Each shard keeps its scenarios in grid order.
"""

from __future__ import annotations

import re

from ..errors import UserError
from ..estimate.positions import positions_processed_estimate
from ..inputs.scenario import Scenario


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
    """The shard of each scenario (same order as `scenarios`)."""
    if count < 1:
        raise UserError(f"shard count must be >= 1, got {count}")
    order = sorted(range(len(scenarios)), key=lambda i: (-scenario_cost(scenarios[i]), scenarios[i].id))
    loads, shard_of = [0] * count, [0] * len(scenarios)
    for i in order:
        target = min(range(count), key=lambda s: (loads[s], s))
        shard_of[i] = target
        loads[target] += scenario_cost(scenarios[i])
    return shard_of


def shard(scenarios: list[Scenario], index: int, count: int) -> list[Scenario]:
    """The scenarios of shard `index` of `count`, in grid order."""
    if not 0 <= index < count:
        raise UserError(f"shard {index} of {count}: needs 0 <= index < count")
    return [s for s, k in zip(scenarios, assign(scenarios, count)) if k == index]


def split(scenarios: list[Scenario], count: int) -> list[list[Scenario]]:
    """All `count` shards (some may be empty when there are fewer scenarios than shards)."""
    shard_of = assign(scenarios, count)
    return [[s for s, k in zip(scenarios, shard_of) if k == index] for index in range(count)]
