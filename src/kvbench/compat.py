"""What differs between the transformers releases kvbench supports (4.57 to 5.x), in one place; and `require`,
the one way to import an optional package.

Call sites ask a question here (`cache_from_output(out)`, `mla_caches_latent()`, ...) instead of branching on a
version themselves. Each answer was checked against the sources and the test suite of 4.57.6, 5.17.0 and 5.24.0
(CI runs all three). transformers is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

from .errors import UserError

# The attributes `generate` leaves on a model to reuse a static cache: 5.x keeps the longest length seen so far
# (`_previous_max_cache_length`), 4.x the cache object itself (`_cache`).
STATIC_CACHE_ATTRIBUTES = ("_previous_max_cache_length", "_cache")


@lru_cache(maxsize=1)
def transformers_version() -> tuple[int, int]:
    """(major, minor) of the transformers that is imported."""
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def cache_from_output(out: Any) -> Any:
    """The cache of a ``generate(..., return_dict_in_generate=True)`` output: ``.cache`` in recent 5.x (5.24),
    ``.past_key_values`` in 4.x and earlier 5.x (5.17); None when the model ran without one."""
    for name in ("cache", "past_key_values"):
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    return None


def drop_static_cache(model: Any) -> None:
    """Remove what `generate` keeps on the model between static-cache calls (see STATIC_CACHE_ATTRIBUTES), so the
    next call sizes its cache for itself. A model that has none is left as it is."""
    for name in STATIC_CACHE_ATTRIBUTES:
        model.__dict__.pop(name, None)


def auto_compiles(model: Any, generation_config: Any, cache: Any) -> bool:
    """Whether `generate` compiles the model's forward on its own for this cache (transformers' own rule,
    `_valid_auto_compile_criteria`: a compileable cache on a CUDA-like device unless `disable_compile`; the
    devices, and the name the rule reads the cache under, differ between releases: both names are passed)."""
    return bool(model._valid_auto_compile_criteria({"cache": cache, "past_key_values": cache}, generation_config))


def hybrid_state_on_every_layer() -> bool:
    """True in 4.x, whose hybrid cache classes (LFM2, ...) allocate SSM / convolution state for every layer even
    where the config's `layer_types` says attention; 5.x allocates it for the state layers only."""
    return transformers_version() < (5, 0)


def mla_caches_latent() -> bool:
    """Multi-head latent attention (DeepSeek-V2/V3 style) caches the compressed latent and the shared rotary key
    from transformers 5.15; before, the decompressed per-head keys and values."""
    return transformers_version() >= (5, 15)


def beam_search_keeps_shared_kv_copies() -> bool:
    """True in 4.x: beam reordering of a cache with KV-shared layers (Gemma-3n) leaves copies of the shared states
    behind, which no estimate from the config predicts."""
    return transformers_version() < (5, 0)


def rope_parameters(config: Any) -> dict | None:
    """A config's RoPE settings (rope_type, factor, ...): `rope_parameters` in 5.x (rope_theta included), the
    `rope_scaling` dict in 4.x (rope_theta beside it); None for a model without rotary scaling settings."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return dict(params) if params else None


def require(module: str, pip: str, needed_for: str) -> Any:
    """Import an optional package (one of pyproject.toml's extras) where it is needed; missing, a one-line
    UserError names the pip install. tests/test_dependencies.py checks that `pip` is declared."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{needed_for} needs {module}, which is not installed: pip install {pip}") from None
