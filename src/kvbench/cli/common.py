"""What every command shares: the console, the command-line parser's error type, Table, and titled tables printed
as rich tables or Markdown (`print_sections`).

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


def check_writable_folder(option: str, folder, shown=None) -> None:
    """Refuse (UserError) a folder that cannot be created or written, before any work; leaves nothing behind.
    Messages name `shown` (the value the user gave) where it is not the folder itself."""
    import tempfile
    from pathlib import Path

    from ..errors import UserError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {shown or folder}: {folder} exists and is not a folder" if shown else
                        f"{option} {folder}: exists and is not a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise UserError(f"{option} {shown or folder}: cannot write there ({exc.strerror or exc})") from None
    finally:
        for path in created:  # the folders this check made, deepest first
            try:
                path.rmdir()
            except OSError:
                pass


def check_writable_file(option: str, path, formats=None) -> None:
    """Refuse (UserError) an output file of an unknown format (`formats`: the suffixes allowed) or in a folder that
    cannot be written, before any work."""
    from pathlib import Path

    from ..errors import UserError

    path = Path(path)
    suffix = path.suffix.lstrip(".").lower()
    if formats is not None and suffix not in formats:
        raise UserError(f"{option} {path}: {'.' + suffix if suffix else 'no suffix'} is not a format it can write "
                        f"(use one of {', '.join('.' + f for f in sorted(formats))})")
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder, not a file")
    check_writable_folder(option, path.parent, shown=path)


def _drop_empty_columns(columns: list[str], rows: list[list[str]]):
    """Leave out columns with nothing to show (the calibrated step time of an uncalibrated plan)."""
    keep = [i for i in range(len(columns)) if not rows or any(row[i] != "-" for row in rows)]
    return [columns[i] for i in keep], [[row[i] for i in keep] for row in rows]


def print_sections(sections, markdown: bool, header: list[str] | None = None) -> None:
    """Titled tables ((title, columns, rows of text) each) under header lines: rich tables, or Markdown."""
    sections = [(title, *_drop_empty_columns(columns, rows)) for title, columns, rows in sections]

    if markdown:  # names from the user's data (model paths, run names) escaped: no HTML, no table breaks
        from ..report.pages import md_cell

        out = [*(f"{md_cell(line)}  " for line in header or [])]
        for title, columns, rows in sections:
            out += ["", f"**{title}**", "", "| " + " | ".join(columns) + " |",
                    "|" + "|".join("---:" for _ in columns) + "|",
                    *("| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows)]
        print("\n".join(out) + "\n")
        return
    from rich.markup import escape

    for line in header or []:
        console.print(line, highlight=False, markup=False)
    for title, columns, rows in sections:
        table = Table(title=title)
        for col in columns:
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(*(escape(str(c)) for c in row))
        console.print(table)
