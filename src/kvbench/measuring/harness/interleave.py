"""Interleaved repeats: the scenarios that are compared with each other take turns, round by round.

A group is the scenarios that differ only in the cache (on or off, its implementation and settings): a cached
scenario and its uncached twin, the cache implementations of one size. Each scenario of a group is prepared and
warmed up first (its inputs and static cache stay allocated until it finishes, so on a GPU a group holds every
member's cache at once); then in each round every scenario runs one timed repeat, in an order shuffled by a
`random.Random` seeded with the run's `order_seed` (recorded, with each round's order). A change in the machine's
load then hits both sides of a comparison alike, and repeat k of two scenarios of one group ran in the same round:
their ratio is a paired measurement. What a switch costs: the other scenarios' generates between two repeats of one
scenario evict its data from the CPU caches (or the GPU's L2), which a grouped order would have kept warm — the same
for every member of a group, since the order is shuffled.

`--order grouped` keeps the order of before: all repeats of a scenario, then the next scenario.

Interrupts and resume work group by group: a group's records are written together once its last round finishes
(a first Ctrl-C stops after the group in flight; a kill or a second Ctrl-C loses only the group in flight, never a
record written before). A resumed run takes the seed its run.json recorded, and measures again, whole, every group
of which only some members are recorded (`todo_after`), so the repeats of a pair always come from the same rounds.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ...inputs import axes
from ...inputs.options import RunOptions
from ...inputs.scenario import Scenario
from ..engines.engine import engine_for
from ..measure import measure_steps, probes
from ..loading.models import LoadedModel
from .resume import split_done

def groups(scenarios: list[Scenario]) -> list[list[Scenario]]:
    """The scenarios that take turns (`axes.twin_groups`: those differing only in the cache), each group in the order
    of its first member; paged batching runs alone (its forward calls run in a thread of its own, without the
    forward probes the others' turns share)."""
    return axes.twin_groups(scenarios, alone=lambda s: not engine_for(s).per_forward)


def whole_groups(scenarios: list[Scenario], todo: list[Scenario]) -> list[Scenario]:
    """Every member of each group (of `scenarios`) with a member in `todo`, groups in the order of their first
    member, each group's members next to each other: what an interleaved sweep measures for `todo`."""
    wanted = {s.id for s in todo}
    return [s for group in groups(scenarios) if any(m.id in wanted for m in group) for s in group]


def todo_after(records: list[dict], scenarios: list[Scenario], order: str, redo_skipped: bool = False
               ) -> tuple[list[dict], list[Scenario]]:
    """(records that stay, scenarios to measure) of a resumed run (`split_done`); interleaved, a group only partly
    recorded is measured again whole, and its members' records do not stay."""
    kept, todo = split_done(records, scenarios, redo_skipped)
    if order != "interleaved":
        return kept, todo
    todo = whole_groups(scenarios, todo)
    again = {s.id for s in todo}
    return [r for r in kept if r.get("scenario_id") not in again], todo


def measure_group(loaded: LoadedModel, group: list[Scenario], repeats: int, warmup: int, seed: int,
                  profile_steps: bool = False, on_error: Callable | None = None,
                  target_ci: float | None = None) -> dict[str, dict]:
    """{scenario id: record} of a group measured in interleaved rounds. A scenario that fails (or runs out of
    memory) leaves the rounds; `on_error(scenario, exc)` gives its record (None: the exception propagates)."""
    rng = random.Random(seed)
    steps, records, rounds = {}, {}, []
    ids = [s.id for s in group]

    def advance(scenario: Scenario) -> None:
        try:
            next(steps[scenario.id])
        except StopIteration as stop:
            records[scenario.id] = stop.value
        except Exception as exc:
            if on_error is None:
                raise
            records[scenario.id] = on_error(scenario, exc)

    with probes(engine_for(group[0]), loaded.model):  # (a group's members share the engine's kind)
        for scenario in group:  # prepared and warmed up, one after the other
            steps[scenario.id] = measure_steps(loaded, scenario, repeats, warmup, profile_steps, target_ci)
            advance(scenario)
        while len(records) < len(group):  # a round: every scenario still measuring runs one timed repeat
            order = [s for s in group if s.id not in records]
            rng.shuffle(order)
            rounds.append([s.id for s in order])
            for scenario in order:
                advance(scenario)
    for scenario in group:
        record = records[scenario.id]
        if record.get("status") == "ok":
            record.update(order="interleaved", order_seed=seed, interleave_group=ids, round_orders=rounds)
    return records


class Measurer:
    """Gives each scenario's record, measuring its whole group when the first member is asked for (interleaved),
    or the scenario alone (grouped). `measure_one(scenario)` measures alone; `on_error` as in `measure_group`."""

    def __init__(self, loaded: LoadedModel, scenarios: list[Scenario], options: RunOptions, measure_one: Callable,
                 on_error: Callable, seed: int | None = None):
        self.loaded, self.options = loaded, options
        self.order = options.order
        seed = options.order_seed if options.order_seed is not None else seed  # (seed: the resumed run's own)
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.measure_one, self.on_error = measure_one, on_error
        self.group_of = {s.id: g for g in groups(scenarios) for s in g}
        self.done: dict[str, dict] = {}

    def __call__(self, scenario: Scenario) -> dict:
        group = self.group_of.get(scenario.id, [scenario])
        if self.order == "grouped" or len(group) < 2:
            record = self.measure_one(scenario)
            if record.get("status") == "ok":
                record["order"] = "grouped"
            return record
        if scenario.id not in self.done:
            opts = self.options
            self.done.update(measure_group(self.loaded, group, opts.repeats, opts.warmup, self.seed,
                                           opts.profile_steps, self.on_error, opts.target_ci))
        return self.done.pop(scenario.id)

    @property
    def pending(self) -> bool:
        """Whether records of a finished group are waiting to be asked for (and written)."""
        return bool(self.done)
