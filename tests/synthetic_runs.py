"""Synthetic run folders for the report and compare tests: records with the schema `kvbench run` writes,
built from a small attention shape, written through `results.RunWriter`."""

from __future__ import annotations

from pathlib import Path

from kvbench.results.schema import SCHEMA_VERSION
from kvbench.results.store import RunWriter

LAYERS, HEADS, KV_HEADS, HEAD_DIM, ELEMENT_BYTES = 4, 8, 4, 32, 4  # grouped-query: naive formula is 2x
WEIGHT_BYTES = 13_000_000

ENV = {
    "env_kvbench": "0.1.0", "env_torch": "2.13.0+cpu", "env_transformers": "5.24.0", "env_python": "3.11.7",
    "env_platform": "Linux", "env_cpu": "Test CPU", "env_cpu_count": 2, "env_git_commit": "abc123",
    "env_device": "cpu", "env_device_name": "Test CPU", "env_cuda": None, "env_driver": None,
    "env_gpu_memory_bytes": None, "env_gpu_bandwidth_gbps": None, "env_gpu_bandwidth_source": None,
    "env_ram_bytes": 64 * 2**30,
}
GPU_ENV = {**ENV, "env_device": "cuda", "env_device_name": "NVIDIA H100 80GB HBM3", "env_cuda": "12.8",
           "env_driver": "570.1", "env_gpu_memory_bytes": 85_000_000_000, "env_gpu_bandwidth_gbps": 3352.3,
           "env_gpu_bandwidth_source": "NVML (2 x max memory clock x bus width)"}


def kv_bytes(tokens: int, batch: int, kv_heads: int = KV_HEADS) -> int:
    return 2 * LAYERS * kv_heads * HEAD_DIM * ELEMENT_BYTES * tokens * batch


