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
plain-torch loop of `engines.reference`) and `PagedEngine` (`engines.paged`); `engine_for(scenario)` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...compat import cache_from_output, generate_call_kwargs
from ...inputs.scenario import Scenario
from ..instruments.cache_bytes import cache_nbytes
from ..loading.models import LoadedModel, synthetic_inputs
from .decode import generate_kwargs, static_cache
from .reference import reference_run


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


class GenerateEngine:
    """transformers' `generate`, with the scenario's keyword arguments and its static cache, when it has one."""

    name = "generate"
    per_forward = True  # timed by the forward recorder; probes, the allocation pass's labels and profiling apply

    def prepare(self, loaded: LoadedModel, scenario: Scenario) -> Prepared:
        inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, loaded.device,
                                  scenario.seed)
        cache = static_cache(loaded.model, scenario)
        return Prepared(scenario, inputs, generate_kwargs(scenario, cache), cache)

    def reset(self, prepared: Prepared) -> int:
        return reset_cache(prepared.cache)

    def generate(self, model, prepared: Prepared):
        return model.generate(**prepared.inputs, **generate_call_kwargs(prepared.kwargs))

    def run_once(self, loaded: LoadedModel, prepared: Prepared) -> Ran:
        out = self.generate(loaded.model, prepared)
        ran = Ran(tuple(out.sequences.shape), cache_from_output(out) if prepared.scenario.use_cache else None)
        del out
        return ran

    def grad_mode(self):
        return torch.inference_mode()

    def close(self, loaded: LoadedModel, prepared: Prepared) -> None:
        prepared.release()

    def fields(self, loaded: LoadedModel, scenario: Scenario, runs: list[dict]) -> dict:
        return {}


class ReferenceEngine(GenerateEngine):
    """The decoding loop of `engines.reference` in plain torch (greedy or sampling, a dynamic cache or none)."""

    name = "reference"

    def generate(self, model, prepared: Prepared):
        return reference_run(model, prepared.inputs, prepared.scenario)


def reset_cache(cache) -> int:
    """Empty a reused static cache before a run (inside inference mode, where its tensors were made); returns the
    bytes it holds meanwhile (0 before its first run, which allocates it; 0 without one)."""
    if cache is None:
        return 0
    held = cache_nbytes(cache)
    cache.reset()
    return held


def engine_for(scenario: Scenario):
    """The engine that runs `scenario`: paged batching for the paged cache, else the scenario's `engine` axis."""
    if scenario.cache_implementation == "paged":
        from .paged import PagedEngine

        return PagedEngine()
    return ENGINES[scenario.engine]()


def run_generation(model, inputs: dict, scenario: Scenario, kwargs: dict | None = None):
    """One generation of `scenario` on `model`, no instrument around it: generate's output (or the reference loop's,
    with the same fields)."""
    prepared = Prepared(scenario, inputs, scenario.generate_kwargs() if kwargs is None else kwargs)
    return ENGINES[scenario.engine]().generate(model, prepared)


ENGINES = {"generate": GenerateEngine, "reference": ReferenceEngine}
