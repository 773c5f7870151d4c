"""How long a sweep will take, said before it starts and refined as it goes.

A scenario's work is counted analytically: generate makes one forward call per new token, and those calls process
`positions_processed_estimate` positions per sequence (the prompt once and one per step with the cache, the whole
sequence every step without). A forward call costs a fixed part (reading every weight, launching kernels, Python)
plus a part per position processed, so a scenario's time is

    (warmup + repeats) x (per_call_s x new_tokens + per_position_s x sequences x positions).

The two rates come from a probe before the sweep (one forward of 1 position and one of many, timed on the model
itself); then every finished scenario scales them by its measured wall time over its prediction, so the estimate
of what is left follows what the machine actually does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...estimate.positions import positions_processed_estimate
from ...inputs.scenario import Scenario
from ..instruments.clock import Clock
from ..loading.models import LoadedModel, synthetic_inputs

PROBE_MAX_POSITIONS = 512  # the long probe forward processes at most this many positions


def scenario_work(scenario: Scenario, repeats: int, warmup: int) -> tuple[int, int]:
    """(forward calls, sequence positions processed) of one scenario's warm-up and timed generates."""
    runs = repeats + warmup
    sequences = scenario.batch_size * scenario.num_beams
    positions = positions_processed_estimate(scenario.prompt_len, scenario.new_tokens, scenario.use_cache)
    return runs * scenario.new_tokens, runs * sequences * positions


def probe_rates(loaded: LoadedModel, positions: int) -> tuple[float, float]:
    """(seconds per forward call, seconds per position) from timed forwards of 1 and of `positions` positions
    (batch 1, no cache) after one untimed forward. A call never costs less than a tenth of the one-position
    forward: on a noisy machine the two timings can make the difference swallow it."""
    positions = max(2, positions)
    clock = Clock(loaded.device)
    times = []
    with torch.inference_mode():
        for n in (1, 1, positions):
            inputs = synthetic_inputs(loaded.config, 1, n, loaded.device)
            start = clock.mark()
            loaded.model(**inputs, use_cache=False)
            times.append(clock.intervals([start, clock.mark()])[0])
    one, many = times[1], times[2]
    per_position = max(0.0, (many - one) / (positions - 1))
    return max(0.1 * one, one - per_position), per_position


@dataclass
class SweepEstimate:
    """Predicted seconds per scenario, scaled by what finished scenarios took."""

    scenarios: list[Scenario]
    repeats: int
    warmup: int
    per_call_s: float
    per_position_s: float
    measured_s: list[float] = field(default_factory=list)  # wall time of each finished scenario, in order

    @classmethod
    def probe(cls, loaded: LoadedModel, scenarios: list[Scenario], repeats: int, warmup: int) -> "SweepEstimate":
        longest = max(s.prompt_len * s.batch_size * s.num_beams for s in scenarios)
        context = loaded.context_len or PROBE_MAX_POSITIONS
        per_call, per_position = probe_rates(loaded, min(longest, PROBE_MAX_POSITIONS, context))
        return cls(scenarios, repeats, warmup, per_call, per_position)

    def prior_s(self, scenario: Scenario) -> float:
        """The probe's prediction for one scenario."""
        calls, positions = scenario_work(scenario, self.repeats, self.warmup)
        return self.per_call_s * calls + self.per_position_s * positions

    @property
    def scale(self) -> float:
        """Measured over predicted time of the finished scenarios (1 before any has finished)."""
        done = self.scenarios[:len(self.measured_s)]
        predicted = sum(self.prior_s(s) for s in done)
        return sum(self.measured_s) / predicted if done and predicted > 0 else 1.0

    def expected_s(self, scenario: Scenario) -> float:
        return self.prior_s(scenario) * self.scale

    def finished(self, seconds: float) -> None:
        """Record the wall time of the next scenario in order."""
        self.measured_s.append(seconds)

    def remaining_s(self) -> float:
        """Expected seconds of the scenarios not finished yet."""
        return sum(self.expected_s(s) for s in self.scenarios[len(self.measured_s):])
