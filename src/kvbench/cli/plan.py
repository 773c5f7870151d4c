"""`kvbench plan` and `kvbench frontier` on the command line (tables, Markdown, CSV or JSON, and a figure).

Only typer is imported at the top: pandas, torch and the planner load when a command runs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError

FORMATS = ("table", "markdown", "csv", "json")


def _split(option: str, text: str | None) -> list[str]:
    values = [v.strip() for v in str(text).split(",")] if text else []
    if text is not None and not all(values):
        raise UserError(f"{option}: {text!r} has an empty name")
    return values


def _known(value) -> bool:
    """Not None and not NaN (pandas turns missing numbers into NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _step(seconds) -> str:
    from ..units import fmt_seconds

    return fmt_seconds(seconds) if _known(seconds) else "-"


def _bytes(n) -> str:
    from ..units import fmt_bytes

    return fmt_bytes(n) if _known(n) else "-"


def _rate(r) -> str:
    rate = r.get("decode_tokens_per_s")
    return f"{rate:,.0f}" if _known(rate) else "-"


def _int(value) -> str:
    return str(int(value)) if _known(value) else "-"


def _transient(r) -> str:  # "-" (a column left out) for caches whose update holds nothing on top of them
    return _bytes(r["kv_transient_bytes"]) if r.get("kv_transient_bytes") else "-"


def _host(r) -> str:
    return _bytes(r["kv_host_bytes"]) if r.get("kv_host_bytes") else "-"


def _cache_label(r) -> str:
    impl = r["cache_implementation"]
    if impl != "quantized":
        return f"{impl} cache"
    if r["quant_backend"] == "fp8":
        return "quantized cache (fp8, per tensor)"
    return (f"quantized cache ({r['quant_backend']} {int(r['quant_nbits'])}-bit, residual "
            f"{int(r['quant_residual_length'])} tokens; the update's dequantized layer counted as KV transient)")


def plan_sections(plan) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows of text) for one model on one GPU: longest context, most sequences, the breakdown."""
    longest, most, grid = (plan[plan["question"] == q].to_dict("records")
                           for q in ("longest_context", "most_sequences", "breakdown"))
    mem = ["KV cache", "KV transient", "activations", "total", "peak at", "decode step (roofline)",
           "decode step (calibrated)", "tokens/s"]

    def memory_cells(r):  # where nothing fits: what the smallest case would need, and no decode speed
        speed = [_step(r["decode_step_roofline_s"]), _step(r["decode_step_s"]), _rate(r)] if r["fits"] else ["-"] * 3
        return [_bytes(r["kv_cache_bytes"]), _transient(r), _bytes(r["activation_bytes"]), _bytes(r["total_bytes"]),
                r["peak_phase"], *speed]

    return [
        ("Longest context that fits, per batch size", ["batch", "new tokens", "longest context", "limited by", *mem],
         [[str(r["batch_size"]), str(r["new_tokens"]), str(r["context_len"]) if r["fits"] else "none",
           r["limit"], *memory_cells(r)] for r in longest]),
        ("Most sequences that fit, per context length", ["context", "new tokens", "sequences", "limited by", *mem],
         [[str(r["context_len"]), str(r["new_tokens"]), str(r["batch_size"]) if r["fits"] else "none",
           r["limit"], *memory_cells(r)] for r in most]),
        ("Memory at the peak of generate", ["batch", "context", "prompt + new", "weights", "KV cache", "KV transient",
                                            "activations", "overhead", "total", "headroom", "fits", "peak at",
                                            "decode step (roofline)", "decode step (calibrated)", "KV in host memory"],
         [[str(r["batch_size"]), str(r["context_len"]), f"{r['prompt_len']} + {r['new_tokens']}",
           _bytes(r["weights_bytes"]), _bytes(r["kv_cache_bytes"]), _transient(r), _bytes(r["activation_bytes"]),
           _bytes(r["overhead_bytes"]), _bytes(r["total_bytes"]), _bytes(r["headroom_bytes"]),
           "yes" if r["fits"] else "NO", r["peak_phase"], _step(r["decode_step_roofline_s"]),
           _step(r["decode_step_s"]), _host(r)] for r in grid]),
    ]


def plan_header(plan) -> list[str]:
    from ..plan.plan import advice, weight_quant_label

    r = plan.iloc[0]
    beams = f", {r['num_beams']} beams" if r["num_beams"] > 1 else ""
    bandwidth = f"{r['bandwidth_gbps']:g} GB/s" if _known(r["bandwidth_gbps"]) else "bandwidth unknown"
    spare = r["usable_bytes"] - r["weights_bytes"] - r["overhead_bytes"]
    lines = [
        f"{r['model']} in {r['dtype']}: weights {_bytes(r['weights_bytes'])}{weight_quant_label(r)}; KV cache in "
        f"{r['kv_dtype']}, "
        f"{_cache_label(r)}{beams}; context window {r['context_window']}",
        f"{r['gpu']} ({r['gpu_source']}): usable {_bytes(r['usable_bytes'])}, {bandwidth}; overhead "
        f"{_bytes(r['overhead_bytes'])}; left for KV cache and activations {_bytes(max(spare, 0))}; "
        f"{r['calibration']}",
    ]
    if str(r["cache_implementation"]).startswith("offloaded"):
        lines.append("offloaded: the KV cache column counts what stays in GPU memory (the layers never offloaded, the "
                     "layer being updated and the next one); the rest sits in pinned host memory (KV in host "
                     "memory)")
    if r["cache_implementation"] == "paged":
        lines.append("paged: the KV cache column is the pool reserved for the batch (pages of 256 tokens, "
                     "batch x ceil((context - 1) / 256) blocks)")
    if (plan["peak_phase"] == "prefill").any() and (plan["kv_prefill_bytes"] > plan["kv_decode_bytes"]).any():
        lines.append("KV cache at the peak (prefill): the whole prompt, held in every layer at the end of prefill "
                     "(sliding-window layers included, until decoding trims them); kvbench inspect's cache at the "
                     "context window counts what decoding keeps, so it is smaller")
    if spare <= 0:
        lines.append(f"the weights and overhead alone exceed the usable memory: nothing fits ({advice(r)})")
    return lines


def print_sections(sections, markdown: bool, header: list[str] | None = None) -> None:
    from .common import print_sections as show  # rich loads when a command prints

    show(sections, markdown, header)


def comparison_sections(comparison):
    rows = []
    for r in comparison.to_dict("records"):
        cap = r["memory_cap_bytes"]
        rows.append([
            str(r["model"]), str(r["dtype"]), _bytes(cap) if _known(cap) else f"{r['device_name']} (no cap)",
            str(r["batch_size"]), str(r["new_tokens"]), _int(r["longest_ok_context"]), _int(r["shortest_oom_context"]),
            _int(r["predicted_longest_context"]),
            f"{r['prediction_error']:+.1%}" if _known(r["prediction_error"]) else "-",
            "yes" if r["prediction_within_bracket"] else "no", str(r["probes"]),
            "-" if r["consistent"] else "NOT MONOTONE",
        ])
    columns = ["model", "dtype", "memory", "batch", "new tokens", "longest ran", "shortest OOM", "predicted",
               "error", "within", "probes", "note"]
    return [("Out-of-memory frontier: measured against predicted", columns, rows)]


def print_frontier_comparison(comparison, markdown: bool = False) -> None:
    print_sections(comparison_sections(comparison), markdown)


def calibration_sections(calibration, report):
    from ..plan.calibration import fit_quality

    how = lambda term: "fitted" if term in calibration.fitted else "default"  # noqa: E731
    fitted = [["activation scale", f"{calibration.activation_scale:.3g}", how("activations")],
              ["activation offset", _bytes(calibration.activation_offset_bytes), how("activations")],
              ["overhead", _bytes(calibration.overhead_bytes), how("overhead")],
              ["bandwidth fraction", f"{calibration.bandwidth_fraction:.1%}" if calibration.bandwidth_fraction
               else "not calibrated", how("decode speed")],
              ["fixed cost per decode step", _step(calibration.step_overhead_s), how("decode speed")]]
    quality = fit_quality(report)
    pct = lambda v: f"{v:.1%}" if _known(v) else "-"  # noqa: E731
    rows = [[q["term"], str(q["records"]), pct(q["median_abs_error"]), pct(q["max_abs_error"]),
             pct(q.get("analytic_median_abs_error"))] for q in quality.to_dict("records")]
    return [(f"Calibration ({calibration.source})", ["term", "value", "source"], fitted),
            ("How well the fit matches its records", ["term", "records", "median |error|", "max |error|",
                                                      "median |error| before calibration"], rows)]


def print_check(run: Path, format: str) -> None:
    from ..plan.check import check_json, check_run, check_sections, summary_line

    table, summary = check_run(run)  # a bad RUN refused before anything is read
    if format == "json":
        print(check_json(table, summary))
    elif format == "csv":
        table.to_csv(sys.stdout, index=False)
        print(summary_line(summary), file=sys.stderr)
    else:
        print_sections(check_sections(table), format == "markdown")
        print(summary_line(summary))


def plan_command(
    model: Optional[str] = typer.Option(None, help="preset, config.json path, model folder or Hub id "
                                                   "(comma-separated for several)"),
    gpu: Optional[str] = typer.Option(None, help="bundled GPU name(s), comma-separated (t4, l4, a10g, a100-80gb, "
                                                 "h100, ...); default: the local GPU"),
    memory: Optional[str] = typer.Option(None, help="usable memory, e.g. 16GiB or 24GB (overrides the GPU's)"),
    bandwidth_gbps: Optional[float] = typer.Option(None, help="memory bandwidth in GB/s (overrides the GPU's)"),
    overhead: Optional[str] = typer.Option(None, help="runtime overhead (CUDA context, allocator), default 500MiB "
                                                      "or the calibrated one; 0 to plan for an allocator cap"),
    dtype: str = typer.Option("auto", help="weights and compute: auto (the config's half type), float16, "
                                           "bfloat16, float32"),
    kv_dtype: str = typer.Option("auto", help="KV cache: auto (= --dtype), float16, bfloat16, float32; int4, int8: "
                                              "the quantized cache (quanto 4-bit, hqq 8-bit)"),
    cache_implementation: str = typer.Option("dynamic", help="dynamic, static, offloaded, offloaded_static, "
                                             "quantized, paged, or a deprecated name (as kvbench run)"),
    quant_backend: Optional[str] = typer.Option(None, help="quantized cache backend: quanto (default), hqq, fp8"),
    quant_nbits: Optional[int] = typer.Option(None, help="quantized cache bits (quanto 2, 4; hqq 1, 2, 3, 4, 8; "
                                                         "default 4; not for fp8)"),
    quant_residual_length: Optional[int] = typer.Option(None, help="tokens kept at full precision before "
                                                                   "requantizing (quanto, hqq; default 128)"),
    num_beams: int = typer.Option(1, help="beams per sequence (beam search when > 1)"),
    weight_quant: str = typer.Option("none", help="weights: none (in --dtype), int8 or int4 (the linear layers "
                                     "quantized as optimum-quanto stores them; embeddings, LM head, norms stay)"),
    batch_sizes: str = typer.Option("1,2,4,8,16,32,64", help="batch sizes, comma-separated"),
    contexts: Optional[str] = typer.Option(None, help="context lengths (prompt + new tokens), comma-separated; "
                                                      "k is 1,024 tokens (32k = 32,768; a 128k context is 131,072) "
                                                      "(default 1k, 4k, 16k, ... up to the context window)"),
    new_tokens: str = typer.Option("128", help="tokens generated per sequence, comma-separated"),
    calibrate: Optional[List[Path]] = typer.Option(
        None, metavar="RUN", help="run folder or records file to calibrate with (repeat the option for several)"),
    compare_frontier: Optional[Path] = typer.Option(
        None, metavar="RUN", help="a `kvbench frontier` run: measured vs predicted"),
    check: Optional[Path] = typer.Option(
        None, metavar="RUN", help="a run folder, records file or folder of runs: each ok record's measured peak "
                                  "against the planner's model recomputed for its scenario (nothing is planned)"),
    figure: Optional[Path] = typer.Option(None, help="save the longest-context figure (.png, .svg, .pdf)"),
    format: str = typer.Option("table", help="table, markdown, csv or json"),
):
    """Plan capacity: memory breakdown, longest context per batch size, most sequences per context, decode time."""
    import pandas as pd

    from ..inputs.lists import token_list
    from ..inputs.lists import int_list
    from ..plan.calibration import calibrate as fit
    from ..plan.plan import plan_capacity
    from ..results.store import load_results

    if format not in FORMATS:
        raise UserError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if check is not None:
        if model or gpu or memory or calibrate or compare_frontier or figure:
            raise UserError("--check RUN compares a run with the planner's model: it takes --format alone (no "
                            "--model, --gpu, --memory, --calibrate, --compare-frontier or --figure)")
        return print_check(check, format)
    if figure is not None:  # before the plan is printed
        from matplotlib.backend_bases import FigureCanvasBase

        from .common import check_writable_file

        check_writable_file("--figure", figure, FigureCanvasBase.get_supported_filetypes())
    models, gpus = _split("--model", model), _split("--gpu", gpu) or [None]
    if not models and compare_frontier is None:
        raise UserError("--model is required (a preset such as phi-3-mini-4k, a config.json path or a Hub id)")
    calibration, report = (fit(load_results(*calibrate)) if calibrate else (None, None))
    options = dict(memory=memory, bandwidth_gbps=bandwidth_gbps, dtype=dtype, kv_dtype=kv_dtype,
                   cache_implementation=cache_implementation, num_beams=num_beams,
                   batch_sizes=int_list("--batch-sizes", batch_sizes),
                   contexts=token_list("--contexts", contexts) if contexts else None,
                   new_tokens=int_list("--new-tokens", new_tokens), calibration=calibration,
                   overhead=overhead, quant_backend=quant_backend, quant_nbits=quant_nbits,
                   quant_residual_length=quant_residual_length, weight_quant=weight_quant)
    plans = [plan_capacity(m, g, **options) for m in models for g in gpus]
    comparison = None
    if compare_frontier is not None:
        from ..plan.frontier import compare_frontier as compare

        comparison = compare(load_results(compare_frontier), calibration)
    data = pd.concat(plans, ignore_index=True) if plans else comparison
    if calibration is not None and format in ("csv", "json"):  # the data goes to stdout, the fit's quality here
        from ..plan.calibration import fit_quality

        quality = "; ".join(f"{q['term']}: {q['records']} records, median |error| {q['median_abs_error']:.1%}"
                            for q in fit_quality(report).to_dict("records"))
        print(f"{calibration.source}: {quality}", file=sys.stderr)
    if format == "csv":
        data.to_csv(sys.stdout, index=False)
    elif format == "json":
        print(data.to_json(orient="records", indent=1))
    else:
        markdown = format == "markdown"
        if calibration is not None:
            print_sections(calibration_sections(calibration, report), markdown)
        for plan in plans:
            print_sections(plan_sections(plan), markdown, plan_header(plan))
        if comparison is not None:
            print_frontier_comparison(comparison, markdown)
    if figure is not None:
        from ..plan.figure import longest_context_figure

        empty = pd.DataFrame(columns=["question"])
        figure.parent.mkdir(parents=True, exist_ok=True)
        longest_context_figure(pd.concat(plans, ignore_index=True) if plans else empty, comparison).savefig(figure)
        print(f"figure: {figure}", file=sys.stderr)


def frontier_command(
    model: str = typer.Option(..., help="preset name, path to config.json or model folder, or Hub id"),
    memory_cap: Optional[str] = typer.Option(None, help="cap torch's allocator to emulate a smaller card, "
                                                        "e.g. 14.75GiB"),
    batch_sizes: str = typer.Option("1,2,4,8", help="batch sizes, comma-separated"),
    new_tokens: int = typer.Option(16, help="tokens generated by each probe (the rest of the context is prompt)"),
    dtype: str = typer.Option("auto", help="auto, float16, bfloat16, float32"),
    cache_implementation: str = typer.Option("dynamic", help="dynamic or static (the other implementations: "
                                             "kvbench plan --cache-implementation)"),
    num_beams: int = typer.Option(1, help="beams (beam search when > 1)"),
    resolution: int = typer.Option(128, help="stop bisecting when the boundary is known to this many tokens"),
    min_context: Optional[int] = typer.Option(None, help="shortest context to try (default new tokens + 1)"),
    max_context: Optional[int] = typer.Option(None, help="longest context to try (default the context window)"),
    out: Optional[Path] = typer.Option(None, help="run folder (default results/<time>-frontier-<model>)"),
):
    """Measure on a CUDA GPU the longest context that runs without out-of-memory, per batch size."""
    import torch
    from rich.markup import escape

    from ..estimate.capacity import longest_context, make_workload
    from ..inputs.lists import int_list
    from ..plan.frontier import (
        apply_memory_cap,
        compare_frontier,
        cuda_probe,
        find_frontier,
        frontier_target,
    )
    from ..units import parse_bytes
    from .common import console

    sizes = int_list("--batch-sizes", batch_sizes)
    if new_tokens < 1 or num_beams < 1:
        raise UserError("--new-tokens and --num-beams must be positive integers")
    if resolution < 1:
        raise UserError(f"--resolution: {resolution} is not a positive integer")
    if cache_implementation not in ("dynamic", "static"):
        raise UserError(f"--cache-implementation: kvbench frontier probes dynamic or static caches, not "
                        f"{cache_implementation!r} (plan it without measuring: kvbench plan --cache-implementation)")
    cap = parse_bytes(memory_cap, "--memory-cap") if memory_cap is not None else None
    if not torch.cuda.is_available():
        raise UserError("kvbench frontier measures out-of-memory on a CUDA GPU, and torch sees none "
                        "(predict without measuring: kvbench plan)")
    from ..measuring.instruments.environment import environment
    from ..measuring.loading.models import load_model
    from ..measuring.harness.runner import default_run_dir
    from ..results.store import RunWriter

    out_dir = out or default_run_dir(f"frontier-{Path(model).name}")
    writer = RunWriter(out_dir, {"kind": "frontier", "model": model})  # the run folder is checked before the wait
    device = torch.device("cuda", torch.cuda.current_device())
    if cap is not None:
        apply_memory_cap(cap, device)
    try:
        with console.status(f"loading {escape(model)}"):
            loaded = load_model(model, device=str(device), dtype=dtype)
    except torch.OutOfMemoryError:
        writer.discard_if_empty()
        raise UserError(f"{model}'s weights alone do not fit in "
                        + (f"--memory-cap {memory_cap}" if cap else "this GPU's memory")) from None
    except BaseException:
        writer.discard_if_empty()
        raise
    dt = str(loaded.dtype).removeprefix("torch.")
    w = make_workload(model, dt, None, cache_implementation, num_beams)
    window = loaded.context_len or 2**17
    lo, hi = min_context or new_tokens + 1, max_context or window
    if not new_tokens < lo <= hi <= window:
        writer.discard_if_empty()
        raise UserError(f"contexts to try [{lo}, {hi}] must lie within ({new_tokens}, {window}]: longer than "
                        f"--new-tokens, within {model}'s context window")
    env = environment(device)
    target, cal = frontier_target({"memory_cap_bytes": cap, "gpu_memory_bytes": env["env_gpu_memory_bytes"],
                                   "bandwidth_gbps": env["env_gpu_bandwidth_gbps"],
                                   "device_name": env["env_device_name"]})
    guesses = {}
    for b in sizes:
        answer = longest_context(w, target, b, new_tokens, cal)
        guesses[b] = answer["context_len"] if answer["fits"] else lo
    settings = {"kind": "frontier", "model": model, "dtype": dt, "new_tokens": new_tokens,
                "cache_implementation": cache_implementation, "num_beams": num_beams, "batch_sizes": sizes,
                "memory_cap_bytes": cap, "resolution": resolution, "min_context": lo, "max_context": hi, **env}
    console.print(f"[bold]{escape(model)}[/] in {dt} on {escape(str(env['env_device_name']))}"
                  + (f", allocator capped at {cap / 2**30:.2f} GiB" if cap else "") + f" -> {escape(str(out_dir))}")
    with writer:
        writer.update_info(settings)
        with console.status("searching the out-of-memory frontier"):
            find_frontier(cuda_probe(loaded, new_tokens, cache_implementation, num_beams), sizes,
                          min_context=lo, max_context=hi, resolution=resolution, guesses=guesses, writer=writer,
                          extra={"memory_cap_bytes": cap})
    from ..results.store import load_results

    print_frontier_comparison(compare_frontier(load_results(out_dir)))
    console.print(f"records: {Path(out_dir) / 'records.jsonl'}", markup=False, highlight=False)
