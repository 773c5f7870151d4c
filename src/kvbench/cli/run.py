"""`kvbench run`: sweep a grid of scenarios on one model, write the run folder, print the summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from ..inputs.scenario import QUICK, choice_list, int_list
from .common import console


def run(
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
    device_map: Optional[str] = typer.Option(None, help="place the model across devices with accelerate: auto, "
                                                        "balanced, balanced_low_0, sequential, or JSON {module: device}"),
    max_memory: Optional[str] = typer.Option(None, help="with --device-map: memory per device, e.g. 0=70GiB,cpu=200GiB"),
    shard: Optional[str] = typer.Option(None, help="run only shard I/N of the grid (0 <= I < N), balanced by cost"),
    executor: str = typer.Option("local", help="local (this process) or ray (workers on a Ray cluster)"),
    address: Optional[str] = typer.Option(None, help="--executor ray: the cluster (auto, ray://host:10001); "
                                                     "default: a local Ray"),
    gpus_per_task: float = typer.Option(1.0, help="--executor ray: GPUs per worker"),
    ray_workers: Optional[int] = typer.Option(None, help="--executor ray: workers (default: one per "
                                                         "--gpus-per-task GPUs, one on a cluster without GPUs)"),
    wide: bool = typer.Option(False, "--wide", help="summary table with every column, however wide"),
):
    """Sweep a grid of scenarios on one model and write records.jsonl (defaults: a quick grid on `tiny`)."""
    from ..inputs.scenario import CACHE_IMPLEMENTATIONS, DECODINGS, grid
    from ..measuring.eta import SweepEstimate
    from ..measuring.models import load_model
    from ..measuring.runner import default_run_dir

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
    if executor not in ("local", "ray"):
        raise UserError(f"--executor: {executor!r} is not one of local, ray")
    settings = {}
    if shard is not None:
        from ..scale.shards import parse_shard
        from ..scale.shards import shard as shard_of

        index, count = parse_shard(shard)
        settings = {"shard": f"{index}/{count}", "grid": [s.id for s in scenarios]}
        scenarios = shard_of(scenarios, index, count)
        if not scenarios:
            console.print(f"shard {index}/{count} has no scenarios (the grid has {len(settings['grid'])}): "
                          "nothing to run")
            return
    out_dir = out or default_run_dir(model + (f"-shard{settings['shard'].replace('/', 'of')}" if shard else ""))
    if executor == "ray":
        load = dict(device=device, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map,
                    max_memory=max_memory)
        return run_with_ray(model, load, scenarios, out_dir, repeats, warmup, settings, address, gpus_per_task,
                            ray_workers, wide)
    if max_memory is not None and device_map is None:
        raise UserError("--max-memory needs --device-map (e.g. --device-map auto)")
    with console.status(f"loading {model}"):
        loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                            device_map=device_map, max_memory=max_memory)
    console.print(
        f"[bold]{loaded.name}[/] ({loaded.source}) on {loaded.device} in {str(loaded.dtype).removeprefix('torch.')}: "
        f"{len(scenarios)} scenarios x ({warmup} warm-up + {repeats} timed) -> {out_dir}"
    )
    with console.status("timing a probe forward for the time estimates"):
        estimate = SweepEstimate.probe(loaded, scenarios, repeats, warmup)
    if line := slow_line(loaded, estimate):
        console.print(line, highlight=False)
    records = sweep_with_progress(loaded, scenarios, out_dir, estimate, settings)
    finish(records, out_dir, wide)


def run_with_ray(model, load: dict, scenarios, out_dir, repeats, warmup, settings, address, gpus_per_task, workers,
                 wide=False):
    """`kvbench run --executor ray`: the workers load the model; this process writes the records as they come."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ..scale.ray_executor import run_sweep_ray

    console.print(f"[bold]{model}[/] on Ray: {len(scenarios)} scenarios x ({warmup} warm-up + {repeats} timed) "
                  f"-> {out_dir}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting Ray workers", total=len(scenarios))
        records = run_sweep_ray(
            model, scenarios, out_dir, load=load, repeats=repeats, warmup=warmup, settings=settings,
            address=address, gpus_per_task=gpus_per_task, workers=workers,
            progress=lambda rec: bar.update(task, advance=1, description=rec["scenario_id"]),
        )
    finish(records, out_dir, wide)


