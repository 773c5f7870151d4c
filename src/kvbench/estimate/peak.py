"""The allocated peak of one generate call above the level before it, estimated by the planner's memory model
(`estimate.capacity`) for exactly one scenario: the record's `peak_allocated_delta_bytes_estimate`, beside the
measured `peak_allocated_delta_bytes`. The plan's total is weights + this + overhead, so a plan is as good as it."""

from __future__ import annotations

from .capacity import Calibration, Target, Workload, breakdown

_NO_LIMIT = Target("no limit", 2**62, None)
_NO_OVERHEAD = Calibration(overhead_bytes=0)


def scenario_workload(config, scenario, dtype, attn_implementation: str | None = None,
                      name: str = "model") -> Workload:
    """The planner's workload for a scenario: its cache implementation, beams, quantization and decoding, in
    `dtype`, with the attention implementation the loaded model selected."""
    impl = scenario.cache_implementation if scenario.use_cache else "dynamic"
    return Workload(name, config, dtype, str(dtype).removeprefix("torch."), impl, scenario.num_beams,
                    scenario.quant_backend, scenario.quant_nbits, scenario.quant_residual_length, scenario.decoding,
                    attn_implementation)


def peak_allocated_estimate(config, scenario, dtype, attn_implementation: str | None = None) -> dict:
    """The estimated peak above the level before generate (the cache, its transients and the activations at the
    larger of the two moments), and the phase the model puts it in.

    Without the cache every forward is a prefill of the whole sequence, the last one the largest (P + N - 1
    positions), and only one layer's keys and values live at a time."""
    w = scenario_workload(config, scenario, dtype, attn_implementation)
    if not scenario.use_cache:
        length = scenario.total_len - 1
        b = breakdown(w, _NO_LIMIT, scenario.batch_size, length + 1, 1, _NO_OVERHEAD)
        kv = b["kv_cache_bytes"] // w.dims.cached_layers
        return {"peak_allocated_delta_bytes_estimate": kv + b["activation_bytes"],
                "peak_allocated_phase_estimate": "prefill" if scenario.new_tokens == 1 else "decode"}
    b = breakdown(w, _NO_LIMIT, scenario.batch_size, scenario.total_len, scenario.new_tokens, _NO_OVERHEAD)
    return {"peak_allocated_delta_bytes_estimate": b["kv_cache_bytes"] + b["kv_transient_bytes"]
            + b["activation_bytes"], "peak_allocated_phase_estimate": b["peak_phase"]}
