"""What a `kvbench run` record says about its scenario, rebuilt for the planner: the Scenario (its axes are record
fields), the model's config (the `model` field: a preset, a config.json, a model folder or a Hub id, as `kvbench
run` was given it) and the dtype. `plan.check` and `plan.calibration` evaluate the planner's memory model
(`estimate.peak`, `estimate.capacity`) on them, the same functions `kvbench run` called to write the record's
`peak_allocated_delta_bytes_estimate` and `kvbench plan` calls to plan.

The attention implementation is the one the run's loaded model selected (`attn_implementation`, recorded since
2026-12-07); for older records, which lack it, the model's class default on the installed transformers (SDPA where
the class supports it, else eager) is taken, which is what `kvbench run` loads unless the config names another.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from ..errors import UserError
from ..inputs.configs import DTYPES, resolve_spec
from ..inputs.names import preset_name
from ..inputs.scenario import Scenario
from ..units import missing

# Each Scenario field and the type a record's value is read back as (pandas stores integers with gaps as floats):
# from the field's annotation ("int", "int | None", "bool", "float | None", ...); other fields are kept as they are.
_TYPES = {"int": int, "bool": bool, "float": float}
SCENARIO_FIELDS = {f.name: _TYPES.get(str(f.type).split(" | ")[0]) for f in dataclasses.fields(Scenario)}


def record_scenario(record: dict) -> Scenario:
    """The Scenario a record measured (fields it lacks take the Scenario's defaults)."""
    values = {}
    for name, kind in SCENARIO_FIELDS.items():
        value = record.get(name)
        if not missing(value):
            values[name] = kind(value) if kind else value
    with warnings.catch_warnings():  # a deprecated cache name: taken as the class it builds, as the run did
        warnings.simplefilter("ignore")
        try:
            return Scenario(**values)
        except TypeError as exc:
            raise UserError(f"record {record.get('scenario_id')!r}: not a scenario kvbench can rebuild ({exc})") \
                from None


def record_attention(record: dict) -> str | None:
    """The attention implementation the record's model ran with; None where the record does not say (older runs)."""
    value = record.get("attn_implementation")
    return None if missing(value) else str(value)


def record_dtype(record: dict):
    """The torch dtype the record's model ran in."""
    name = str(record.get("dtype"))
    if name not in DTYPES:
        raise UserError(f"record {record.get('scenario_id')!r}: dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


class ModelConfigs:
    """The config of each model a set of records names, read once. A relative path that does not exist from the
    current folder is looked for beside the records file and its parent folders (a committed run's records name
    config files relative to the repository root it was run from)."""

    def __init__(self, near: Path | None = None):
        self.near = Path(near).resolve() if near is not None else None
        self._configs: dict[str, object] = {}

    def __call__(self, spec: str):
        spec = str(spec)
        if spec not in self._configs:
            self._configs[spec] = resolve_spec(self._locate(spec))[1]
        return self._configs[spec]

    def _locate(self, spec: str) -> str:
        path = Path(spec)
        if path.exists() or path.is_absolute() or self.near is None or preset_name(spec) is not None:
            return spec
        for folder in (self.near, *self.near.parents):
            if (folder / path).exists():
                return str(folder / path)
        return spec
