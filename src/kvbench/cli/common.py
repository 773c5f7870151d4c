"""What every command shares: the console, click's error types (typer's vendored copy too), and Table.

Command modules import this one; nothing here imports a command module.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table  # noqa: F401 - re-exported for the command modules

try:  # typer >= 0.22 vendors its own copy of click
    from typer._click import ClickException as _VendoredClickException
except ImportError:
    _VendoredClickException = click.ClickException
CLICK_ERRORS = (click.ClickException, _VendoredClickException)

# Piped output (CI logs, files) gets a width that fits the summary table instead of rich's default 80.
console = Console() if sys.stdout.isatty() else Console(width=160)
