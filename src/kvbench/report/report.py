"""`kvbench report RUN... [--out DIR]`: one or several runs (run folders, records.jsonl, pytest-benchmark JSON)
as a self-contained HTML page, a Markdown page, each figure as PNG and SVG, and each table as CSV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..results.frame import SPREAD_LIMIT, with_spread
from ..units import fmt_bytes
from ..version import __version__
from .caveats import busy_suffix, contention_summary, interval_text
from .pages import Page, Section, Table, write_page

RUN_FIELDS = ["model", "model_source", "model_type", "device", "dtype"]


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: `kvbench.plots.<name>_table` and `plots.plot_<name>` draw it."""

    name: str  # figures/<name>.png|svg, tables/<name>.csv
    title: str
    how_to_read: str
    display: str | None = None  # a `plots` function giving a shorter table to show (the CSV keeps all)
    note: str | None = None  # a `plots` function of the table giving a note to show, or None
    module: str = "plots"  # the report module that draws it (cache_plots: the figures comparing implementations)

    def call(self, what: str, *args):
        import importlib  # matplotlib loads only when a report is drawn

        return getattr(importlib.import_module(f".{self.module}", __package__), what)(*args)


FIGURES = [
    FigureSpec(
        "speedup", "Speedup: latency without the cache over latency with it",
        "Each point is one scenario: the median generate latency without the cache divided by the median with it. "
        "Above the dotted line at 1 the cache wins. Without the cache every step reprocesses the whole sequence, "
        "so the gain grows with the prompt length and the number of new tokens; on small models and short "
        "sequences, per-step overheads can hide it.",
    ),
    FigureSpec(
        "decode_steps", "Per-step decode latency by position",
        "Each line is the median repeat of one scenario; decode step k feeds position prompt_len + k. With the "
        "cache (solid) a step processes one new position and reads the cache, so its latency stays nearly flat; "
        "without it (dashed) a step reprocesses the whole sequence so far, so its latency grows with the position. "
        "Of scenarios that differ only in their number of new tokens, the longest is drawn.",
        display="decode_steps_summary",
    ),
    FigureSpec(
        "positions", "Token positions processed per generate",
        "Positions the model's forward passes processed per sequence during one generate, counted by a hook on "
        "forward (dots), against the analytic count (dashed): P + N - 1 with the cache (the prompt once, then one "
        "position per step), N*P + N(N-1)/2 without it (every step reprocesses everything). A dot off its line "
        "means generate did work the analytic model does not describe.",
    ),
    FigureSpec(
        "memory", "Memory: measured KV-cache bytes against the estimates",
        "Left: each point puts a measurement (y) against a prediction (x); on the dotted y = x line the prediction "
        "is exact. Blue: the bytes the returned cache holds against kvbench's exact estimate (per layer: key/value "
        "heads, sliding windows, beams, static preallocation). Orange: the same bytes against the naive formula "
        "2 x layers x attention heads x head_dim x tokens x bytes per element, which ignores grouped-query "
        "attention and sliding windows and lands off the line where they apply. Green: peak memory above the "
        "baseline during generate (its source is in the title): the cache plus activations and allocator slack. "
        "Right: each prediction over the measured cache bytes (1 = exact).",
        note="memory_note",
    ),
    FigureSpec(
        "bandwidth", "Decode roofline: achieved memory bandwidth",
        "A cached decode step must read every weight and the whole KV cache once; those bytes over the measured "
        "median step time are the bandwidth it achieved. The dashed line is the GPU's peak memory bandwidth "
        "(NVML, or the bundled GPU table). Decode is memory-bound: points near the roof run about as fast as the "
        "memory allows; far below it, overheads (kernel launches, Python, small batches) dominate.",
        note="bandwidth_note",
    ),
    FigureSpec(
        "peak_parity", "Peak allocated memory: measured against the planner's estimate",
        "Each point is one scenario: the most bytes torch's tensors held during generate above the level before it "
        "(y; the CPU counts them from the profiler's allocation events, CUDA from its allocator's peak; a static "
        "cache kvbench reuses counts as the call's) against the planner's estimate of exactly that scenario (x; "
        "`kvbench plan` adds the weights and the overhead to the same figure). The grey band is ±5%. Right: each "
        "scenario's error, by model. The table gives the error per model; the process's RSS is not drawn here.",
        display="peak_parity_display", note="peak_parity_note", module="peakplots",
    ),
    FigureSpec(
        "energy", "Energy: joules per generated token beside tokens per second",
        "Each point is one scenario. Left: generated tokens per second (every sequence of the batch counted). Right: "
        "the energy of one timed generate over the tokens it generated (the median over repeats), from NVML's "
        "energy counter on CUDA or RAPL's package counter on the CPU (the whole package: other processes' work "
        "counts too). A cache that makes generate faster usually also makes each token cheaper.",
        module="energyplots",
    ),
    *[FigureSpec(*spec, module="cache_plots") for spec in [  # the figures comparing cache implementations
        ("cache_tradeoff", "What the cache buys against what it costs: speedup against KV-cache bytes",
         "Each point is one cached scenario: its speedup over the same scenario without the cache (y) against the "
         "bytes its KV cache holds by kvbench's exact estimate (x); the colour is the cache implementation "
         "(dynamic, static, quantized with its backend and bits, offloaded, ...), the marker the batch size. Up and "
         "to the left is better: more speed for fewer bytes. A quantized cache moves left (fewer bytes) and, as it "
         "dequantizes at every step, usually down."),
        ("cache_memory_latency", "Latency against memory, implementation by implementation",
         "Each scenario is a filled marker at the bytes its cache stores after generate (measured) and, joined to "
         "it, a hollow one at the peak memory above the baseline during generate (its source in the title: the "
         "cache plus activations, dequantized copies and allocator slack), both at its median decode step time; "
         "a panel per batch size, a colour per implementation, a marker per prompt length. The table puts stored "
         "bytes, peak bytes and step time side by side.", "cache_memory_latency_display"),
    ]],
]


