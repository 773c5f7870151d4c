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
ORDERS = ("interleaved", "grouped")  # the timed repeats' order (kvbench.measuring.harness.interleave)
MAX_REPEATS = 10_000  # timed repeats (and warm-ups) per scenario: more is a typo, not a measurement
AUTO_MAX_REPEATS = 50  # --repeats auto: the cap (kvbench.results.stats.auto_stop)
# Timed repeats per scenario by default, declared here alone. The Python API (RunOptions, run_sweep, measure) and
# the pytest plugin's --kv-rounds take REPEATS; `kvbench run` takes CLI_REPEATS, so that its default quick grid (12
# scenarios, half of them without the cache) is a first look in about a minute on a laptop CPU -- a median of 3 with
# its range; compare's Mann-Whitney test needs 7 a side to tell (docs/cli.md, docs/reports.md).
REPEATS = 5
CLI_REPEATS = 3
WARMUP = 1  # untimed generates before them, everywhere


@dataclass(frozen=True)
class RunOptions:
    """How every scenario of a sweep is measured, and how the model is loaded for it.

    on_oom None: "continue", or, for a resumed run, the choice the run was started with."""

    repeats: int = REPEATS  # timed generates per scenario (the median is reported)
    warmup: int = WARMUP  # untimed generates before them (at least 1 where decode compiles)
    profile_steps: bool = False  # one extra profiled generate: device-busy time per decode step
    on_oom: str | None = None  # "continue" or "skip-larger" (kvbench.measuring.harness.resume)
    order: str = "interleaved"  # the repeats of scenarios compared with each other take turns; "grouped": one
    # scenario's repeats, then the next's (kvbench.measuring.harness.interleave)
    order_seed: int | None = None  # the interleaved rounds' shuffle (None: drawn at random, and recorded; a resumed
    # run takes its run.json's)
    target_ci: float | None = None  # --repeats auto: repeats is a cap, stop once the median's 95% interval is
    # within +-target_ci (kvbench.results.stats.auto_stop)
    # loading the model (kvbench.measuring.loading.models.load_model)
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
        if self.order not in ORDERS:
            raise UserError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.target_ci is not None and not (isinstance(self.target_ci, float | int) and 0 < self.target_ci < 1):
            raise UserError(f"target_ci must be a fraction between 0 and 1 (0.05 for 5%), got {self.target_ci!r}")
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


def parse_repeats(text: str, target_ci: str) -> tuple[int, float | None]:
    """--repeats N -> (N, None); --repeats auto -> (the cap, the target half-width from --target-ci)."""
    if str(text).strip() == "auto":
        raw = str(target_ci).strip()
        try:
            target = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            target = -1.0
        if not 0 < target < 1:
            raise UserError(f"--target-ci: {target_ci!r} is not a percentage like 5% or a fraction like 0.05")
        return AUTO_MAX_REPEATS, target
    try:
        repeats = int(text)
    except ValueError:
        repeats = 0
    if repeats < 1:
        raise UserError(f"--repeats: {text} is not a positive integer or auto")
    return repeats, None
