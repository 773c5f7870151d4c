"""The axes of a sweep, declared once: each field of `Scenario` that tells two scenarios apart carries its `Axis`
(`dataclasses.field` metadata), and everything that tells scenarios apart derives from that declaration: scenario ids,
the pairing of cached rows with uncached ones (`results.frame`), compare's matching, figure rows, summary columns,
resume's checks, the pytest plugin's ids, shard keys, and the records documentation (a test holds docs/records.md to
the declaration).

Each axis says what kind it is:

- `size` -- the scenario's size (prompt length, new tokens, batch): a larger one costs more (`on_oom skip-larger`);
- `switch` -- the cache on or off (`use_cache`), what a speedup compares;
- `cache-only` -- meaningless without the cache (the cache implementation, compile, the quantization settings): an
  uncached scenario stores them as null, never as a default that would look like a choice; a cached row pairs with
  the one uncached row that matches it on every other axis;
- `decoding` -- how tokens are chosen and by what (strategy, beams, sampling parameters, engine);
- `input` -- the seed of the prompt's token ids and of the sampling.

An id names every axis in declaration order, as `label` writes it, leaving out a value in `omit` (the default an
existing scenario ran with, so ids of existing records stay what they were) and a null one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

SIZE, SWITCH, CACHE_ONLY, DECODING, INPUT = "size", "switch", "cache-only", "decoding", "input"
KINDS = (SIZE, SWITCH, CACHE_ONLY, DECODING, INPUT)
# What tells runs apart beyond the scenario: records of different models, devices or dtypes are not the same
# scenario (compare matches on them unless they are what tells the runs apart).
RUN_FIELDS = ("model", "device", "dtype")


@dataclass(frozen=True)
class Axis:
    """One axis: its field, its kind, its part of an id, its column header and its line in docs/records.md."""

    name: str
    kind: str
    label: Callable[[Any], str]  # the id's part for a value (not None, not omitted)
    glue: str = "-"  # what joins the part to the id before it ("" makes beam + 2 read beam2)
    omit: tuple = ()  # values the id leaves out
    short: str = ""  # the summary's column header (the field's name if empty)
    doc: str = ""  # the meaning, for docs/records.md

    @property
    def header(self) -> str:
        return self.short or self.name


def axis(kind: str, label, default=dataclasses.MISSING, **info):
    """A Scenario field declared as an axis: `label` a format string ("P{}") or a function of the value."""
    assert kind in KINDS, kind
    fmt = label.format if isinstance(label, str) else label
    meta = {"axis": dict(kind=kind, label=fmt, **info)}
    return dataclasses.field(default=default, metadata=meta)


def declared(cls) -> tuple[Axis, ...]:
    """The axes a dataclass declares, in field order."""
    return tuple(Axis(name=f.name, **f.metadata["axis"]) for f in dataclasses.fields(cls) if "axis" in f.metadata)


# Filled by kvbench.inputs.scenario once Scenario is defined (the package imports it first): the consumers below
# read it at call time.
AXES: tuple[Axis, ...] = ()


def register(cls) -> None:
    global AXES
    AXES = declared(cls)


def declaration() -> tuple[Axis, ...]:
    """The axes Scenario declares."""
    return AXES


def names(*kinds: str) -> list[str]:
    """The names of the axes of these kinds (every axis without kinds), in declaration order."""
    return [a.name for a in declaration() if not kinds or a.kind in kinds]


def by_name(name: str) -> Axis:
    return next(a for a in declaration() if a.name == name)


def pair_keys() -> list[str]:
    """What a cached scenario shares with its uncached twin: every axis but the cache switch and cache-only ones."""
    return names(SIZE, DECODING, INPUT)


def plain(value):
    """A value as a record holds it: NaN (pandas' missing) is None, a whole float (an int column beside NaN) an int."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def scenario_id(values: Mapping, leave_out=()) -> str:
    """The id of a scenario's axis values (a Scenario's fields, a record, a table row): every axis in declaration
    order, except null values, values in the axis' `omit`, and the axes named in `leave_out`."""
    text = ""
    for a in declaration():
        value = plain(values.get(a.name))
        if a.name in leave_out or value is None or value in a.omit:
            continue
        part = a.label(value)
        text += (a.glue if text else "") + part
    return text


def pair_id(values: Mapping) -> str:
    """The id without the cache setting (`P16-N32-B1-greedy`): what a cached scenario and its uncached twin share."""
    return scenario_id(values, leave_out=names(SWITCH, CACHE_ONLY))


def twin_groups(scenarios, alone=lambda scenario: False) -> list[list]:
    """Scenarios grouped by `pair_id` (those differing only in the cache: a cached scenario, its uncached twin, the
    cache implementations of one size), each group in the order of its first member; `alone(scenario)` true puts a
    scenario in a group of its own."""
    out: dict[tuple, list] = {}
    for scenario in scenarios:
        values = scenario.as_dict()
        out.setdefault((pair_id(values), scenario.id if alone(scenario) else None), []).append(scenario)
    return list(out.values())


def not_applicable(values: dict) -> dict:
    """`values` with the cache-only axes null where the cache is off (what an uncached scenario records)."""
    if "use_cache" in values and values["use_cache"] is False:
        return {**values, **{name: None for name in names(CACHE_ONLY) if name in values}}
    return values