# ------------------------------------------------------------------ loading
def load_runs(paths, one_run_per_path: bool = False) -> pd.DataFrame:
    """`load_results` over each path, in order. Runs whose names collide (two folders called `run`) are named
    by their path instead (and numbered if the paths collide too). With `one_run_per_path`, each path becomes one
    run, whatever `run` its records carry."""
    from ..results.store import load_results

    if not paths:
        raise UserError("give at least one run folder, records.jsonl or pytest-benchmark JSON file")
    frames = []
    for path in paths:
        if not Path(path).exists():
            raise UserError(f"{path}: no such file or folder")
        frame = load_results(path)
        if frame.empty:
            raise UserError(f"{path}: no records")
        if "run" not in frame or frame["run"].isna().any():
            frame["run"] = frame["run"].fillna(Path(path).name) if "run" in frame else Path(path).name
        frame["run"] = frame["run"].astype(str)
        if one_run_per_path and frame["run"].nunique() > 1:
            frame["run"] = str(path)
        frames.append(frame)
    names = [set(f["run"]) for f in frames]
    taken: set[str] = set()
    for i, frame in enumerate(frames):
        if any(names[i] & names[j] for j in range(len(frames)) if j != i):
            frame["run"] = str(paths[i]) if frame["run"].nunique() == 1 else str(paths[i]) + ":" + frame["run"]
        if set(frame["run"]) & taken:
            frame["run"] = frame["run"] + f" #{i + 1}"
        taken |= set(frame["run"])
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------ tables
def _values(series: pd.Series, field: str) -> str:
    from .pages import fmt_value

    values = [v for v in pd.unique(series.dropna()) if not isinstance(v, (list, dict))]
    return ", ".join(fmt_value(field, v) for v in values) if values else "-"


