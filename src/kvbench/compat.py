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

# The transformers releases CI tests kvbench on (.ci/run: one fresh virtual environment each; the last is the newest,
# pinned in .ci/constraints-newest.txt; tests/test_compat.py keeps both files in step with this line).
TESTED_RELEASES = ("4.57.6", "5.17.0", "5.25.0")


@lru_cache(maxsize=1)
def transformers_version() -> tuple[int, int]:
    """(major, minor) of the transformers that is imported."""
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def beyond_tested() -> str | None:
    """A one-line note where the installed transformers is newer than the newest release tested (TESTED_RELEASES),
    else None. Such a release may have changed a cache kvbench reads: every record still measures the cache's bytes
    beside their estimate, so a difference shows there; the planner relies on the estimate alone."""
    newest = tuple(int(x) for x in TESTED_RELEASES[-1].split(".")[:2])
    if transformers_version() <= newest:
        return None
    return (f"transformers {installed_version()} is newer than the newest release kvbench was tested on "
            f"({TESTED_RELEASES[-1]}): compare kv_cache_bytes with kv_cache_bytes_estimate before trusting a plan")


def cache_from_output(out: Any) -> Any:
    """The cache of a ``generate(..., return_dict_in_generate=True)`` output: ``.cache`` in recent 5.x (5.24),
    ``.past_key_values`` in 4.x and earlier 5.x (5.17); None when the model ran without one. The output's own
    fields decide which name is read: from 5.25 ``past_key_values`` is a deprecated alias of ``cache`` that logs a
    warning when read, so it is never touched where ``cache`` is a field."""
    fields = getattr(out, "__dataclass_fields__", None) or {}
    for name in ("cache", "past_key_values"):
        if name in fields or (not fields and hasattr(out, name)):
            return getattr(out, name)
    return None


def hybrid_state_on_every_layer() -> bool:
    """True in 4.x, whose hybrid cache classes (LFM2, ...) allocate SSM / convolution state for every layer even
    where the config's `layer_types` says attention; 5.x allocates it for the state layers only."""
    return transformers_version() < (5, 0)


def falcon_new_arch_caches_kv_heads() -> bool:
    """Falcon's new decoder architecture (Falcon-40B/180B: `new_decoder_architecture`) caches its `num_kv_heads`
    key-value groups as they are from transformers 5.25; up to 5.24 it broadcast them to every attention head
    before caching, so its cache held `num_attention_heads` heads."""
    return transformers_version() >= (5, 25)


def mla_caches_latent() -> bool:
    """Multi-head latent attention (DeepSeek-V2/V3 style) caches the compressed latent and the shared rotary key
    from transformers 5.15; before, the decompressed per-head keys and values."""
    return transformers_version() >= (5, 15)


def experts_loop_over_their_tokens() -> bool:
    """True in 4.x: mixture-of-experts layers (Mixtral and its kin) run one expert at a time on the tokens routed to
    it, adding each result into a zeroed output; 5.x's experts implementation runs the k routed copies of every
    token together."""
    return transformers_version() < (5, 0)


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


# ---------------------------------------------------------------------------------------------------------------
# Cache implementations (read in the sources of 4.57.6, 5.0.0, 5.17.0, 5.18.0 to 5.22.2 and 5.24.0)
# ---------------------------------------------------------------------------------------------------------------

FP8_QUANTIZED_SINCE = "5.21"  # the first release with Fp8QuantizedLayer
QUANTIZED_BEAMS_SINCE = "5.19"  # the first whose quantized layers defer beam reordering
PAGED_SINCE = "5.17"  # the oldest release whose continuous batching (ContinuousBatchingConfig) kvbench runs


def installed_version() -> str:
    """The installed transformers' version string (for refusals: 'needs transformers >= X (installed Y)')."""
    import transformers

    return transformers.__version__


def quantized_backends() -> tuple[str, ...]:
    """The backends of transformers' QuantizedCache: quanto and hqq in every supported release; fp8 (per tensor,
    `Fp8QuantizedLayer`) from 5.21 (4.57 to 5.20 raise "Unknown quantization backend `fp8`")."""
    from transformers import cache_utils

    return ("quanto", "hqq") + (("fp8",) if hasattr(cache_utils, "Fp8QuantizedLayer") else ())


def quantized_beam_search() -> bool:
    """Whether a quantized cache survives beam search. From 5.19 its layers defer the reordering of the quantized
    states to the next update (`_pending_beam_idx`); in 4.57 to 5.18 they inherit the dynamic layer's reorder, which
    index_selects the emptied (1-D) residual and generate fails with "index out of range"."""
    from transformers.cache_utils import QuantizedLayer

    return hasattr(QuantizedLayer, "_apply_pending_reorder")


def quantized_requantize_period(residual_length: int) -> int:
    """Decode steps between two requantizations of a group-wise quantized cache (quanto, hqq). From 5.20 the step
    whose token brings the residual to R tokens requantizes (residual + new >= R): every R steps. In 4.57 to 5.19
    the check reads the residual's length only when it is 4-D, and the step right after a requantization (the
    residual emptied to a 1-D tensor) never requantizes: R = 1 requantizes every other step."""
    return residual_length if transformers_version() >= (5, 20) else max(residual_length, 2)


def generate_call_kwargs(kwargs: dict) -> dict:
    """generate's keyword arguments for one call. generate before 5.19 pops "backend" from the caller's
    `cache_config` (and adds "config"), so a dict reused by the next call runs it with quanto whatever was asked;
    from 5.19 it copies. Each call gets its own copy of `cache_config` (harmless where it is copied anyway)."""
    if isinstance(kwargs.get("cache_config"), dict):
        return {**kwargs, "cache_config": dict(kwargs["cache_config"])}
    return kwargs


