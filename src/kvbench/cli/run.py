"""`kvbench run`: sweep a grid of scenarios on one model, write the run folder, print the summary table."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import UserError
from ..inputs.lists import TooLarge, int_list
from ..inputs.options import CLI_REPEATS, ORDERS, WARMUP, RunOptions, parse_repeats
from ..inputs.scenario import QUICK, choice_list
from .common import console


def run(
    ctx: typer.Context,
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
    compile: str = typer.Option(
        "auto", "--compile",
        help="decode compiled with the static cache: off, on (any device; needs a C/C++ compiler), auto "
             "(transformers' choice: compiled on CUDA, eager on the CPU); comma-separated for several",
    ),
    num_beams: str = typer.Option("4", help="beams for --decoding beam, comma-separated"),
    temperature: str = typer.Option("1.0", help="sampling temperatures for --decoding sample, comma-separated"),
    top_k: str = typer.Option("50", help="top-k values for --decoding sample, comma-separated (0: off)"),
    top_p: str = typer.Option("1.0", help="top-p values for --decoding sample, comma-separated (1.0: off)"),
    engine: str = typer.Option("generate", help="generate, reference (kvbench's plain-torch loop), comma-separated"),
    repeats: str = typer.Option(str(CLI_REPEATS), callback=lambda v: check_repeats(v),
                                help="timed generates per scenario (the median is reported), or auto: at least 3, "
                                     "until the median's 95% interval is within --target-ci or the budget"),
    target_ci: str = typer.Option("5%", help="--repeats auto: the interval's half-width to reach (5% or 0.05)"),
    warmup: int = typer.Option(WARMUP, help="untimed generates before the timed ones (at least 1 where decode compiles)"),
    profile_steps: bool = typer.Option(
        False, "--profile-steps",
        help="one extra generate under torch.profiler: device-busy time per decode step (not in the timings)",
    ),
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
    order: str = typer.Option("interleaved", help="interleaved (the repeats of scenarios differing only in the "
                              "cache take turns, round by round, shuffled; the seed is recorded) or grouped"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this folder: only its scenarios not yet "
                                                     "recorded, with the settings it was started with"),
    # the quantized cache (--cache-implementation quantized): see docs/caches.md
    quant_backend: str = typer.Option("quanto", help="quantized cache backend: quanto, hqq (pip install "
                                      "kvbench[quant]) or fp8 (per tensor, no options)"),
    quant_nbits: Optional[int] = typer.Option(None, help="quantized cache bits (quanto 2, 4; hqq 1, 2, 3, 4, 8; "
                                              "default 4)"),
    quant_residual_length: Optional[int] = typer.Option(None, help="tokens kept at full precision before "
                                                        "requantizing (quanto, hqq; default 128)"),
    on_oom: str = typer.Option("continue", help="after an out-of-memory: continue (measure every scenario) or "
                               "skip-larger (record larger scenarios of the same settings as skipped, unmeasured)"),
):
    """Sweep a grid of scenarios on one model and write records.jsonl (defaults: a quick grid on `tiny`)."""
    options = {name: value for name, value in locals().items() if name != "ctx"}  # as given; run.json keeps them
    if resume is not None and not ctx.meta.get("kvbench_resumed"):
        ctx.meta["kvbench_resumed"] = True
        return run(ctx, **resumed_options(ctx, options))
    from ..inputs.decoding import ENGINES, SamplingAxes, float_list, top_k_list
    from ..inputs.scenario import COMPILE_MODES, DECODINGS, cache_list, grid
    from ..inputs.names import check_dtype_name, check_model_name
    from ..measuring.harness.resume import MAX_REPEATS, ON_OOM

    caches = {"on": [True], "off": [False], "both": [True, False]}
    if use_cache not in caches:
        raise UserError(f"--use-cache: {use_cache!r} is not one of on, off, both")
    repeats, target = parse_repeats(repeats, target_ci)  # (the cap, the target) for --repeats auto
    if warmup < 0:
        raise UserError(f"--warmup: {warmup} must be 0 or more")
    for flag, value in (("--repeats", repeats), ("--warmup", warmup)):
        if value > MAX_REPEATS:
            raise UserError(f"{flag}: {value:,} is more than the {MAX_REPEATS:,} a scenario takes")
    if order not in ORDERS:
        raise UserError(f"--order: {order!r} is not one of {', '.join(ORDERS)}")
    if on_oom not in ON_OOM:
        raise UserError(f"--on-oom: {on_oom!r} is not one of {', '.join(ON_OOM)}")
    implementations, notes = cache_list("--cache-implementation", cache_implementation)
    for note in notes:  # a deprecated name: measured as the implementation it builds
        console.print(note, highlight=False, markup=False)
    compiles = choice_list("--compile", compile, COMPILE_MODES)
    from ..compat import compiled_caches

    if "on" in compiles and (not set(implementations) & set(compiled_caches()) or use_cache == "off"):
        raise UserError("--compile on: decode compiles only with the static cache (add --cache-implementation static)")
    decodings, beams = choice_list("--decoding", decoding, DECODINGS), int_list("--num-beams", num_beams)
    if "beam" in decodings and min(beams) < 2:
        raise UserError(f"--num-beams {min(beams)}: beam search (--decoding beam) needs num_beams >= 2")
    run_options = RunOptions(
        repeats=repeats, warmup=warmup, profile_steps=profile_steps, on_oom=on_oom, order=order, target_ci=target,
        device=device, dtype=dtype,
        trust_remote_code=trust_remote_code, device_map=device_map, max_memory=max_memory,
        quant_backend=quant_backend, quant_nbits=quant_nbits, quant_residual_length=quant_residual_length)
    try:  # a length of more digits than any tensor holds: refused against the model's context, as smaller ones are
        lengths = int_list("--prompt-len", prompt_len), int_list("--new-tokens", new_tokens)
    except TooLarge as exc:
        from ..measuring.loading.models import beyond_context

        check_model_name(model)
        raise beyond_context(exc, model, device, dtype, trust_remote_code) from None
    scenarios = grid(
        *lengths, int_list("--batch-size", batch_size), caches[use_cache], implementations, decodings,
        num_beams=beams, compiles=compiles, sampling=SamplingAxes(float_list("--temperature", temperature),
                                                                top_k_list("--top-k", top_k), float_list("--top-p", top_p)),
        engines=choice_list("--engine", engine, ENGINES),
        quantization=run_options.quantization(),
    )
    if not scenarios:  # every combination left out: the reference engine's with beam search or the static cache
        raise UserError(f"--engine {engine} --decoding {decoding} --cache-implementation {cache_implementation}: no "
                        "scenario to run (the reference engine decodes greedy and sample, with a dynamic cache or none)")
    if executor not in ("local", "ray"):
        raise UserError(f"--executor: {executor!r} is not one of local, ray")
    settings, index, count = {}, 0, 1
    if shard is not None:
        from ..scale.shards import grid_seed, parse_shard
        from ..scale.shards import shard as shard_of

        index, count = parse_shard(shard)
        settings = {"shard": f"{index}/{count}", "shard_grid": [s.id for s in scenarios]}
        run_options = run_options.replace(order_seed=grid_seed(settings["shard_grid"]))  # one seed, every shard
        scenarios = shard_of(scenarios, index, count)
        if not scenarios:
            console.print(f"shard {index}/{count} has no scenarios (the grid has {len(settings['shard_grid'])}): "
                          "nothing to run")
            return
    check_model_name(model)  # a name that names nothing, and the options' values above: refused before torch loads
    check_dtype_name(dtype)
    from ..measuring.harness.runner import default_run_dir
    from ..results.store import RunWriter

    out_dir = Path(resume or out or default_run_dir(model + (f"-shard{index}of{count}" if shard else "")))
    if max_memory is not None and device_map is None:
        raise UserError("--max-memory needs --device-map (e.g. --device-map auto)")
    if executor == "ray":
        if resume is not None:
            raise UserError("--resume: runs of --executor ray are resumed with --executor local, or run again")
        return run_with_ray(model, run_options, scenarios, out_dir, settings, address, gpus_per_task, ray_workers,
                            wide)
    from ..measuring.loading.models import check_before_load
    from .common import check_writable_folder

    # Check first, then create: the device, the model spec, lengths beyond its context and a run folder that cannot
    # be written are refused before anything is written; then the run folder is created, locked and given its
    # run.json before the model loads.
    if resume is None:
        check_writable_folder("--out", out_dir)
    resolved = check_before_load(model, device, dtype, scenarios, trust_remote_code)
    writer = RunWriter(out_dir, {"options": options}, resume=resume is not None)
    try:
        records = sweep(model, run_options, scenarios, writer, settings, resolved)
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
    finish(records, out_dir, wide)


def sweep(model: str, options: RunOptions, scenarios: list, writer, settings: dict, resolved=None) -> list[dict]:
    """Load the model, then measure the scenarios not yet recorded in `writer`'s run under a progress bar."""
    from ..measuring.engines.decode import check_compile
    from ..measuring.harness.eta import SweepEstimate
    from ..measuring.loading.models import load_model
    from ..measuring.harness.interleave import todo_after
    from ..measuring.harness.runner import run_sweep

    repeats, warmup = options.repeats, options.warmup
    order = "grouped" if options.on_oom == "skip-larger" else options.order
    todo = (todo_after(writer.records(), scenarios, order, options.on_oom in (None, "continue"))[1] if writer.resumed
            else scenarios)
    with console.status(f"loading {escape(model)}"):
        loaded = load_model(model, **options.load_kwargs(), resolved=resolved)
    check_compile(scenarios, loaded.device)
    console.print(
        f"[bold]{escape(loaded.name)}[/] ({loaded.source}) on {loaded.device} in "
        f"{str(loaded.dtype).removeprefix('torch.')}: {len(todo)} scenarios"
        + (f" (of {len(scenarios)}; the others are recorded)" if len(todo) < len(scenarios) else "")
        + f" x ({warmup} warm-up + {repeats} timed) -> {escape(str(writer.dir))}", highlight=False,
    )
    if not todo:
        return run_sweep(loaded, scenarios, writer, options, settings=settings)
    with console.status("timing a probe forward for the time estimates"):
        estimate = SweepEstimate.probe(loaded, todo, repeats, warmup)
    if line := slow_line(loaded, estimate):
        console.print(line, highlight=False, soft_wrap=True)  # one line, however narrow: a pipe never breaks it
    return sweep_with_progress(loaded, scenarios, todo, writer, estimate, options, settings)