def finish(records: list[dict], out_dir, wide: bool = False) -> None:
    """The summary table, where the records are, and exit 1 when a scenario failed."""
    from ..report.summary import print_summary

    print_summary(records, console, wide=wide)
    console.print(f"records: {Path(out_dir) / 'records.jsonl'}")
    failed = [r for r in records if r["status"] == "error"]
    for r in failed:
        console.print(f"[red]error[/] {r['scenario_id']}: {r['error']}")
    if failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------ how long
SLOW_WEIGHT_BYTES = 10**9  # on the CPU, weights over this make every forward slow
SLOW_SCENARIO_S = 10.0  # or a scenario expected to take longer than this


def fmt_duration(seconds: float) -> str:
    """ "8 s", "3 min 20 s", "1 h 05 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def slow_line(loaded, estimate) -> str | None:
    """One line when a model on the CPU will be slow: its expected time per scenario and in all."""
    import statistics

    per_scenario = statistics.median(estimate.expected_s(s) for s in estimate.scenarios)
    if loaded.device.type != "cpu" or (loaded.weight_bytes <= SLOW_WEIGHT_BYTES and per_scenario <= SLOW_SCENARIO_S):
        return None
    from ..units import fmt_bytes

    return (f"{loaded.name} on the CPU: about {fmt_duration(per_scenario)} per scenario expected "
            f"({len(estimate.scenarios)} scenarios, about {fmt_duration(estimate.remaining_s())} in all, "
            f"{fmt_bytes(loaded.weight_bytes)} of weights read every step); a GPU or a smaller grid is faster")


def fmt_clock(seconds: float) -> str:
    """ "0:08", "3:20", "1:05:00" (the progress bar's compact durations)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta_text(left_s: float | None, since_s: float) -> str:
    """The ETA cell: the estimate made `since_s` seconds ago, counted down (not below zero)."""
    if left_s is None:
        return "ETA -:--"
    return f"ETA {fmt_clock(left_s - since_s)}"


def sweep_with_progress(loaded, scenarios, out_dir, estimate, settings=None) -> list[dict]:
    """`run_sweep` under a progress bar: the bar fills by expected work, the current scenario shows its expected
    time, and an ETA counts down the time left as the finished scenarios rescale the estimates."""
    import time

    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    from ..measuring.runner import run_sweep

    class ETAColumn(ProgressColumn):
        def render(self, task):
            at = task.fields.get("at")
            return Text(eta_text(task.fields.get("left_s"), time.monotonic() - at if at else 0.0), style="cyan")

    def label(i: int) -> str:
        if i >= len(scenarios):
            return "done"
        return f"{scenarios[i].id} ~{fmt_clock(estimate.expected_s(scenarios[i]))}"

    costs = [max(estimate.prior_s(s), 1e-9) for s in scenarios]
    last = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=12), TextColumn("{task.fields[done]}/{task.fields[n]}"),
                  TimeElapsedColumn(), ETAColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label(0), total=sum(costs), done=0, n=len(scenarios), left_s=estimate.remaining_s(),
                            at=last)

        def advance(record):
            nonlocal last
            now = time.monotonic()
            estimate.finished(now - last)
            last, i = now, len(estimate.measured_s)
            bar.update(task, advance=costs[i - 1], description=label(i), done=i, left_s=estimate.remaining_s(),
                       at=now)

        return run_sweep(loaded, scenarios, out_dir, repeats=estimate.repeats, warmup=estimate.warmup,
                         settings=settings, progress=advance)