def environment_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per setting and environment field (model, dtype, env_*), one column per run."""
    fields = [c for c in RUN_FIELDS if c in df] + sorted(c for c in df if c.startswith("env_"))
    runs = list(pd.unique(df["run"].astype(str)))
    table = pd.DataFrame({"field": fields})
    for run in runs:
        part = df[df["run"].astype(str) == run]
        table[run] = [_values(part[f], f) for f in fields]
    return table


def environment_differences(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of `environment_table` whose values differ between the runs (git commit included)."""
    table = environment_table(df)
    if table.shape[1] <= 2:
        return table.iloc[0:0]
    return table[table.iloc[:, 1:].nunique(axis=1) > 1].reset_index(drop=True)


def _first(part: pd.DataFrame, field: str) -> str | None:
    """The run's value of a field (its values joined where it has several), None where it has none."""
    if field not in part:
        return None
    values = [str(v) for v in pd.unique(part[field].dropna()) if not isinstance(v, (list, dict))]
    return ", ".join(values) if values else None


def run_identity(part: pd.DataFrame) -> dict[str, str]:
    """What a run measured, on what: model (type, source), device (its name), dtype and the kvbench version."""
    model, kind, source = _first(part, "model"), _first(part, "model_type"), _first(part, "model_source")
    device, name = _first(part, "device"), _first(part, "env_device_name")
    details = ", ".join(v for v in (kind, source) if v)
    return {
        "model": (model or "-") + (f" ({details})" if details else ""),
        "device": (device or "-") + (f" ({name})" if name else ""),
        "dtype": _first(part, "dtype") or "-",
        "kvbench": _first(part, "env_kvbench") or "-",
    }


