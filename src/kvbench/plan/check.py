"""`kvbench plan --check RUN`: the planner's memory model against the allocated peaks a run measured.

    table, summary = kvbench.plan.check.check_run("results/cpu-memory")

For every record of the run with status ok and a measured `peak_allocated_delta_bytes` (the allocator's peak above
the level before `generate`), the model's estimate is recomputed from the record's scenario (`plan.records`: model
config, dtype, P, N, B, cache implementation, decoding, quantization) by `estimate.peak.peak_allocated_estimate`, the
function `kvbench run` calls to write the record's `peak_allocated_delta_bytes_estimate` and whose terms
`kvbench plan` adds to the weights and overhead. The signed error is (predicted - measured) / measured, positive
where the model overestimates. Where the recomputed figure differs from the one stored in the record (a record
written by another kvbench, or a model changed since), the row says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..estimate.peak import peak_allocated_estimate
from ..results.store import RECORDS, load_records
from ..units import fmt_bytes
from .records import ModelConfigs, missing, record_attention, record_dtype, record_scenario

COLUMNS = ["run", "scenario_id", "model", "dtype", "device", "measured_bytes", "predicted_bytes", "error_bytes",
           "error", "measured_phase", "predicted_phase", "stored_estimate_bytes", "stored_matches", "note"]


def records_files(run, option: str = "--check") -> list[Path]:
    """The records files of RUN: a records.jsonl file, a run folder's, or every one in the folders below it (a
    committed run such as results/cpu-memory keeps one run per configuration under runs/). Refuses, naming the
    value, a path that is none of these; reads nothing."""
    path = Path(run)
    if path.is_file():
        if path.suffix != ".jsonl":
            raise UserError(f"{option} {run}: not a run folder or records .jsonl file")
        return [path]
    if not path.is_dir():
        raise UserError(f"{option} {run}: no such file or folder")
    if (path / RECORDS).is_file():
        return [path / RECORDS]
    found = sorted(path.rglob(RECORDS))
    if not found:
        raise UserError(f"{option} {run}: no {RECORDS} in this folder or below it")
    return found


def _predict(record: dict, configs: ModelConfigs) -> tuple[dict | None, str]:
    try:
        config = configs(record["model"])
        estimate = peak_allocated_estimate(config, record_scenario(record), record_dtype(record),
                                           record_attention(record))
    except (UserError, NotImplementedError, ValueError, AttributeError, TypeError, KeyError, OSError) as exc:
        return None, f"not predicted: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return estimate, ""


def check_row(record: dict, configs: ModelConfigs) -> dict:
    """One record: measured, predicted (recomputed), the signed error, and the record's stored estimate."""
    measured = int(record["peak_allocated_delta_bytes"])
    estimate, note = _predict(record, configs)
    stored = record.get("peak_allocated_delta_bytes_estimate")
    stored = None if missing(stored) else int(stored)
    row = {"run": record.get("run"), "scenario_id": record.get("scenario_id"), "model": record.get("model"),
           "dtype": record.get("dtype"), "device": record.get("device"), "measured_bytes": measured,
           "predicted_bytes": None, "error_bytes": None, "error": None,
           "measured_phase": record.get("peak_allocated_phase"), "predicted_phase": None,
           "stored_estimate_bytes": stored, "stored_matches": None, "note": note}
    if estimate is None:
        return row
    predicted = int(estimate["peak_allocated_delta_bytes_estimate"])
    row.update(predicted_bytes=predicted, error_bytes=predicted - measured,
               error=(predicted - measured) / measured if measured else None,
               predicted_phase=estimate["peak_allocated_phase_estimate"])
    if stored is None:
        row["note"] = "the record stores no estimate"
    else:
        row["stored_matches"] = stored == predicted
        if stored != predicted:
            row["note"] = (f"stored estimate {stored:,} B differs from the recomputed one by "
                           f"{predicted - stored:+,} B")
    return row


