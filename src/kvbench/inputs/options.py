"""The run's settings, in one object: `RunOptions` is built by the CLI (`kvbench run`, its shards), the Python API
(`run_sweep`), the pytest plugin and handed whole to the Ray executor's workers, so every way of running a sweep
measures with the same settings (a setting passed as a loose argument once got lost on the way to Ray).

What is not here: the grid (the scenarios, `kvbench.inputs.scenario`) and where the run goes (the run folder).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserError

ON_OOM = ("continue", "skip-larger")
MAX_REPEATS = 10_000  # timed repeats (and warm-ups) per scenario: more is a typo, not a measurement


@dataclass(frozen=True)
class RunOptions:
    """How every scenario of a sweep is measured, and how the model is loaded for it.

    on_oom None: "continue", or, for a resumed run, the choice the run was started with."""

    repeats: int = 5  # timed generates per scenario (the median is reported)
    warmup: int = 1  # untimed generates before them (at least 1 where decode compiles)
    profile_steps: bool = False  # one extra profiled generate: device-busy time per decode step
    on_oom: str | None = None  # "continue" or "skip-larger" (kvbench.measuring.resume)
    # loading the model (kvbench.measuring.models.load_model)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    device_map: str | None = None
    max_memory: str | None = None  # the memory cap per device, with device_map
    # the quantized cache of the grid's quantized scenarios (docs/caches.md)
    quant_backend: str = "quanto"
    quant_nbits: int | None = None
    quant_residual_length: int | None = None

    def __post_init__(self):
        for name, least in (("repeats", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f"{name} must be an integer >= {least}, got {value!r}")
            if value > MAX_REPEATS:
                raise UserError(f"{name} must be at most {MAX_REPEATS:,} (per scenario), got {value:,}")
        if self.on_oom is not None and self.on_oom not in ON_OOM:
            raise UserError(f"on_oom must be one of {', '.join(ON_OOM)}, got {self.on_oom!r}")

    def replace(self, **changes) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def load_kwargs(self) -> dict:
        """`load_model`'s keyword arguments."""
        return dict(device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                    device_map=self.device_map, max_memory=self.max_memory)

    def quantization(self) -> dict:
        """`grid`'s `quantization`: the quantized scenarios' backend, bits and residual length."""
        return dict(quant_backend=self.quant_backend, quant_nbits=self.quant_nbits,
                    quant_residual_length=self.quant_residual_length)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))