def record(prompt_len: int, new_tokens: int, batch_size: int, use_cache: bool, *, model: str = "tiny-llama",
           dtype: str = "float32", cache_implementation: str = "dynamic", slow: float = 1.0, spread: float = 0.02,
           env: dict | None = None, kv_scale: float = 1.0, peak_extra_bytes: int = 0, repeats: int = 3,
           **extra) -> dict:
    """One "ok" record. `slow` scales every latency; `spread` sets (max - min) / median of the `repeats` timed
    repeats (evenly spaced around the median); `extra` fields are added as they are."""
    impl = cache_implementation if use_cache else None  # cache-only axes are null without the cache
    cache = f"cache-{impl}" if use_cache else "nocache"
    seq = prompt_len + new_tokens - 1
    if use_cache:
        steps = [slow * 0.001 * (1 + 0.01 * batch_size)] * (new_tokens - 1)
        positions = [prompt_len] + [1] * (new_tokens - 1)
    else:
        steps = [slow * (0.001 + 4e-5 * (prompt_len + k + 1) * batch_size) for k in range(new_tokens - 1)]
        positions = [prompt_len + k for k in range(new_tokens)]
    ttft = slow * (0.001 + 1e-5 * prompt_len * batch_size)
    total = ttft + sum(steps)
    kv = int(kv_bytes(seq, batch_size) * kv_scale) if use_cache else 0
    env = env or ENV
    per_step = WEIGHT_BYTES + kv_bytes(prompt_len + new_tokens // 2, batch_size) if use_cache else None
    step_s = sorted(steps)[len(steps) // 2] if steps else None
    achieved = per_step / step_s / 1e9 if per_step and step_s else None
    peak_gbps = env.get("env_gpu_bandwidth_gbps")
    return {
        "schema_version": SCHEMA_VERSION, "model": model, "model_source": "config.json (random weights)", "model_type": "llama",
        "device": env["env_device"], "dtype": dtype,
        "scenario_id": f"P{prompt_len}-N{new_tokens}-B{batch_size}-{cache}-greedy",
        "prompt_len": prompt_len, "new_tokens": new_tokens, "batch_size": batch_size, "use_cache": use_cache,
        "cache_implementation": impl, "compile": "auto" if use_cache else None, "decoding": "greedy", "num_beams": 1, "seed": 0, "status": "ok", "error": None,
        "weight_bytes_estimate": WEIGHT_BYTES,
        "positions_processed_estimate": (seq if use_cache
                                         else new_tokens * prompt_len + new_tokens * (new_tokens - 1) // 2),
        "kv_cache_bytes_estimate": kv_bytes(seq, batch_size) if use_cache else 0,
        "kv_cache_bytes_naive": kv_bytes(seq, batch_size, HEADS) if use_cache else 0,
        **env,
        "repeats": repeats, "total_s": total, "total_s_repeats": spaced(total, spread, repeats),
        "ttft_s": ttft, "ttft_s_repeats": spaced(ttft, spread, repeats) if repeats > 3 else [ttft] * 3,
        "decode_step_s": step_s,
        "decode_step_s_repeats": spaced(step_s, spread, repeats) if repeats > 3 else [step_s] * 3,
        "decode_steps_s": steps, "forward_calls": new_tokens, "positions_per_call": positions,
        "positions_processed": sum(positions), "generated_tokens": new_tokens, "kv_cache_bytes": kv,
        "peak_memory_delta_bytes": kv + 4096 * batch_size + peak_extra_bytes,
        "peak_memory_source": "torch.cuda.max_memory_allocated" if peak_gbps else "process peak RSS (VmHWM)",
        "tokens_per_s": new_tokens * batch_size / total, "weight_bytes": WEIGHT_BYTES,
        "decode_bytes_per_step_estimate": per_step,
        "decode_roofline_s": per_step / (peak_gbps * 1e9) if per_step and peak_gbps else None,
        "achieved_bandwidth_gbps": achieved,
        "bandwidth_fraction": achieved / peak_gbps if achieved and peak_gbps else None,
        **extra,
    }


def spaced(median: float, spread: float, n: int) -> list[float]:
    """n values evenly spaced from median (1 - spread / 2) to median (1 + spread / 2)."""
    return [median * (1 - spread / 2 + spread * i / (n - 1)) for i in range(n)] if n > 1 else [median]


def grid(prompts=(16, 64), news=(8, 16), batches=(1, 2), caches=(True, False), **kwargs) -> list[dict]:
    return [record(p, n, b, c, **kwargs) for p in prompts for n in news for b in batches for c in caches]


def write_run(run_dir: Path, records: list[dict]) -> Path:
    with RunWriter(run_dir, {"schema_version": 1, "model": records[0]["model"]}) as writer:
        for rec in records:
            writer.write(rec)
    return Path(run_dir)


def write_benchmark_json(path: Path, records: list[dict]) -> Path:
    """A pytest-benchmark JSON file as kvbench's pytest plugin writes it: the record in `extra_info`, the timing
    of the whole generate in `stats`."""
    import json

    benchmarks = []
    for rec in records:
        rounds = rec["total_s_repeats"]
        extra = {k: v for k, v in rec.items() if k not in ("total_s", "total_s_repeats", "repeats", "tokens_per_s")}
        benchmarks.append({
            "group": None, "name": f"test_sweep[{rec['scenario_id']}]",
            "fullname": f"bench/test_bench_sweep.py::test_sweep[{rec['scenario_id']}]",
            "params": None, "param": rec["scenario_id"], "extra_info": extra, "options": {},
            "stats": {"min": min(rounds), "max": max(rounds), "mean": sum(rounds) / len(rounds),
                      "median": sorted(rounds)[len(rounds) // 2], "rounds": len(rounds), "iterations": 1,
                      "data": rounds},
        })
    path.write_text(json.dumps({"machine_info": {"node": "test"}, "commit_info": {}, "benchmarks": benchmarks,
                                "datetime": "2026-01-01T00:00:00", "version": "5.2.3"}))
    return path
