"""The parts of a record that do not time anything: the estimates known before generate runs (`base_record`), the
summary of the timed repeats (`summarize`), what compilation did, and the handling of out-of-memory."""

from __future__ import annotations

import gc
import statistics

import torch

from ..errors import UserError
from ..estimate.kvcache import estimate_kv_cache_bytes, estimate_kv_cache_bytes_by_kind, naive_kv_cache_bytes
from ..estimate.offload import estimate_kv_cache_bytes_by_device
from ..estimate.peak import peak_allocated_estimate
from ..estimate.positions import positions_processed_estimate
from ..estimate.weights import weight_bytes_estimate
from ..inputs.scenario import Scenario
from ..results.cache_fields import device_fields, is_cache_field, kind_fields
from ..results.schema import SCHEMA_VERSION
from ..results.stats import repeat_statistics
from .engines.caches import check_cache
from .instruments.energy import energy_fields
from .loading.models import LoadedModel
from .loading.placement import placement_fields


def is_oom(exc: BaseException) -> bool:
    """Out-of-memory as torch raises it, and the allocation failures cuBLAS/cuDNN report near a memory cap."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type where the message is empty)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def free_memory(device: torch.device | str | None = None) -> None:
    """Drop what a failed or finished call left behind, so the next one starts from the same level.

    Call it after leaving the `except` block that caught the failure: until then the exception's traceback keeps
    the failed call's frames, and the tensors they hold, alive. `device`: the CUDA device whose peak statistics
    restart (None: the current one); on a CPU device only the garbage is collected.
    """
    gc.collect()
    if (device is None or torch.device(device).type == "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def as_loaded(model) -> LoadedModel:
    """Accept a LoadedModel or a bare transformers model."""
    if isinstance(model, LoadedModel):
        return model
    if not hasattr(model, "parameters") or not hasattr(model, "config"):
        raise TypeError(f"model must be a kvbench LoadedModel or a transformers model, got {str(model)[:60]!r} "
                        f"({type(model).__name__}); load one with kvbench.load_model(name)")
    param = next(model.parameters())
    return LoadedModel(
        name=getattr(model.config, "_name_or_path", "") or type(model).__name__, model=model,
        config=model.config, device=param.device, dtype=param.dtype, source="in-memory model",
    )


def check_fits(loaded: LoadedModel, scenario: Scenario) -> None:
    if loaded.context_len and scenario.total_len > loaded.context_len:
        raise UserError(
            f"prompt_len + new_tokens = {scenario.total_len} exceeds {loaded.name}'s context of "
            f"{loaded.context_len} tokens"
        )
    check_cache(loaded, scenario)


# Peaks above the level before a generate that count the reused static cache as the generate's (allocated memory;
# reserved memory and NVML's reading are left as read: a fresh cache would often reuse freed blocks there).


def base_record(loaded: LoadedModel, scenario: Scenario) -> dict:
    """Who, what, where and the analytic estimates: everything known before generate runs."""
    config, dtype = loaded.config, loaded.dtype
    seq_len = scenario.total_len - 1  # the last sampled token is never fed back
    record = {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.name,
        "model_source": loaded.source,
        "model_type": getattr(config, "model_type", None),
        "device": str(loaded.device),
        "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": attention_of(loaded),
        "scenario_id": scenario.id,
        **scenario.as_dict(),
        "status": "ok",
        "error": None,
        "weight_bytes_estimate": weight_bytes_estimate(config, dtype),
        "positions_processed_estimate": positions_processed_estimate(
            scenario.prompt_len, scenario.new_tokens, scenario.use_cache
        ),
        "kv_cache_bytes_estimate": 0,
        "kv_cache_bytes_naive": 0,
    }
    if scenario.use_cache:
        try:
            by_kind = kv_estimate_by_kind(config, scenario, dtype)
            total = sum(by_kind.values())
            record.update(kv_cache_bytes_estimate=total, **kind_fields(by_kind, estimate=True))
            if loaded.device_map is None:  # a placed model: each layer's estimate where the layer runs, below
                record.update(device_fields(kv_device_estimate(loaded, scenario, total), estimate=True))
        except (NotImplementedError, ValueError) as exc:  # an architecture whose cache kvbench cannot predict exactly
            record.update(kv_cache_bytes_estimate=None, kv_cache_estimate_error=str(exc))
        sequences = scenario.batch_size * scenario.num_beams
        record["kv_cache_bytes_naive"] = naive_kv_cache_bytes(config, batch_size=sequences, seq_len=seq_len, dtype=dtype)
    record.update(peak_estimate(loaded, scenario))
    if loaded.device_map is not None:
        try:
            by_layer = kv_estimate(config, scenario, dtype, by_layer=True) if record["kv_cache_bytes_estimate"] else None
        except (NotImplementedError, ValueError):  # estimated as a whole only (the quantized cache)
            by_layer = None
        record.update(placement_fields(loaded, by_layer))
    return record


def attention_of(loaded: LoadedModel) -> str | None:
    """The attention implementation the loaded model selected (`eager`, `sdpa`, ...); None where it names none."""
    attn = getattr(loaded.config, "_attn_implementation", None)
    return attn if isinstance(attn, str) else None


def peak_estimate(loaded: LoadedModel, scenario: Scenario) -> dict:
    """The planner's estimate of `peak_allocated_delta_bytes` for exactly this scenario, with the attention the
    loaded model selected (None, and the reason, where the model cannot estimate it)."""
    try:
        return peak_allocated_estimate(loaded.config, scenario, loaded.dtype, attention_of(loaded))
    except (NotImplementedError, ValueError, UserError, AttributeError, TypeError) as exc:
        return {"peak_allocated_delta_bytes_estimate": None, "peak_allocated_phase_estimate": None,
                "peak_allocated_estimate_error": str(exc)}


def kv_estimate(config, scenario: Scenario, dtype, by_layer: bool = False) -> int | list[int]:
    """The scenario's estimated cache bytes (paged: the pool it reserves); `by_layer`: one figure per layer."""
    if by_layer:
        return estimate_kv_cache_bytes(
            config, batch_size=scenario.batch_size, prompt_len=scenario.prompt_len, new_tokens=scenario.new_tokens,
            dtype=dtype, num_beams=scenario.num_beams, cache_implementation=scenario.cache_implementation,
            by_layer=True)
    return sum(kv_estimate_by_kind(config, scenario, dtype).values())


