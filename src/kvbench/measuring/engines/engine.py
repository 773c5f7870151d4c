"""The engines kvbench has (the interface: `engines.base`): transformers' `generate`, the plain-torch reference loop,
paged continuous batching; `engine_for(scenario)` picks one."""

from __future__ import annotations

import torch

from ...compat import cache_from_output, generate_call_kwargs
from ...inputs.scenario import Scenario
from ..instruments.cache_bytes import cache_nbytes
from ..loading.models import LoadedModel, synthetic_inputs
from .base import Prepared, Ran
from .decode import generate_kwargs, static_cache
from .paged import PagedEngine
from .reference import reference_run


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
        return PagedEngine()
    return ENGINES[scenario.engine]()


def run_generation(model, inputs: dict, scenario: Scenario, kwargs: dict | None = None):
    """One generation of `scenario` on `model`, no instrument around it: generate's output (or the reference loop's,
    with the same fields)."""
    prepared = Prepared(scenario, inputs, scenario.generate_kwargs() if kwargs is None else kwargs)
    return ENGINES[scenario.engine]().generate(model, prepared)


ENGINES = {"generate": GenerateEngine, "reference": ReferenceEngine}
