"""The command line: `kvbench run`, `kvbench presets` (and the consumers' commands registered below)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
import typer

try:  # typer >= 0.22 vendors its own copy of click
    from typer._click import ClickException as _VendoredClickException
except ImportError:
    _VendoredClickException = click.ClickException
CLICK_ERRORS = (click.ClickException, _VendoredClickException)
from rich.console import Console
from rich.table import Table

from .errors import UserError

app = typer.Typer(
    help="Measure what the KV cache of a transformers causal LM buys (latency) and costs (memory).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)
# Piped output (CI logs, files) gets a width that fits the summary table instead of rich's default 80.
console = Console() if sys.stdout.isatty() else Console(width=160)

QUICK = dict(prompt_len="16,64,256", new_tokens="32", batch_size="1,4")


def int_list(option: str, text: str) -> list[int]:
    """Parse "16,64,256" into positive integers, naming the option and the bad value otherwise."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit() or int(part) < 1:
            raise UserError(f"{option}: {part!r} is not a positive integer (in {text!r})")
        values.append(int(part))
    return values


def choice_list(option: str, text: str, allowed) -> list[str]:
    values = [part.strip() for part in str(text).split(",")]
    for value in values:
        if value not in allowed:
            raise UserError(f"{option}: {value!r} is not one of {', '.join(allowed)}")
    return values


@app.command()
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
):
    """Sweep a grid of scenarios on one model and write records.jsonl (defaults: a quick grid on `tiny`)."""
    from .models import load_model
    from .runner import default_run_dir, run_sweep
    from .scenario import CACHE_IMPLEMENTATIONS, DECODINGS, grid

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
    with console.status(f"loading {model}"):
        loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    out_dir = out or default_run_dir(model)
    console.print(
        f"[bold]{loaded.name}[/] ({loaded.source}) on {loaded.device} in {str(loaded.dtype).removeprefix('torch.')}: "
        f"{len(scenarios)} scenarios x ({warmup} warm-up + {repeats} timed) -> {out_dir}"
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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

    from .summary import fmt_bytes, fmt_seconds, speedups

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


@app.command()
def presets(dtype: str = typer.Option("float16", help="dtype for the byte figures")):
    """List the bundled model presets: size, context, and KV-cache bytes per token."""
    from . import estimate
    from .kvcache import dtype_nbytes, kv_bytes_per_token
    from .models import list_presets, preset_config, preset_info, resolve_dtype
    from .summary import fmt_bytes
    import torch

    dt = resolve_dtype(dtype, torch.device("cpu"))
    table = Table(title=f"kvbench presets (bytes in {str(dt).removeprefix('torch.')})")
    for col in ["preset", "architecture", "params", "weights", "context", "sliding window", "KV / token", "Hub id"]:
        table.add_column(col, justify="right" if col in ("params", "weights", "context", "KV / token") else "left")
    for name in list_presets():
        config = preset_config(name)
        params = estimate.param_count(config)
        window = getattr(config, "sliding_window", None)
        table.add_row(
            name, config.model_type, f"{params / 1e9:.2f} B" if params > 1e8 else f"{params / 1e6:.1f} M",
            fmt_bytes(params * dtype_nbytes(dt)), str(getattr(config, "max_position_embeddings", "-")),
            str(window) if window else "-", fmt_bytes(kv_bytes_per_token(config, dt, count_sliding=True)),
            preset_info(name).get("hub_id") or "-",
        )
    console.print(table)


# The consumers' commands live beside what they use; registered here so `kvbench --help` lists them all.
from .compare import compare_command  # noqa: E402
from .plan_cli import frontier_command, plan_command  # noqa: E402
from .report import report_command  # noqa: E402

app.command("report")(report_command)
app.command("compare")(compare_command)
app.command("plan")(plan_command)
app.command("frontier")(frontier_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print one line and exit 2; bugs keep their traceback."""
    command = typer.main.get_command(app)
    try:
        # Outside standalone mode click returns a command's typer.Exit code instead of raising it.
        code = command.main(args=argv, prog_name="kvbench", standalone_mode=False)
    except (UserError, *CLICK_ERRORS) as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `kvbench`: the help, not an error
            print(exc.format_message())
            return 0
        message = str(exc) if isinstance(exc, UserError) else exc.format_message()
        print(f"kvbench: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except (typer.Exit, click.exceptions.Exit) as exc:
        return exc.exit_code
    except (typer.Abort, click.Abort):
        print("kvbench: aborted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