def kv_estimate_by_kind(config, scenario: Scenario, dtype) -> dict[str, int]:
    """The scenario's estimated cache bytes, by kind (paged: the pool it reserves)."""
    if scenario.cache_implementation == "paged":
        from ..estimate.paged import paged_pool_bytes, paged_sizing

        sizing = paged_sizing(scenario.batch_size, scenario.prompt_len, scenario.new_tokens)
        return {"paged_pool": paged_pool_bytes(config, dtype=dtype, num_blocks=sizing.num_blocks,
                                               page_size=sizing.page_size)}
    return estimate_kv_cache_bytes_by_kind(
        config, batch_size=scenario.batch_size, prompt_len=scenario.prompt_len, new_tokens=scenario.new_tokens,
        dtype=dtype, num_beams=scenario.num_beams, cache_implementation=scenario.cache_implementation,
        quant_backend=scenario.quant_backend, quant_nbits=scenario.quant_nbits,
        residual_length=scenario.quant_residual_length,
    )


def kv_device_estimate(loaded: LoadedModel, scenario: Scenario, total: int) -> dict[str, int]:
    """The scenario's estimated cache bytes by device (offloaded caches: GPU and host)."""
    return estimate_kv_cache_bytes_by_device(
        loaded.config, device=loaded.device, batch_size=scenario.batch_size, prompt_len=scenario.prompt_len,
        new_tokens=scenario.new_tokens, dtype=loaded.dtype, num_beams=scenario.num_beams,
        cache_implementation=scenario.cache_implementation, total=total)


def decode_ran_compiled(run: dict) -> bool | None:
    """Whether every decode forward (calls 2..N) of one generate ran as compiled code; None if unknown or none."""
    compiled = run["forward_compiled"]
    if compiled is None or len(compiled) < 2:
        return None
    return all(compiled[1:])


def compile_record(warm: list[dict], runs: list[dict], graphs: list, reused_cache: bool) -> dict:
    """What compilation really did: compiled decode in the timed repeats, the compiling warm-up's time, graph counts."""
    per_run = [decode_ran_compiled(r) for r in runs]
    decode_compiled = None if None in per_run else all(per_run)
    first = warm[0] if warm else None
    count = [None if None in (a, b) else b - a for a, b in zip(graphs, graphs[1:])]
    return {
        "decode_compiled": decode_compiled,
        "compile_s": first["total_s"] if first and decode_ran_compiled(first) else None,
        "compile_graphs": count[0],
        "compile_graphs_timed": count[1],
        "warmup_runs": len(warm),
        "kv_cache_reused": reused_cache,
    }


def summarize(runs: list[dict]) -> dict:
    """Medians over repeats (raw repeats kept), the per-step latencies of the median repeat, and memory peaks."""
    totals = [r["total_s"] for r in runs]
    step_medians = [statistics.median(r["decode_steps_s"]) if r["decode_steps_s"] else None for r in runs]
    median_run = runs[sorted(range(len(runs)), key=totals.__getitem__)[len(runs) // 2]]
    last = runs[-1]
    positions = last["positions"]
    out = {
        "repeats": len(runs),
        "total_s": statistics.median(totals),
        "total_s_repeats": totals,
        "ttft_s": statistics.median(r["ttft_s"] for r in runs),
        "ttft_s_repeats": [r["ttft_s"] for r in runs],
        "decode_step_s": statistics.median(step_medians) if step_medians[0] is not None else None,
        "decode_step_s_repeats": step_medians,
        "decode_steps_s": median_run["decode_steps_s"],
        "forward_calls": len(positions),
        "positions_per_call": positions,
        "positions_processed": sum(positions),
        "generated_tokens": last["generated_tokens"],
        "cache_class": last.get("cache_class"),
        "kv_cache_bytes": last["kv_cache_bytes"],
        **{key: value for key, value in last.items() if is_cache_field(key)},  # by kind, by device
    }
    memory_keys = [k for k in last if k.endswith("_bytes") and k not in out]
    for key in memory_keys:  # peaks: the largest over repeats; levels (before, after): the last repeat's
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = (max(values) if "peak" in key or "delta" in key else values[-1]) if values else None
    out.update((k, v) for k, v in last.items() if k.endswith("_source"))  # peak_memory_source, nvml_used_source
    out.update(repeat_statistics(runs))  # intervals, spread, TTFT / TPOT / ITL percentiles (results.stats)
    out.update(energy_fields(runs))  # joules per token and mean power where a counter is readable
    return out
