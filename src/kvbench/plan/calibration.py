"""Calibration: fit the planner's activation, overhead and decode-speed terms to measured records.

    calibration, report = kvbench.calibration.calibrate(kvbench.load_results("results/run-a100"))
    kvbench.plan_capacity("phi-3-mini-4k", gpu="t4", calibration=calibration)

What is fitted, from records with the cache on (status ok), each term from the records that measured it:

* activations (any device whose allocator peak was measured: CUDA's `torch.cuda.max_memory_allocated`, the CPU's
  profiler allocation events): the planner predicts the peak above the level before `generate` as
  max(KV at the prefill + activations at the prefill, KV at the last step + activations of the last step), KV
  with the quantized cache's transient, for each record's own scenario (`plan.records`: cache implementation,
  beams, decoding, quantization); the measured peak is `peak_allocated_delta_bytes`. Activations = scale x analytic
  activations + offset is fitted by least squares, each record assigned to the moment (prefill or decode) the
  fitted model says is its peak, repeated until the assignment settles.
* overhead: what the device holds beyond the tensors at the peak, NVML's used memory after the call minus the
  allocator's level before and its peak delta (CUDA context, cached allocator blocks, other libraries); the
  largest seen is kept, so that plans stay on the safe side.
* decode speed: step time = step_overhead_s + bytes read per step / (fraction x datasheet bandwidth), fitted by
  least squares of the measured median step (`decode_step_s`) on the roofline time
  (`decode_bytes_per_step_estimate` / `env_gpu_bandwidth_gbps`; CUDA runs: a CPU has no GPU bandwidth).

A term no record measured keeps its default; the calibration's `source` (the plan's `calibration` column and
header) names the terms fitted and those kept ("fitted: activations; defaults kept: overhead (no NVML readings),
..."), and its `fitted` lists the terms fitted.

The report has one row per record used, measured beside predicted, so one can see how well the fit matches the
records it came from.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from ..errors import UserError
from ..estimate import plan_kv
from ..estimate.capacity import Calibration, activation_decode_bytes, activation_prefill_bytes
from ..estimate.peak import scenario_workload
from .records import ModelConfigs, record_attention, record_dtype, record_scenario

ALLOCATOR_PEAKS = ("torch.cuda.max_memory_allocated", "torch.profiler allocation events")  # peak_memory_source of an allocator's peak


def _workloads(df: pd.DataFrame) -> list:
    """The planner's Workload of each record's scenario, as `kvbench run` built it to estimate the record's peak."""
    configs = ModelConfigs()
    out = []
    for record in df.to_dict("records"):
        scenario = record_scenario(record)
        out.append((scenario_workload(configs(record["model"]), scenario, record_dtype(record),
                                      record_attention(record), name=str(record["model"])), scenario))
    return out


def _usable(df: pd.DataFrame) -> pd.DataFrame:
    need = {"status", "use_cache", "device", "model", "dtype", "prompt_len", "new_tokens", "batch_size"}
    missing = need - set(df.columns)
    if missing:
        raise UserError(f"records lack {', '.join(sorted(missing))}: not kvbench run records")
    ok = df[(df["status"] == "ok") & df["use_cache"].astype(bool)]
    return ok.reset_index(drop=True)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(df[name], errors="coerce") if name in df else pd.Series(np.nan, index=df.index)


def _stored_kv(moment: dict) -> int:
    return moment["kv_cache_bytes"] + moment["kv_transient_bytes"]


