"""kvbench: what the KV cache of a transformers causal LM buys (latency) and costs (memory), measured.

    import kvbench
    loaded = kvbench.load_model("tiny")
    record = kvbench.measure(loaded, kvbench.Scenario(prompt_len=128, new_tokens=32))
"""

__version__ = "0.1.0"

from .errors import UserError
from .estimate import param_count, positions_processed_estimate, weight_bytes_estimate
from .kvcache import cache_nbytes, estimate_kv_cache_bytes, kv_cache_bytes_at, naive_kv_cache_bytes
from .measure import measure
from .models import LoadedModel, list_presets, load_model
from .plan import plan_capacity
from .results import load_results
from .runner import run_sweep
from .scenario import Scenario, grid

__all__ = [
    "LoadedModel", "Scenario", "UserError", "cache_nbytes", "estimate_kv_cache_bytes", "grid",
    "kv_cache_bytes_at", "list_presets", "load_model", "load_results", "measure", "naive_kv_cache_bytes",
    "param_count", "plan_capacity", "positions_processed_estimate", "run_sweep", "weight_bytes_estimate",
]