def check_run(run) -> tuple[pd.DataFrame, dict]:
    """(a row per checked record, the summary) for a run folder, a records file, or a folder of runs."""
    rows, skipped = [], 0
    for path in records_files(run):
        configs = ModelConfigs(path.parent)
        for record in load_records(path):
            if record.get("status") != "ok":
                continue
            if missing(record.get("peak_allocated_delta_bytes")):
                skipped += 1  # ok, but no allocator peak measured (the CPU's RSS only, an older record)
                continue
            rows.append(check_row(record, configs))
    if not rows:
        raise UserError(f"--check {run}: no record with status ok and a measured peak_allocated_delta_bytes")
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table, summarize(table, str(run), skipped)


def summarize(table: pd.DataFrame, run: str, skipped: int = 0) -> dict:
    """Rows compared, the median |error|, the worst row, and how many rows' stored estimates differ."""
    compared = table[table["error"].notna()]
    errors = compared["error"].astype(float)
    worst = compared.loc[errors.abs().idxmax()] if len(compared) else None
    return {
        "run": run, "rows": len(compared), "not_predicted": int(table["predicted_bytes"].isna().sum()),
        "without_measured_peak": skipped,
        "median_abs_error": float(errors.abs().median()) if len(compared) else None,
        "worst_run": None if worst is None else worst["run"],
        "worst_scenario_id": None if worst is None else worst["scenario_id"],
        "worst_model": None if worst is None else Path(str(worst["model"])).stem,
        "worst_error": None if worst is None else float(worst["error"]),
        "stored_differs": int((table["stored_matches"] == False).sum()),  # noqa: E712 - None is neither
        "stored_missing": int(table["predicted_bytes"].notna().sum() - table["stored_matches"].notna().sum()),
    }


def summary_line(s: dict) -> str:
    """`results/cpu-memory: 14 rows, median |error| 0.11%, worst deepseek-v3-mla-moe P256-... +6.20%; ...`"""
    if not s["rows"]:
        line = f"{s['run']}: 0 rows compared"
    else:
        model = "" if s["worst_model"] in (None, s["worst_run"]) else f" ({s['worst_model']})"
        line = (f"{s['run']}: {s['rows']} rows, median |error| {s['median_abs_error']:.2%}, worst "
                f"{s['worst_run']} {s['worst_scenario_id']}{model} {s['worst_error']:+.2%}")
    if s["stored_differs"]:
        line += f"; the recomputed estimate differs from the record's stored one in {s['stored_differs']} rows"
    elif s["rows"] and not s["stored_missing"]:
        line += "; the recomputed estimate equals the record's stored one in every row"
    if s["stored_missing"]:
        line += f"; {s['stored_missing']} rows store no estimate"
    if s["not_predicted"]:
        line += f"; {s['not_predicted']} rows could not be predicted (see their note)"
    if s["without_measured_peak"]:
        line += f"; {s['without_measured_peak']} ok rows without a measured allocated peak left out"
    return line


def _signed_bytes(n) -> str:
    return "-" if missing(n) else ("+" if n >= 0 else "-") + fmt_bytes(abs(n))


def _phase(measured, predicted) -> str:
    """"prefill" where both say so, else "decode (model: prefill)"."""
    measured, predicted = measured or "-", predicted or "-"
    return measured if measured == predicted else f"{measured} (model: {predicted})"


def check_sections(table: pd.DataFrame) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows of text) for the CLI's table printer."""
    rows = []
    for r in table.to_dict("records"):
        stored = ("-" if missing(r["stored_estimate_bytes"]) else "same" if r["stored_matches"]
                  else fmt_bytes(r["stored_estimate_bytes"]))
        rows.append([str(r["run"]), str(r["scenario_id"]), Path(str(r["model"])).stem, str(r["dtype"]),
                     fmt_bytes(r["measured_bytes"]), fmt_bytes(r["predicted_bytes"]), _signed_bytes(r["error_bytes"]),
                     "-" if missing(r["error"]) else f"{r['error']:+.2%}",
                     _phase(r["measured_phase"], r["predicted_phase"]), stored, r["note"] or "-"])
    columns = ["run", "scenario", "model", "dtype", "measured", "predicted", "error", "error %", "peak at",
               "stored", "note"]
    return [("Peak allocated above the level before generate: measured against the planner's model", columns, rows)]


def check_json(table: pd.DataFrame, summary: dict) -> str:
    rows = json.loads(table.to_json(orient="records"))
    return json.dumps({"summary": summary, "rows": rows}, indent=1)