def header_fields(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The page header: each field of `run_identity`, once where every run has the same, else per run."""
    per_run = {run: run_identity(part) for run, part in df.groupby(df["run"].astype(str), sort=False)}
    fields = []
    for field in ["model", "device", "dtype", "kvbench"]:
        values = {run: ident[field] for run, ident in per_run.items()}
        same = len(set(values.values())) == 1
        fields.append((field, next(iter(values.values())) if same
                       else "; ".join(f"{run}: {v}" for run, v in values.items())))
    return fields


def figure_source(df: pd.DataFrame) -> str:
    """What a figure's data come from, for its caption: "run r: model m, device d, dtype t", or with several runs
    "runs: a (model ..., device ..., dtype ...); b (...)"."""
    def values(ident: dict) -> str:
        return ", ".join(f"{k} {ident[k]}" for k in ("model", "device", "dtype"))

    per_run = {run: run_identity(part) for run, part in df.groupby(df["run"].astype(str), sort=False)}
    if len(per_run) == 1:
        (run, ident), = per_run.items()
        return f"run {run}: {values(ident)}"
    return "runs: " + "; ".join(f"{run} ({values(ident)})" for run, ident in per_run.items())


def fmt_share(part: float, whole: float) -> str:
    """part / whole as a percentage with two significant figures below 10%: "35%", "3.5%", "0.0071%"."""
    share = 100 * part / whole
    return f"{share:.0f}%" if share >= 10 else f"{share:.2g}%"


def device_memory(part: pd.DataFrame) -> tuple[float | None, str]:
    """The memory of the device a run measured on, and what it is: the GPU's memory, or the host's RAM."""
    on_gpu = str(_first(part, "device") or "").startswith("cuda")
    field, what = ("env_gpu_memory_bytes", "GPU memory") if on_gpu else ("env_ram_bytes", "RAM")
    values = part[field].dropna() if field in part else pd.Series(dtype=float)
    return (float(values.iloc[0]) if len(values) else None), what


def memory_beside(part: pd.DataFrame, kv_bytes: float) -> dict[str, str]:
    """The largest KV cache next to the weights and the device's memory, as bytes and shares."""
    out = {}
    weights = next((part[c].dropna() for c in ("weight_bytes", "weight_bytes_estimate")
                    if c in part and part[c].notna().any()), None)
    weight_bytes = float(weights.iloc[0]) if weights is not None else None
    if weight_bytes:
        out["weights"] = f"{fmt_bytes(weight_bytes)} (the largest KV cache is {fmt_share(kv_bytes, weight_bytes)} of that)"
    memory, what = device_memory(part)
    if memory:
        shares = [f"largest KV cache {fmt_share(kv_bytes, memory)}"]
        if weight_bytes:
            shares.insert(0, f"weights {fmt_share(weight_bytes, memory)}")
        out["device memory"] = f"{fmt_bytes(memory)} of {what} (" + ", ".join(shares) + ")"
    else:
        field = "env_ram_bytes" if what == "RAM" else "env_gpu_memory_bytes"
        out["device memory"] = f"not recorded (the records have no {field})"
    return out


def _scenario_name(rec: dict) -> str:
    return rec.get("scenario_id") or f"P{rec.get('prompt_len')}-N{rec.get('new_tokens')}-B{rec.get('batch_size')}"


def key_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """The answers at a glance, one column per run: speedup, cache bytes, estimate errors, bandwidth, noise."""
    from . import plots

    rows: dict[str, dict[str, str]] = {}
    for run, part in df.groupby(df["run"].astype(str), sort=False):
        col: dict[str, str] = dict(run_identity(part))
        status = part["status"].fillna("ok") if "status" in part else pd.Series("ok", index=part.index)
        col["scenarios"] = f"{int((status == 'ok').sum())} ok of {len(part)}" + "".join(
            f", {int(n)} {s}" for s, n in status[status != "ok"].value_counts().items())
        try:
            sp = plots.speedup_table(part)
            lo, hi = sp.loc[sp["speedup"].idxmin()], sp.loc[sp["speedup"].idxmax()]
            col["speedup (without / with cache)"] = (
                speedup_at(lo) if len(sp) == 1 else f"{speedup_at(lo)} to {speedup_at(hi)}")
        except plots.NoData as exc:
            col["speedup (without / with cache)"] = str(exc).split(": ", 1)[-1]
        try:
            mem = plots.memory_table(part)
            big = mem.loc[mem["kv_cache_bytes"].idxmax()]
            col["largest KV cache measured"] = f"{fmt_bytes(big['kv_cache_bytes'])} ({_scenario_name(big)})"
            col.update(memory_beside(part, float(big["kv_cache_bytes"])))
            err = (mem["estimate_over_measured"] - 1).abs()
            col["exact estimate vs measured"] = (
                "no exact estimate for this architecture" if err.isna().all()
                else "exact to the byte" if err.max() == 0 and err.notna().all()
                else f"off by up to {err.max():.1%}" + (f" ({int(err.isna().sum())} without estimate)"
                                                        if err.isna().any() else ""))
            if "naive_over_measured" in mem:
                naive = mem["naive_over_measured"]
                col["naive formula vs measured"] = (f"{naive.min():.2f}x" if naive.min() == naive.max()
                                                    else f"{naive.min():.2f}x to {naive.max():.2f}x")
        except plots.NoData as exc:
            col["largest KV cache measured"] = str(exc).split(": ", 1)[-1]
        try:
            bw = plots.bandwidth_table(part)
            text = f"median {bw['achieved_bandwidth_gbps'].median():,.1f} GB/s"
            if "bandwidth_fraction" in bw and bw["bandwidth_fraction"].notna().any():
                text += f" ({fmt_share(bw['bandwidth_fraction'].median(), 1)} of the peak)"
            col["decode bandwidth achieved"] = text
        except plots.NoData:
            pass
        spread = with_spread(part)["total_s_spread"] if "total_s_repeats" in part else pd.Series(dtype=float)
        if spread.notna().any():
            col["widest repeat spread"] = f"{spread.max():.0%} ({_scenario_name(part.loc[spread.idxmax()])})"
        if note := contention_summary(part.to_dict("records")):
            col["contention"] = note
        rows[run] = col
    quantities = list(dict.fromkeys(q for col in rows.values() for q in col))
    table = pd.DataFrame({"quantity": quantities})
    for run, col in rows.items():
        table[run] = [col.get(q, "-") for q in quantities]
    return table


def speedup_at(row) -> str:
    """"1.53x [1.42-1.61] (P16-N32-B1)", with the contention it was measured under, in words."""
    return (f"{row['speedup']:.2f}x{interval_text(row.get('speedup_ci_low'), row.get('speedup_ci_high'), row.get('speedup_ci_level'))} "
            f"({_scenario_name(row)}){busy_suffix(row)}")


def failures_table(df: pd.DataFrame) -> pd.DataFrame:
    if "status" not in df:
        return df.iloc[0:0]
    bad = df[df["status"].fillna("ok") != "ok"]
    return bad[[c for c in ["run", "scenario_id", "status", "error"] if c in bad]].reset_index(drop=True)


# ------------------------------------------------------------------ the page
def figure_section(spec: FigureSpec, df: pd.DataFrame, number: int, figures: dict) -> Section:
    from .plots import NoData, spread_warnings

    section = Section(title=f"{number}. {spec.title}", anchor=spec.name, text=[spec.how_to_read], figure=spec.name)
    try:
        table = spec.call(f"{spec.name}_table", df)
        figures[spec.name] = spec.call(f"plot_{spec.name}", df)
    except NoData as exc:
        section.notes.append(f"No figure: {exc}.")
        return section
    section.caption = f"Figure {number} ({spec.title.split(':')[0].lower()}), from {figure_source(df)}."
    section.warnings = spread_warnings(table)
    if section.warnings:
        section.warning_title = (f"the timed repeats of these scenarios lie more than {SPREAD_LIMIT:.0%} "
                                 "apart (max - min over median), so their timings are noisy:")
    if spec.note and (note := spec.call(spec.note, table)):
        section.notes.append(note)
    display = spec.call(spec.display, df) if spec.display else None
    section.tables.append(Table(f"Table behind figure {number}", table, name=spec.name, display=display))
    return section


def build_report(df: pd.DataFrame, sources: list[str]) -> tuple[Page, dict]:
    """The report page and its figures (name -> matplotlib Figure)."""
    runs = list(pd.unique(df["run"].astype(str)))
    figures: dict = {}
    at_a_glance = Section(
        "At a glance", "glance",
        text=["What was measured on what; how much faster the KV cache makes generate, what it costs in memory "
              "beside the weights and the device's memory, and how close the analytic estimates come to what was "
              "measured."],
        tables=[Table("Key numbers per run", key_numbers(df), collapsed=False, text=True)],
    )
    sections = [at_a_glance]
    sections += [figure_section(spec, df, i, figures) for i, spec in enumerate(FIGURES, 1)]
    env = Section("Environment", "environment", tables=[
        Table("Settings and environment of each run", environment_table(df), name="environment", collapsed=False,
              text=True)])
    diff = environment_differences(df)
    if len(runs) > 1:
        env.text.append("Fields that differ between the runs: " + (", ".join(diff["field"]) if len(diff) else "none")
                        + ".")
    sections.append(env)
    failed = failures_table(df)
    if len(failed):
        sections.append(Section("Scenarios that did not run", "failures",
                                tables=[Table("Out of memory or error", failed, name="failures", collapsed=False)]))
    lead = [f"Runs: {', '.join(runs)}.", f"Read from: {', '.join(sources)}.",
            f"Generated by kvbench {__version__} report from the records alone; regenerate it rather than editing it."]
    return Page("kvbench report: " + ", ".join(runs), lead, sections, header=header_fields(df)), figures


def write_report(paths, out_dir: str | Path) -> dict[str, Path]:
    """Load runs, write report.html, report.md, figures/ and tables/ under `out_dir`; returns the page paths."""
    df = load_runs(list(paths))
    page, figures = build_report(df, [str(p) for p in paths])
    return write_page(page, out_dir, "report", figures)


def default_out(paths: list[Path]) -> Path:
    if len(paths) == 1:
        path = Path(paths[0])
        return path / "report" if path.is_dir() else path.parent / f"{path.stem}-report"
    return Path("kvbench-report")
