"""`kvbench env`: what kvbench sees -- versions, devices, NVML, the GPU table's entry, a C compiler, the extras.

It prints the `env_*` block that every record of a run on that device carries (`measuring.instruments.environment`), and the
devices torch sees. `kvbench --version` prints the version lines of the same block.
"""

from __future__ import annotations

import json

import typer

from ..errors import UserError
from .common import Table, console

FORMATS = ("table", "json")


def env_command(
    device: str = typer.Option("auto", help="the device whose block to show: auto (a GPU where there is one), cpu, "
                                            "cuda, cuda:N"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
):
    """Show what kvbench sees: versions, devices, NVML, the GPU's table entry, C compiler, extras (as in records)."""
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    from ..measuring.instruments.environment import devices, environment
    from ..measuring.loading.models import resolve_device
    from ..units import fmt_bytes

    env, found = environment(resolve_device(device)), devices()
    if fmt == "json":
        print(json.dumps({**env, "devices": found}, indent=2))
        return
    table = Table(title="kvbench env (the env_* fields of every record on this device)", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in env.items():
        shown = fmt_bytes(value) if key.endswith("_bytes") and value is not None else value
        table.add_row(key, "-" if shown is None or shown == "" else str(shown))
    console.print(table)
    seen = Table(title="devices torch sees")
    for column in ("device", "name", "memory", "capability", "in the GPU table as"):
        seen.add_column(column)
    for d in found:
        memory = fmt_bytes(d["memory_bytes"]) if d["memory_bytes"] is not None else "-"
        seen.add_row(d["device"], d["name"], memory, d["capability"] or "-", d["table_name"] or "-")
    console.print(seen)


def version_line() -> str:
    """`kvbench --version`: kvbench's version, then Python's and the main packages' (read without importing them)."""
    from ..measuring.instruments.environment import versions

    found = versions()
    rest = ", ".join(f"{key.removeprefix('env_').replace('_', '-')} {value or 'not installed'}"
                     for key, value in found.items() if key not in ("env_kvbench", "env_python"))
    return f"kvbench {found['env_kvbench']}\nPython {found['env_python']}, {rest}"
