"""What every command shares: the console, the command-line parser's error type, and Table.

Command modules import this one; nothing here imports a command module.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table  # noqa: F401 - re-exported for the command modules

# The parser's usage errors (bad option, missing argument, ...) derive from click's ClickException: click's own up
# to typer 0.25, typer's vendored copy of it from 0.26 (click is then no dependency of typer, nor of kvbench).
# typer.BadParameter is one of them in every release, so its ancestry names the right class without importing click.
CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# Piped output (CI logs, files) gets a width that fits the summary table instead of rich's default 80.
console = Console() if sys.stdout.isatty() else Console(width=160)