def fit_memory(df: pd.DataFrame) -> tuple[float, float, pd.DataFrame]:
    """(activation_scale, activation_offset_bytes, per-record table) from allocator peaks."""
    peaks = _column(df, "peak_allocated_delta_bytes")
    source = df.get("peak_memory_source", pd.Series("", index=df.index)).astype(str)
    rows = df[peaks.notna() & source.str.startswith(ALLOCATOR_PEAKS)]
    if rows.empty:
        return 1.0, 0.0, pd.DataFrame()
    terms = []
    for w, s in _workloads(rows):
        b, p, n = s.batch_size, s.prompt_len, s.new_tokens
        terms.append((_stored_kv(plan_kv.prefill_kv(w, b, p, p + n)),
                      activation_prefill_bytes(w, b * w.num_beams, p, p + n),
                      _stored_kv(plan_kv.decode_kv(w, b, p + n, n)), activation_decode_bytes(w, b, p + n, n), n >= 2))
    kvp, ap, kvd, ad, has_decode = (np.array(col, dtype=float) for col in zip(*terms))
    has_decode = has_decode.astype(bool)
    y = peaks[rows.index].to_numpy(dtype=float)

    def predict(scale, offset):
        prefill = kvp + np.maximum(0, scale * ap + offset)
        decode = np.where(has_decode, kvd + np.maximum(0, scale * ad + offset), -np.inf)
        return np.maximum(prefill, decode), decode > prefill

    decode = np.zeros(len(y), dtype=bool)
    scale, offset = 1.0, 0.0
    for _ in range(20):
        act, kv = np.where(decode, ad, ap), np.where(decode, kvd, kvp)
        scale, offset = _line(act, y - kv)
        _, new = predict(scale, offset)
        if (new == decode).all():
            break
        decode = new
    predicted, decode = predict(scale, offset)
    analytic, _ = predict(1.0, 0.0)
    report = pd.DataFrame({
        "term": "peak memory", "run": rows.get("run"), "model": rows["model"], "scenario_id": rows.get("scenario_id"),
        "measured": y, "predicted": predicted, "analytic": analytic,
        "peak_phase": np.where(decode, "decode", "prefill"),
    })
    return scale, offset, report


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares y = slope x + intercept with slope >= 0; through the origin with one distinct x."""
    if len(np.unique(x)) >= 2:
        slope, intercept = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), y, rcond=None)[0]
        if slope >= 0:
            return float(slope), float(intercept)
        return 0.0, float(np.mean(y))
    if x.any():
        return max(0.0, float(np.dot(x, y) / np.dot(x, x))), 0.0
    return 0.0, float(np.mean(y))


def fit_overhead(df: pd.DataFrame) -> tuple[float | None, pd.DataFrame]:
    """The largest (NVML used after the call - allocator level before - allocator peak delta) over records."""
    used, before, delta = (_column(df, c) for c in
                           ("nvml_used_after_bytes", "allocated_before_bytes", "peak_allocated_delta_bytes"))
    used = used.fillna(_column(df, "nvml_used_peak_bytes"))  # the same reading, as older runs named it
    overhead = (used - before - delta).dropna()
    if overhead.empty:
        return None, pd.DataFrame()
    value = float(overhead.max())
    report = pd.DataFrame({"term": "overhead", "run": df.loc[overhead.index].get("run"),
                           "model": df.loc[overhead.index, "model"],
                           "scenario_id": df.loc[overhead.index].get("scenario_id"),
                           "measured": overhead.to_numpy(), "predicted": value})
    return value, report


def fit_decode(df: pd.DataFrame) -> tuple[float | None, float, pd.DataFrame]:
    """(bandwidth_fraction, step_overhead_s, per-record table): step = t0 + roofline / fraction."""
    step, per_step, bandwidth = (_column(df, c) for c in
                                 ("decode_step_s", "decode_bytes_per_step_estimate", "env_gpu_bandwidth_gbps"))
    roofline = per_step / (bandwidth * 1e9)
    keep = roofline.notna() & step.notna() & (step > 0)
    if not keep.any():
        return None, 0.0, pd.DataFrame()
    x, y = roofline[keep].to_numpy(), step[keep].to_numpy()
    slope, intercept = _line(x, y)
    if slope <= 0 or intercept < 0:  # no sensible fixed cost per step: through the origin
        slope, intercept = float(np.dot(x, y) / np.dot(x, x)), 0.0
    fraction = 1.0 / slope
    report = pd.DataFrame({"term": "decode step", "run": df.loc[keep].get("run"), "model": df.loc[keep, "model"],
                           "scenario_id": df.loc[keep].get("scenario_id"), "measured": y,
                           "predicted": intercept + x / fraction, "analytic": x})
    return fraction, intercept, report


def calibrate(records, base: Calibration | None = None) -> tuple[Calibration, pd.DataFrame]:
    """Fit the planner's terms to records (a DataFrame from `load_results`, or run paths); returns the calibration
    and a report (term, record, measured, predicted, analytic default) of how well it matches its own records."""
    from ..results.store import load_results

    df = records if isinstance(records, pd.DataFrame) else load_results(*records)
    ok = _usable(df)
    if ok.empty:
        raise UserError("no record with the cache on and status ok: nothing to calibrate")
    if "run" not in ok:
        ok = ok.assign(run="")
    scale, offset, memory = fit_memory(ok)
    overhead, overhead_report = fit_overhead(ok)
    fraction, t0, decode = fit_decode(ok)
    if memory.empty and overhead is None and fraction is None:
        raise UserError(f"{len(ok)} records with the cache on, none with an allocator peak, NVML readings or a "
                        "GPU bandwidth: nothing to calibrate")
    base = base or Calibration()
    runs = sorted(set(ok["run"].astype(str)) - {""})
    fitted = {"activations": not memory.empty, "overhead": overhead is not None, "decode speed": fraction is not None}
    calibration = replace(
        base,
        activation_scale=scale if not memory.empty else base.activation_scale,
        activation_offset_bytes=offset if not memory.empty else base.activation_offset_bytes,
        overhead_bytes=overhead if overhead is not None else base.overhead_bytes,
        bandwidth_fraction=fraction if fraction is not None else base.bandwidth_fraction,
        step_overhead_s=t0 if fraction is not None else base.step_overhead_s,
        source=f"calibrated on {len(ok)} records" + (f" ({', '.join(runs)})" if runs else "") + fitted_terms(fitted),
        fitted=tuple(term for term, ok in fitted.items() if ok),
    )
    report = pd.concat([r for r in (memory, overhead_report, decode) if not r.empty], ignore_index=True)
    report["error"] = (report["predicted"] - report["measured"]) / report["measured"].where(report["measured"] != 0)
    return calibration, report


WHY_NOT = {"activations": "no allocator peak", "overhead": "no NVML readings", "decode speed": "no GPU bandwidth"}


def fitted_terms(fitted: dict[str, bool]) -> str:
    """"; fitted: activations; defaults kept: overhead (no NVML readings), ..." for the calibration's source."""
    done = [term for term, ok in fitted.items() if ok]
    kept = [f"{term} ({WHY_NOT[term]})" for term, ok in fitted.items() if not ok]
    return f"; fitted: {', '.join(done)}" + (f"; defaults kept: {', '.join(kept)}" if kept else "")


def fit_quality(report: pd.DataFrame) -> pd.DataFrame:
    """Per term: records, median and largest relative error of the fitted prediction (and of the analytic default)."""
    rows = []
    for term, group in report.groupby("term", sort=False):
        err = group["error"].abs()
        row = {"term": term, "records": len(group), "median_abs_error": err.median(), "max_abs_error": err.max()}
        if "analytic" in group and group["analytic"].notna().any():
            analytic = ((group["analytic"] - group["measured"]) / group["measured"]).abs()
            row["analytic_median_abs_error"] = analytic.median()
        rows.append(row)
    return pd.DataFrame(rows)
