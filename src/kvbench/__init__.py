"""kvbench: what the KV cache of a transformers causal LM buys (latency) and costs (memory), measured.

    import kvbench
    loaded = kvbench.load_model("tiny")
    record = kvbench.measure(loaded, kvbench.Scenario(prompt_len=128, new_tokens=32))

The flow, one subpackage a stage: `inputs` (Scenario, model configs) -> `measuring` (model, instruments, measure,
sweep) beside `estimate` (the analytic side) -> `results` (records, run folders) -> `report` / `plan` -> `cli`.

The API below loads on first use (PEP 562 `__getattr__`): `import kvbench` imports neither torch nor pandas, so the
`kvbench` command starts at once; `kvbench.measure` and `from kvbench import measure` import what they need.
"""

from __future__ import annotations

from importlib import import_module

from .errors import UserError
from .version import __version__

# public name -> the module that defines it (relative to this package); tests/test_layout.py reads this table
_LAZY = {
    "estimate_kv_cache_bytes": ".estimate.kvcache",
    "kv_cache_bytes_at": ".estimate.kvcache",
    "naive_kv_cache_bytes": ".estimate.kvcache",
    "positions_processed_estimate": ".estimate.positions",
    "param_count": ".estimate.weights",
    "weight_bytes_estimate": ".estimate.weights",
    "list_presets": ".inputs.configs",
    "model_config": ".inputs.configs",
    "RunOptions": ".inputs.options",
    "Scenario": ".inputs.scenario",
    "grid": ".inputs.scenario",
    "cache_nbytes": ".measuring.instruments.cache_bytes",
    "measure": ".measuring.measure",
    "LoadedModel": ".measuring.loading.models",
    "load_model": ".measuring.loading.models",
    "run_sweep": ".measuring.harness.runner",
    "plan_capacity": ".plan.plan",
    "load_results": ".results.store",
    "inspect_model": ".estimate.inspect",
    "reference_generate": ".measuring.engines.reference",
}

__all__ = ["UserError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