def run_with_ray(model, options: RunOptions, scenarios, out_dir, settings, address, gpus_per_task, workers,
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

    console.print(f"[bold]{escape(model)}[/] on Ray: {len(scenarios)} scenarios x ({options.warmup} warm-up + "
                  f"{options.repeats} timed) -> {escape(str(out_dir))}", highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting Ray workers", total=len(scenarios))
        records = run_sweep_ray(
            model, scenarios, out_dir, options, settings=settings, address=address, gpus_per_task=gpus_per_task,
            workers=workers, progress=lambda rec: bar.update(task, advance=1, description=rec["scenario_id"]),
            say=lambda line: console.print(escape(line), highlight=False),
        )
    finish(records, out_dir, wide)


def finish(records: list[dict], out_dir, wide: bool = False) -> None:
    """The summary table, where the records are, and exit 1 when a scenario failed."""
    from ..report.summary import print_summary

    print_summary(records, console, wide=wide)
    console.print(f"records: {escape(str(Path(out_dir) / 'records.jsonl'))}", highlight=False)
    for r in records:
        if r["status"] == "skipped":
            console.print(f"[yellow]skipped[/] {r['scenario_id']}: {escape(str(r['error']))}", highlight=False)
    failed = [r for r in records if r["status"] == "error"]
    for r in failed:
        console.print(f"[red]error[/] {r['scenario_id']}: {escape(str(r['error']))}")
    if failed:
        raise typer.Exit(1)


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
        if name == "on_oom" and given:  # asked for: --on-oom continue measures the skipped scenarios
            continue
        same = {"".join(str(v).split()) for v in (stored[name], info.get(name)) if v is not None}
        if given and "".join(str(value).split()) not in same:
            raise UserError(f"{flag} {value}: the run in {run_dir} was started with {flag} {stored[name]} "
                            "(--resume keeps the run's settings; leave the option out)")
        merged[name] = stored[name]
    return merged


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


def sweep_with_progress(loaded, scenarios, todo, writer, estimate, options: RunOptions,
                        settings=None) -> list[dict]:
    """`run_sweep` of `todo` (the scenarios not yet recorded) under a progress bar: the bar fills by expected work, the current scenario shows its expected
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

    from ..measuring.harness.runner import run_sweep

    class ETAColumn(ProgressColumn):
        def render(self, task):
            at = task.fields.get("at")
            return Text(eta_text(task.fields.get("left_s"), time.monotonic() - at if at else 0.0), style="cyan")

    def label(i: int) -> str:
        if i >= len(todo):
            return "done"
        return f"{todo[i].id} ~{fmt_clock(estimate.expected_s(todo[i]))}"

    costs = [max(estimate.prior_s(s), 1e-9) for s in todo]
    last = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=12), TextColumn("{task.fields[done]}/{task.fields[n]}"),
                  TimeElapsedColumn(), ETAColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label(0), total=sum(costs), done=0, n=len(todo), left_s=estimate.remaining_s(),
                            at=last)

        def advance(record):
            nonlocal last
            now = time.monotonic()  # a skipped scenario counts as expected: it leaves the estimates' scale as is
            done = len(estimate.measured_s)
            estimate.finished(now - last if record["status"] != "skipped" else estimate.expected_s(todo[done]))
            last, i = now, len(estimate.measured_s)
            bar.update(task, advance=costs[i - 1], description=label(i), done=i, left_s=estimate.remaining_s(),
                       at=now)

        return run_sweep(loaded, scenarios, writer, options, settings=settings, progress=advance)


def check_repeats(value):
    """--repeats as typer parses it: a whole number or auto (refused before anything heavy is imported)."""
    if value is not None and str(value).strip() != "auto":
        try:
            int(value)
        except ValueError:
            raise typer.BadParameter(f"Input should be a valid integer or auto, not {value!r}") from None
    return value
