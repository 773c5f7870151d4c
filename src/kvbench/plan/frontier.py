"""The measured out-of-memory frontier: per batch size, the longest context that generates without running out.

    kvbench frontier --model phi-3-mini-4k --memory-cap 14.75GiB --batch-sizes 1,2,4,8

On a CUDA GPU, each probe runs one `generate` (`measure(..., repeats=1, warmup=0)`) of `context - new_tokens` prompt
tokens and `new_tokens` new ones; out-of-memory is caught, the memory freed, and the probe recorded with status
"oom". `--memory-cap` emulates a smaller card through `torch.cuda.set_per_process_memory_fraction`, set before the
model loads, so weights, cache and activations all count against it (the CUDA context does not: it lies outside
torch's allocator). Every probe is a record in `<run>/records.jsonl`, so `load_results` reads the run and
`frontier_table` derives the frontier from it; `compare_frontier` puts the planner's prediction beside it.

The search needs only a probe `(batch_size, context_len) -> record with status "ok" or "oom"`, so it runs on the CPU
with a fake probe in the tests: it gallops from a first guess (the plan's prediction) until it brackets the boundary,
then bisects down to `resolution` tokens, assuming that what fails at some context fails at every longer one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import pandas as pd
import torch

from ..errors import UserError
from ..estimate.capacity import Calibration, Target, longest_context, make_workload
from ..measuring.measure import error_line, free_memory, is_oom

Probe = Callable[[int, int], dict]
GROUP = ["run", "model", "dtype", "cache_implementation", "num_beams", "new_tokens", "memory_cap_bytes", "batch_size"]


def search_longest_context(probe: Probe, batch_size: int, *, min_context: int, max_context: int,
                           resolution: int = 128, guess: int | None = None, on_probe=None,
                           recover: Callable[[], None] = free_memory) -> dict:
    """Bracket then bisect the longest context in [min_context, max_context] whose probe is "ok".

    A probe that raises out-of-memory (instead of returning an "oom" record) counts as "oom" after `recover()`;
    any other status or exception stops the search. `on_probe(record)` sees every probe's record."""
    if not 1 <= min_context <= max_context:
        raise UserError(f"empty context range [{min_context}, {max_context}]")
    if resolution < 1:
        raise UserError(f"--resolution: {resolution} must be a positive number of tokens")
    ok, oom, count = None, None, 0

    def fits(context_len: int) -> bool:
        nonlocal count
        record = None
        try:
            record = dict(probe(batch_size, context_len))
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError too
            if not is_oom(exc):
                raise
            error = error_line(exc)  # the message only: the exception's traceback holds the probe's frames
        if record is None:  # out of the except block, where the probe's tensors are already gone
            recover()
            record = {"batch_size": batch_size, "status": "oom", "error": error}
        count += 1
        record.update(context_len=context_len, frontier_probe=count, frontier_min_context=min_context,
                      frontier_max_context=max_context, frontier_resolution=resolution)
        if on_probe is not None:
            on_probe(record)
        if record.get("status") not in ("ok", "oom"):
            raise RuntimeError(f"probe at batch {batch_size}, context {context_len} failed: {record.get('error')}")
        return record["status"] == "ok"

    context = min(max(guess or max_context, min_context), max_context)
    step = max(resolution, context // 8)
    while ok is None or oom is None:  # gallop from the guess until the boundary is bracketed or an end is reached
        if fits(context):
            ok = context
            if context == max_context:
                break
            context = min(max_context, context + step)
        else:
            oom = context
            if context == min_context:
                break
            context = max(min_context, context - step)
        step *= 2
    while ok is not None and oom is not None and oom - ok > resolution:
        mid = (ok + oom) // 2
        if fits(mid):
            ok = mid
        else:
            oom = mid
    limit = "nothing fits" if ok is None else "context window" if oom is None else "memory"
    return {"batch_size": batch_size, "longest_ok_context": ok, "shortest_oom_context": oom, "limit": limit,
            "probes": count}


def find_frontier(probe: Probe, batch_sizes, *, min_context: int, max_context: int, resolution: int = 128,
                  guesses: dict | None = None, writer=None, extra: dict | None = None,
                  recover: Callable[[], None] = free_memory) -> pd.DataFrame:
    """The frontier for each batch size; every probe's record (with `extra` fields) goes to `writer.write`."""

    def on_probe(record):
        if writer is not None:
            writer.write({**record, **(extra or {})})

    rows = [search_longest_context(probe, b, min_context=min_context, max_context=max_context,
                                   resolution=resolution, guess=(guesses or {}).get(b), on_probe=on_probe,
                                   recover=recover)
            for b in batch_sizes]
    return pd.DataFrame(rows)


def frontier_table(records: pd.DataFrame) -> pd.DataFrame:
    """The measured frontier from probe records: per batch size the longest context that ran and the shortest that
    ran out of memory (`consistent` is False where a longer context ran than one that failed)."""
    if "context_len" not in records or records["context_len"].isna().all():
        raise UserError("no frontier probes in these records (run `kvbench frontier` first)")
    df = records[records["context_len"].notna()].copy()
    for key in GROUP + ["frontier_max_context"]:
        if key not in df:
            df[key] = None
    df["memory_cap_bytes"] = pd.to_numeric(df["memory_cap_bytes"], errors="coerce").fillna(-1)
    rows = []
    for key, group in df.groupby(GROUP, dropna=False, sort=True):
        ok = group.loc[group["status"] == "ok", "context_len"]
        oom = group.loc[group["status"] == "oom", "context_len"]
        longest = int(ok.max()) if len(ok) else None
        shortest = int(oom.min()) if len(oom) else None
        window = group["frontier_max_context"].max()
        rows.append({
            **dict(zip(GROUP, key)), "longest_ok_context": longest, "shortest_oom_context": shortest,
            "limit": "nothing fits" if longest is None else
                     "context window" if shortest is None and longest == window else "memory",
            "probes": len(group), "consistent": longest is None or shortest is None or longest < shortest,
            "device_name": group.get("env_device_name", pd.Series([None])).iloc[0],
            "gpu_memory_bytes": group.get("env_gpu_memory_bytes", pd.Series([None])).iloc[0],
            "bandwidth_gbps": group.get("env_gpu_bandwidth_gbps", pd.Series([None])).iloc[0],
        })
    out = pd.DataFrame(rows)
    out["memory_cap_bytes"] = out["memory_cap_bytes"].where(out["memory_cap_bytes"] >= 0)
    return out


def frontier_target(row, calibration: Calibration | None = None) -> tuple[Target, Calibration]:
    """The memory the frontier ran under, and the calibration to predict it with: under a cap, the cap is the
    allocator's limit and the CUDA context lies outside it (overhead 0); without, the device's memory."""
    cal = calibration or Calibration()
    cap = row.get("memory_cap_bytes")
    if cap is not None and pd.notna(cap):
        return Target(f"cap {cap / 2**30:.2f} GiB", int(cap), row.get("bandwidth_gbps"), True,
                      "frontier memory cap"), replace(cal, overhead_bytes=0.0)
    total = row.get("gpu_memory_bytes")
    if total is None or pd.isna(total):
        raise UserError("frontier records carry neither a memory cap nor the GPU's memory: cannot predict them")
    return Target(str(row.get("device_name")), int(total), row.get("bandwidth_gbps"), True, "frontier device"), cal


def compare_frontier(records: pd.DataFrame, calibration: Calibration | None = None) -> pd.DataFrame:
    """Measured frontier beside the planner's longest context for the same model, settings and memory."""
    table = frontier_table(records)
    predicted, within = [], []
    for row in table.to_dict("records"):
        target, cal = frontier_target(row, calibration)
        w = make_workload(row["model"], row["dtype"], None, row["cache_implementation"], int(row["num_beams"]))
        answer = longest_context(w, target, int(row["batch_size"]), int(row["new_tokens"]), cal)
        pred = answer["context_len"] if answer["fits"] else None
        predicted.append(pred)
        lo, hi = row["longest_ok_context"], row["shortest_oom_context"]  # NaN where missing
        if pred is None:
            within.append(pd.isna(lo))
        else:
            within.append((pd.isna(lo) or pred >= lo) and (pd.isna(hi) or pred < hi))
    table["predicted_longest_context"] = predicted
    table["prediction_error"] = [
        (p - m) / m if p is not None and pd.notna(m) and m else None
        for p, m in zip(predicted, table["longest_ok_context"])
    ]
    table["prediction_within_bracket"] = within
    return table


# ---------------------------------------------------------------------------------------------- on a real GPU
def cuda_probe(loaded, new_tokens: int, cache_implementation: str = "dynamic", num_beams: int = 1) -> Probe:
    """A probe that runs one generate of `context - new_tokens` prompt tokens on the loaded CUDA model."""
    from ..inputs.scenario import Scenario
    from ..measuring.measure import measure

    decoding = "beam" if num_beams > 1 else "greedy"

    def probe(batch_size: int, context_len: int) -> dict:
        scenario = Scenario(context_len - new_tokens, new_tokens, batch_size, True, cache_implementation,
                            decoding=decoding, num_beams=num_beams)
        return measure(loaded, scenario, repeats=1, warmup=0)  # catches out-of-memory and frees memory

    return probe


def apply_memory_cap(cap_bytes: int, device: torch.device) -> float:
    """Limit torch's allocator on `device` to `cap_bytes` (a fraction of the device's memory); returns the fraction."""
    total = torch.cuda.get_device_properties(device).total_memory
    if cap_bytes > total:
        raise UserError(f"--memory-cap: {cap_bytes / 2**30:.2f} GiB is more than this GPU's {total / 2**30:.2f} GiB")
    fraction = cap_bytes / total
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
