"""`kvbench run`: sweep a grid of scenarios on one model, write the run folder, print the summary table."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import UserError
from ..inputs.scenario import QUICK, choice_list, int_list
from .common import Table, console


def run(
    ctx: typer.Context,
    model: str = typer.Option("tiny", help="preset name, path to config.json or model folder, or Hub id"),
    device: str = typer.Option("auto", help="auto (a GPU where there is one), cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", help="auto (float32 on CPU; the model's half type on GPU), float16, bfloat16, float32"),
    prompt_len: str = typer.Option(QUICK["prompt_len"], help="prompt lengths, comma-separated"),
    new_tokens: str = typer.Option(QUICK["new_tokens"], help="new-token counts, comma-separated"),
    batch_size: str = typer.Option(QUICK["batch_size"], help="batch sizes, comma-separated"),
    use_cache: str = typer.Option("both", help="on, off or both"),
    cache_implementation: str = typer.Option("dynamic", help="dynamic, static (comma-separated for both)"),
    decoding: str = typer.Option("greedy", help="greedy, sample, beam (comma-separated)"),
    num_beams: int = typer.Option(4, help="beams for --decoding beam"),
    repeats: int = typer.Option(3, help="timed generates per scenario (the median is reported)"),
    warmup: int = typer.Option(1, help="untimed generates before the timed ones"),
    out: Optional[Path] = typer.Option(None, help="run folder (default results/<time>-<model>)"),
    trust_remote_code: bool = typer.Option(False, help="allow a Hub model's own code to run"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this folder: only its scenarios not yet "
                                                     "recorded, with the settings it was started with"),
):
    """Sweep a grid of scenarios on one model and write records.jsonl (defaults: a quick grid on `tiny`)."""
    options = {name: value for name, value in locals().items() if name != "ctx"}  # as given; run.json keeps them
    if resume is not None and not ctx.meta.get("kvbench_resumed"):
        ctx.meta["kvbench_resumed"] = True
        return run(ctx, **resumed_options(ctx, options))
    from ..inputs.scenario import CACHE_IMPLEMENTATIONS, DECODINGS, grid
    from ..measuring.runner import default_run_dir
    from ..results.store import RunWriter

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
    )
    out_dir = Path(resume or out or default_run_dir(model))
    # The run folder is created, locked and given its run.json before the model loads: a folder that cannot be
    # written fails now, not after the wait.
    writer = RunWriter(out_dir, {"options": options}, resume=resume is not None)
    try:
        records = sweep(options, scenarios, writer)
    except Exception:
        writer.discard_if_empty()  # refused before the first record: no folder left behind
        raise
    except KeyboardInterrupt:
        finished = sum(r.get("scenario_id") in {s.id for s in scenarios} for r in writer.records())
        console.print(f"interrupted: {finished} of {len(scenarios)} scenarios recorded in "
                      f"{escape(str(writer.path))}", highlight=False)
        console.print(f"resume with: kvbench run --resume {escape(shlex.quote(str(out_dir)))}", highlight=False)
        raise typer.Exit(130) from None
    finally:
        writer.close()
    print_summary(records)
    console.print(f"records: {escape(str(out_dir / 'records.jsonl'))}", highlight=False)
    failed = [r for r in records if r["status"] == "error"]
    for r in failed:
        console.print(f"[red]error[/] {r['scenario_id']}: {escape(str(r['error']))}")
    if failed:
        raise typer.Exit(1)


def sweep(options: dict, scenarios: list, writer) -> list[dict]:
    """Load the model, then measure the scenarios not yet recorded in `writer`'s run under a progress bar."""
    from ..measuring.models import load_model
    from ..measuring.resume import split_done
    from ..measuring.runner import run_sweep

    model, repeats, warmup = options["model"], options["repeats"], options["warmup"]
    todo = split_done(writer.records(), scenarios)[1] if writer.resumed else scenarios
    with console.status(f"loading {escape(model)}"):
        loaded = load_model(model, device=options["device"], dtype=options["dtype"],
                            trust_remote_code=options["trust_remote_code"])
    console.print(
        f"[bold]{escape(loaded.name)}[/] ({loaded.source}) on {loaded.device} in "
        f"{str(loaded.dtype).removeprefix('torch.')}: {len(todo)} scenarios"
        + (f" (of {len(scenarios)}; the others are recorded)" if len(todo) < len(scenarios) else "")
        + f" x ({warmup} warm-up + {repeats} timed) -> {escape(str(writer.dir))}", highlight=False,
    )
    if not todo:
        return run_sweep(loaded, scenarios, writer, repeats=repeats, warmup=warmup)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(todo[0].id, total=len(todo))
        ids = iter([s.id for s in todo[1:]] + ["done"])
        return run_sweep(
            loaded, scenarios, writer, repeats=repeats, warmup=warmup,
            progress=lambda rec: bar.update(task, advance=1, description=next(ids)),
        )


def resumed_options(ctx, options: dict) -> dict:
    """--resume RUN: the options the run was started with (from its run.json), in place of the defaults. An option
    given on the command line must agree with the run's; one that differs is refused, naming it."""
    from ..results.store import read_run_info

    run_dir = options["resume"]
    info = read_run_info(run_dir)
    stored = info.get("options")
    if not isinstance(stored, dict):
        raise UserError(f"{run_dir}: its run.json has no command-line options to resume with (a run started "
                        "from the API: resume it with kvbench.run_sweep(..., resume=True))")
    merged = dict(options)
    for name, value in options.items():
        source = ctx.get_parameter_source(name)
        given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
        flag = "--" + name.replace("_", "-")
        if name == "out":
            if given and Path(value).resolve() != Path(run_dir).resolve():
                raise UserError(f"{flag} {value} and --resume {run_dir} name different run folders; give only --resume")
            continue
        if name == "resume" or name not in stored:  # an option newer than the run keeps its value
            continue
        same = {"".join(str(v).split()) for v in (stored[name], info.get(name)) if v is not None}
        if given and "".join(str(value).split()) not in same:
            raise UserError(f"{flag} {value}: the run in {run_dir} was started with {flag} {stored[name]} "
                            "(--resume keeps the run's settings; leave the option out)")
        merged[name] = stored[name]
    return merged


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
