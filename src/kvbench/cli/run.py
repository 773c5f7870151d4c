"""`kvbench run`: sweep a grid of scenarios on one model, write the run folder, print the summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from ..inputs.scenario import QUICK, choice_list, int_list
from .common import Table, console


def run(
    model: str = typer.Option("tiny", help="preset name, path to config.json or model folder, or Hub id"),
    device: str = typer.Option("auto", help="auto (a GPU where there is one), cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", help="auto (float32 on CPU; the model's half type on GPU), float16, bfloat16, float32"),
    prompt_len: str = typer.Option(QUICK["prompt_len"], help="prompt lengths, comma-separated"),
    new_tokens: str = typer.Option(QUICK["new_tokens"], help="new-token counts, comma-separated"),
    batch_size: str = typer.Option(QUICK["batch_size"], help="batch sizes, comma-separated"),
    use_cache: str = typer.Option("both", help="on, off or both"),
    cache_implementation: str = typer.Option(
        "dynamic", help="dynamic, static, offloaded, offloaded_static, quantized, paged, or a deprecated name "
        "(sliding_window, hybrid, hybrid_chunked, offloaded_hybrid, offloaded_hybrid_chunked); comma-separated"),
    decoding: str = typer.Option("greedy", help="greedy, sample, beam (comma-separated)"),
    num_beams: int = typer.Option(4, help="beams for --decoding beam"),
    repeats: int = typer.Option(3, help="timed generates per scenario (the median is reported)"),
    warmup: int = typer.Option(1, help="untimed generates before the timed ones"),
    out: Optional[Path] = typer.Option(None, help="run folder (default results/<time>-<model>)"),
    trust_remote_code: bool = typer.Option(False, help="allow a Hub model's own code to run"),
    # the quantized cache (--cache-implementation quantized): see docs/caches.md
    quant_backend: str = typer.Option("quanto", help="quantized cache backend: quanto, hqq (pip install "
                                      "kvbench[quant]) or fp8 (per tensor, no options)"),
    quant_nbits: Optional[int] = typer.Option(None, help="quantized cache bits (quanto 2, 4; hqq 1, 2, 3, 4, 8; "
                                              "default 4)"),
    quant_residual_length: Optional[int] = typer.Option(None, help="tokens kept at full precision before "
                                                        "requantizing (quanto, hqq; default 128)"),
):
    """Sweep a grid of scenarios on one model and write records.jsonl (defaults: a quick grid on `tiny`)."""
    from ..inputs.scenario import CACHE_IMPLEMENTATIONS, DECODINGS, grid
    from ..measuring.models import load_model
    from ..measuring.runner import default_run_dir, run_sweep

    caches = {"on": [True], "off": [False], "both": [True, False]}
    if use_cache not in caches:
        raise UserError(f"--use-cache: {use_cache!r} is not one of on, off, both")
    if repeats < 1:
        raise UserError(f"--repeats: {repeats} is not a positive integer")
    if warmup < 0:
        raise UserError(f"--warmup: {warmup} must be 0 or more")
    scenarios = grid(
        int_list("--prompt-len", prompt_len), int_list("--new-tokens", new_tokens),
        int_list("--batch-size", batch_size), caches[use_cache],
        choice_list("--cache-implementation", cache_implementation, CACHE_IMPLEMENTATIONS),
        choice_list("--decoding", decoding, DECODINGS), num_beams=num_beams,
        quantization=dict(quant_backend=quant_backend, quant_nbits=quant_nbits,
                          quant_residual_length=quant_residual_length),
    )
    with console.status(f"loading {model}"):
        loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    out_dir = out or default_run_dir(model)
    console.print(
        f"[bold]{loaded.name}[/] ({loaded.source}) on {loaded.device} in {str(loaded.dtype).removeprefix('torch.')}: "
        f"{len(scenarios)} scenarios x ({warmup} warm-up + {repeats} timed) -> {out_dir}"
    )
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(scenarios[0].id, total=len(scenarios))
        ids = iter([s.id for s in scenarios[1:]] + ["done"])
        records = run_sweep(
            loaded, scenarios, out_dir, repeats=repeats, warmup=warmup,
            progress=lambda rec: bar.update(task, advance=1, description=next(ids)),
        )
    print_summary(records)
    console.print(f"records: {Path(out_dir) / 'records.jsonl'}")
    failed = [r for r in records if r["status"] == "error"]
    for r in failed:
        console.print(f"[red]error[/] {r['scenario_id']}: {r['error']}")
    if failed:
        raise typer.Exit(1)


def print_summary(records: list[dict]) -> None:
    import pandas as pd

    from ..results.frame import speedups
    from ..units import fmt_bytes, fmt_seconds

    df = pd.DataFrame(records).assign(run="")
    table = Table(title="KV cache: what it buys and costs")
    for col in ["P", "N", "B", "cache", "with cache", "without", "speedup", "TTFT", "step",
                "positions", "KV measured", "KV estimate", "KV naive"]:
        table.add_column(col, justify="right")
    rows = speedups(df) if (df["use_cache"].any() and (~df["use_cache"]).any()) else df[df["use_cache"]]
    if rows.empty:
        rows = df
    for r in rows.to_dict("records"):
        table.add_row(
            str(r["prompt_len"]), str(r["new_tokens"]), str(r["batch_size"]), r["cache_implementation"],
            fmt_seconds(r.get("total_s")), fmt_seconds(r.get("total_s_nocache")),
            f"{r['speedup']:.2f}x" if r.get("speedup") == r.get("speedup") and r.get("speedup") else "-",
            fmt_seconds(r.get("ttft_s")), fmt_seconds(r.get("decode_step_s")),
            f"{r.get('positions_processed', '-')}/{r.get('positions_processed_nocache', '-')}".replace(".0", ""),
            fmt_bytes(r.get("kv_cache_bytes")), fmt_bytes(r.get("kv_cache_bytes_estimate")),
            fmt_bytes(r.get("kv_cache_bytes_naive")),
        )
    console.print(table)
    for r in records:
        if r["status"] == "oom":
            console.print(f"[yellow]out of memory[/] {r['scenario_id']}")
