"""`kvbench merge`: shard run folders joined into one run."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .common import console


def merge_command(
    runs: List[Path] = typer.Argument(..., help="shard run folders (kvbench run --shard I/N)"),
    out: Path = typer.Option(..., help="the merged run folder (new or empty)"),
    ignore: List[str] = typer.Option([], help="a run.json field allowed to differ between runs (repeatable), "
                                              "e.g. --ignore env_git_commit"),
):
    """Join shard run folders into one run; refuse conflicting settings or environments, report missing scenarios."""
    from ..scale.merge import merge_runs

    result = merge_runs(runs, out, ignore=ignore)
    console.print(f"merged {result['records']} records from {len(runs)} runs -> {result['out']}", highlight=False)
    if result["missing"]:
        console.print(f"[yellow]missing[/] {len(result['missing'])} scenarios of the grid: "
                      + ", ".join(result["missing"]), highlight=False)
