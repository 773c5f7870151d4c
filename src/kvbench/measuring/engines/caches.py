"""Which of transformers' cache implementations can run a scenario here: refused before a sweep, in one line.

* every implementation must be one the installed transformers offers (``ALL_CACHE_IMPLEMENTATIONS`` + "paged");
* offloaded caches (``offloaded``, ``offloaded_static``, ``offloaded_hybrid*``) need CUDA: their ``update`` calls
  ``torch.cuda.default_stream`` (on a CPU build: "Torch not compiled with CUDA enabled");
* the quantized cache holds full-attention layers only (transformers refuses sliding, linear-attention, conv and
  MLP-only layers), needs its backend's package (quanto: ``optimum-quanto``, hqq: ``hqq``; fp8 nothing) and a
  cache whose tensors its group size divides at every quantization (``kvbench.estimate.quantized``);
* paged attention runs through continuous batching (``generate_batch``): greedy or sampling, no beams, full
  and sliding attention layers only (`kvbench.measuring.engines.paged`).
* what the installed transformers cannot do (`kvbench.compat`), named with the release it needs: fp8 (5.21), beam
  search with a quantized cache (5.19), paged attention (5.17), and in 4.x a static cache of a model whose values
  are narrower than its keys.
"""

from __future__ import annotations

import importlib.util

from ... import compat
from ...errors import UserError
from ...estimate import quantized as quant
from ...estimate.kvcache import cache_rules, kv_layer_specs
from ...inputs.configs import text_config
from ...inputs.scenario import CACHE_IMPLEMENTATIONS, OFFLOADED, Scenario

# backend -> (module that must import, what brings it)
QUANT_PACKAGES = {"quanto": ("optimum.quanto", "optimum-quanto"), "hqq": ("hqq", "hqq")}


def installed_implementations() -> tuple[str, ...]:
    """The implementations the installed transformers' generate accepts."""
    try:
        from transformers.generation.configuration_utils import (
            ALL_CACHE_IMPLEMENTATIONS,
        )
    except ImportError:  # an older layout: trust kvbench's list
        return CACHE_IMPLEMENTATIONS
    return tuple(ALL_CACHE_IMPLEMENTATIONS) + ("paged",)


def layer_types(config) -> list[str]:
    """The cache layer types transformers derives from the config (what QuantizedCache checks)."""
    text = text_config(config)
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        return list(get_layer_types_and_kwargs(text)[0])
    except (ImportError, AttributeError, TypeError):  # transformers 4.x: kvbench's reading of the config
        kinds = {"full": "full_attention", "sliding": "sliding_attention", "none": "dummy"}
        try:
            return [kinds[s.kind] for s in kv_layer_specs(config)]
        except NotImplementedError:  # SSM / linear-attention state (not estimated in 4.x): the config's own types
            return list(getattr(text, "layer_types", None) or ["linear_attention"])


def missing_package(backend: str | None) -> str | None:
    """The pip install that brings a quantization backend, if its package is missing."""
    module, package = QUANT_PACKAGES.get(backend, (None, None))
    if module is None:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (optimum) is missing
        found = False
    return None if found else f"pip install {package} (or kvbench[quant])"


def quantized_problem(model, config, scenario: Scenario) -> str | None:
    other = sorted(set(layer_types(config)) - {"full_attention"})
    if other:
        return f"the quantized cache holds full-attention layers only, and this model has {', '.join(other)} layers"
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        return "this model keeps a cache of its own, which transformers cannot quantize"
    if scenario.quant_backend not in compat.quantized_backends():
        return needs(f"the {scenario.quant_backend} quantized cache", compat.FP8_QUANTIZED_SINCE)
    if scenario.num_beams > 1 and not compat.quantized_beam_search():
        return needs("beam search with a quantized cache", compat.QUANTIZED_BEAMS_SINCE)
    install = missing_package(scenario.quant_backend)
    if install:
        return f"the {scenario.quant_backend} backend of the quantized cache is not installed: {install}"
    try:
        specs = kv_layer_specs(config)
    except NotImplementedError:  # not estimated: the backend will say if its groups do not fit
        return None
    for spec in {(s.kv_heads, s.k_head_dim, s.v_head_dim) for s in specs}:
        problem = quant.group_problem(
            scenario.quant_backend, sequences=scenario.batch_size * scenario.num_beams, kv_heads=spec[0],
            head_dims=spec[1:], prompt_len=scenario.prompt_len, new_tokens=scenario.new_tokens,
            residual_length=scenario.quant_residual_length or 1)
        if problem:
            return problem
    return None


def needs(what: str, release: str) -> str:
    """The one line refusing what the installed transformers cannot do."""
    return f"{what} needs transformers >= {release} (installed {compat.installed_version()})"


def static_problem(config) -> str | None:
    """4.x's static layers size their values by the keys (compat.static_values_sized_by_keys)."""
    if not compat.static_values_sized_by_keys():
        return None
    try:
        specs = kv_layer_specs(config)
    except NotImplementedError:
        return None
    if any(s.k_head_dim != s.v_head_dim for s in specs if s.kind != "none"):
        return needs("a static cache of a model whose keys and values differ in width", "5.0")
    return None


def paged_problem(model, config, scenario: Scenario) -> str | None:
    """Why continuous batching cannot run this scenario (None: it can)."""
    if not hasattr(model, "generate_batch") or compat.paged_layout() is None:
        return needs("--cache-implementation paged (continuous batching)", compat.PAGED_SINCE)
    if scenario.decoding == "beam":
        return "continuous batching does not do beam search"
    other = sorted(set(layer_types(config)) - {"full_attention", "sliding_attention"})
    if other:
        return f"continuous batching takes full and sliding attention layers only, and this model has {', '.join(other)}"
    return None


def cache_problem(model, config, device, scenario: Scenario) -> str | None:
    """Why this scenario's cache cannot run on this model and device (None: it can)."""
    impl = scenario.cache_implementation
    if not scenario.use_cache:
        return None
    import transformers

    if impl not in installed_implementations():
        return f"transformers {transformers.__version__} has no cache_implementation {impl!r}"
    if impl in OFFLOADED and getattr(device, "type", str(device)) != "cuda":
        return f"the {impl} cache needs CUDA (its update calls torch.cuda.default_stream), not {device}"
    if impl == "quantized":
        return quantized_problem(model, config, scenario)
    if impl == "paged":
        return paged_problem(model, config, scenario)
    if cache_rules(impl) == "static":
        return static_problem(config)
    return None


def check_cache(loaded, scenario: Scenario) -> None:
    """Raise UserError (one line naming the scenario) where its cache implementation cannot run here."""
    problem = cache_problem(loaded.model, loaded.config, loaded.device, scenario)
    if problem:
        raise UserError(f"{scenario.id}: {problem}")
