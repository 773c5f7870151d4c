"""The engine interface: what runs a scenario once. `measuring.measure` wraps the instruments around any engine.

An engine does three things, and nothing that measures:

* `prepare(loaded, scenario)` -> `Prepared`: what every run of the scenario shares (the inputs, generate's keyword
  arguments, a cache built once and reused), made untimed before the warm-up;
* `reset(prepared)` -> bytes: empties the reused cache before a run and says how many bytes it holds meanwhile
  (so memory peaks count it as the run's own, as if the run had built it);
* `run_once(loaded, prepared)` -> `Ran`: one generation; its output sequences, the cache it leaves and, for an
  engine whose forward calls do not map to tokens (paged batching packs every request into each call), its own
  timings. Other engines are timed by the forward recorder (`instruments.forwards`).

`close(loaded, prepared)` drops what `prepare` and the runs kept. `fields(loaded, scenario, runs)`: the record fields
only this engine's records carry. Three engines: `GenerateEngine` (transformers' `generate`), `ReferenceEngine` (the
plain-torch loop of `engines.reference`) and `PagedEngine` (`engines.paged`); `engines.engine.engine_for(scenario)` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ...inputs.scenario import Scenario


@dataclass
class Prepared:
    """What the runs of one scenario share."""

    scenario: Scenario
    inputs: dict
    kwargs: dict = field(default_factory=dict)  # generate's keyword arguments (the reused cache among them)
    cache: Any = None  # a cache built once and reset before each run (the static cache)
    state: dict = field(default_factory=dict)  # what else an engine keeps (paged: the prompts and configs)

    def release(self) -> None:
        """Drop the references to the cache and inputs (the caller frees memory after)."""
        self.kwargs, self.cache, self.inputs = {}, None, {}
        self.state.clear()


@dataclass
class Ran:
    """One run: its output sequences' shape, the cache it leaves (for its bytes), and the engine's own timings
    (`total_s`, `ttft_s`, `decode_steps_s`) and fields where it keeps them."""

    shape: tuple[int, ...]
    cache: Any = None
    timings: dict | None = None
    fields: dict = field(default_factory=dict)


class Engine(Protocol):
    """What `measure` asks of an engine (GenerateEngine, ReferenceEngine, PagedEngine implement it)."""

    name: str
    per_forward: bool  # timed by the forward recorder (probes, the allocation pass's labels and profiling apply)

    def prepare(self, loaded, scenario: Scenario) -> Prepared: ...

    def reset(self, prepared: Prepared) -> int: ...

    def run_once(self, loaded, prepared: Prepared) -> Ran: ...

    def grad_mode(self): ...  # the context each run is entered in (torch.inference_mode for generate)

    def close(self, loaded, prepared: Prepared) -> None: ...

    def fields(self, loaded, scenario: Scenario, runs: list[dict]) -> dict: ...
