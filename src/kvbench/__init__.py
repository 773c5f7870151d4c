"""kvbench: what the KV cache of a transformers causal LM buys (latency) and costs (memory), measured.

    import kvbench
    loaded = kvbench.load_model("tiny")
    record = kvbench.measure(loaded, kvbench.Scenario(prompt_len=128, new_tokens=32))

The flow, one subpackage a stage: `inputs` (Scenario, model configs) -> `measuring` (model, instruments, measure,
sweep) beside `estimate` (the analytic side) -> `results` (records, run folders) -> `report` / `plan` -> `cli`.
"""

from .errors import UserError
from .estimate.inspect import inspect_model
from .estimate.kvcache import (
    estimate_kv_cache_bytes,
    kv_cache_bytes_at,
    naive_kv_cache_bytes,
)
from .estimate.positions import positions_processed_estimate
from .estimate.weights import param_count, weight_bytes_estimate
from .inputs.configs import list_presets
from .inputs.scenario import Scenario, grid
from .measuring.cache_bytes import cache_nbytes
from .measuring.measure import measure
from .measuring.models import LoadedModel, load_model
from .measuring.reference import reference_generate
from .measuring.runner import run_sweep
from .plan.plan import plan_capacity
from .results.store import load_results
from .version import __version__

__all__ = [
    "LoadedModel", "Scenario", "UserError", "__version__", "cache_nbytes", "estimate_kv_cache_bytes", "grid",
    "kv_cache_bytes_at", "list_presets", "load_model", "load_results", "measure", "naive_kv_cache_bytes",
    "param_count", "plan_capacity", "positions_processed_estimate", "run_sweep", "weight_bytes_estimate",
    "inspect_model", "reference_generate",
]