def hybrid_builds_static() -> bool:
    """True in 4.x: an explicit ``cache_implementation="hybrid"`` builds a StaticCache (generate unsets "hybrid"
    only when it came from the model's own defaults); from 5.0 generate always unsets it: a DynamicCache."""
    return transformers_version() < (5, 0)


def static_values_sized_by_keys() -> bool:
    """True in 4.x: a static layer allocates its values with the keys' head_dim, so a static cache of a model whose
    values are narrower than its keys (multi-head latent attention before 5.15 caches per-head keys of
    qk_nope + qk_rope and values of v_head_dim) fails at its first update (index_copy_ shape mismatch); from 5.0
    each is sized from its own states."""
    return transformers_version() < (5, 0)


def paged_layout() -> str | None:
    """How continuous batching's PagedAttentionCache holds its pool. None: no `ContinuousBatchingConfig` (4.x, whose
    generate_batch takes other options). "per_layer" (5.17): a key and a value tensor for each layer of a layer
    group, of (num_blocks + 2) x block_size tokens x KV heads x head_dim, the page option named `block_size`.
    "sectors" (from 5.18): one flat uint8 tensor of sectors (lcm of the block bytes and 128) plus two trash sectors,
    the option named `page_size`."""
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:
        return None
    fields = getattr(ContinuousBatchingConfig, "__dataclass_fields__", {})
    return "sectors" if "page_size" in fields else "per_layer"


def paged_page_size_option() -> str:
    """The `ContinuousBatchingConfig` field of the tokens a page (block) holds: `page_size` from 5.18, `block_size`
    in 5.17 (see `paged_layout`)."""
    return "page_size" if paged_layout() == "sectors" else "block_size"


def paged_block_tables(cache: Any) -> list[tuple[dict, int]]:
    """(block table: request id -> block ids, bytes one block holds) of each allocator of a PagedAttentionCache.
    From 5.18 the allocators are `cache_allocators` with their `bytes_per_block`; in 5.17 `group_cache_managers`,
    a block of a group taking one block slot of every pool tensor (its bytes: the pool over num_blocks + 2)."""
    if hasattr(cache, "cache_allocators"):
        return [(a.block_table, a.bytes_per_block) for a in cache.cache_allocators.values()]
    per_block = sum(t.nbytes for t in [*cache.key_cache, *cache.value_cache]) // (cache.num_blocks + 2)
    return [(m.block_table, per_block) for m in cache.group_cache_managers]


def paged_grad_mode() -> Any:
    """The grad mode to call `generate_batch` in: `torch.inference_mode` where continuous batching's generation
    thread takes the caller's inference mode on (`_run_generation_loop(use_inference_mode)`, 5.24; not in 5.17 to
    5.22), else `torch.no_grad`: in those a pool made under inference mode is an inference tensor, which the
    generation thread, outside inference mode, cannot update in place ("Inplace update to inference tensor")."""
    import inspect

    import torch
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    loop = getattr(ContinuousBatchingManager, "_run_generation_loop", None)
    takes = loop is not None and "use_inference_mode" in inspect.signature(loop).parameters
    return torch.inference_mode() if takes else torch.no_grad()


@lru_cache(maxsize=1)
def compiled_caches() -> tuple[str, ...]:
    """The cache implementations whose cache `generate` builds compileable, and so compiles the decode of by itself
    on CUDA: transformers' `ALL_STATIC_CACHE_IMPLEMENTATIONS` (static and offloaded_static, and the deprecated names
    sliding_window, hybrid, hybrid_chunked, offloaded_hybrid, offloaded_hybrid_chunked, which build a StaticCache),
    less "hybrid" from 5.0, where generate unsets an explicit "hybrid" and builds a DynamicCache
    (`hybrid_builds_static`). kvbench treats each like static: one cache a scenario, a forced warm-up, the compile
    setting honoured (tests/test_compile.py checks the list against `generate`'s own rule).

    Read from the installed transformers without importing it where it is not imported yet (its
    generation/configuration_utils.py, parsed; the version from its metadata), so a grid can be built before torch
    loads."""
    import ast
    import importlib.metadata
    import importlib.util
    import sys

    major = int(importlib.metadata.version("transformers").split(".")[0])
    unset = () if major < 5 else ("hybrid",)  # hybrid_builds_static(), read without importing transformers
    module = sys.modules.get("transformers.generation.configuration_utils")
    if module is not None and hasattr(module, "ALL_STATIC_CACHE_IMPLEMENTATIONS"):
        return tuple(n for n in module.ALL_STATIC_CACHE_IMPLEMENTATIONS if n not in unset)
    spec = importlib.util.find_spec("transformers")
    folder = spec and spec.submodule_search_locations and spec.submodule_search_locations[0]
    names: dict[str, tuple] = {}
    try:
        with open(f"{folder}/generation/configuration_utils.py", encoding="utf-8") as file:
            tree = ast.parse(file.read())
    except (OSError, TypeError, SyntaxError):
        tree = ast.Module(body=[], type_ignores=[])
    for node in tree.body:  # NAME = ("a", "b") and NAME = A + B, in order
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = _tuple_of(node.value, names)
            except (ValueError, KeyError):
                continue
    return tuple(n for n in names.get("ALL_STATIC_CACHE_IMPLEMENTATIONS") or ("static",) if n not in unset)


def _tuple_of(node, names: dict) -> tuple:
    """A tuple of strings, or a sum of names of such tuples (what `compiled_caches` reads)."""
    import ast

    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _tuple_of(node.left, names) + _tuple_of(node.right, names)
    if isinstance(node, ast.Name):
        return names[node.id]
    value = ast.literal_eval(node)
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a tuple of names")
    return value
