"""`kvbench inspect`: a model's module tree with parameters and bytes, the config figures that decide its KV cache,
and the cache's bytes per token, exact and naive (kvbench.estimate.inspect; meta device, no memory)."""

from __future__ import annotations

import json

import typer

from ..errors import UserError
from .common import Table, console

FORMATS = ("table", "csv", "json")


def records(part) -> list[dict]:
    """A frame's rows as plain JSON values (missing cells as None)."""
    from ..results.schema import json_safe

    return json_safe(part.astype(object).where(part.notna(), None).to_dict("records"))


def inspect_command(
    model: str = typer.Option("tiny", help="preset name, path to config.json or model folder, or Hub id"),
    dtype: str = typer.Option("float16", help="dtype for the byte figures: float16, bfloat16, float32"),
    format: str = typer.Option("table", "--format", help="table, csv or json"),
    trust_remote_code: bool = typer.Option(False, help="allow a Hub model's own code to run"),
):
    """The module tree (repeated layers folded), parameters and bytes per module and per component, the config
    figures that decide the KV cache, and KV bytes per token, exact and naive. Built on the meta device."""
    from ..estimate.inspect import inspect_model, section

    if format not in FORMATS:
        raise UserError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    frame = inspect_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    if format == "csv":
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    if format == "json":
        data = {
            "model": model, "dtype": frame.attrs["dtype"],
            "modules": records(section(frame, "module")), "components": records(section(frame, "component")),
            "config": {r["name"]: r["value"] for r in records(section(frame, "config"))},
            "kv_cache": records(section(frame, "kv_cache")),
        }
        typer.echo(json.dumps(data, indent=1))
        return
    print_tables(model, frame)


def print_tables(model: str, frame) -> None:
    from ..estimate.inspect import section
    from ..units import fmt_bytes, fmt_bytes_exact

    dtype = frame.attrs["dtype"]
    modules = section(frame, "module")
    tree = Table(title=f"{model}: {frame.attrs['params']:,} parameters, {fmt_bytes(modules.loc[0, 'bytes'])} "
                       f"in {dtype}")
    notes = "note" in modules  # tied weights
    for col in ("module", "kind", "params", "bytes") + (("note",) if notes else ()):
        tree.add_column(col, justify="right" if col in ("params", "bytes") else "left", no_wrap=col == "module")
    for r in records(modules):
        cells = ["  " * r["depth"] + r["name"], r["kind"], f"{r['params']:,}", fmt_bytes(r["bytes"])]
        tree.add_row(*cells, *([r.get("note") or ""] if notes else []))
    console.print(tree)

    parts = Table(title="parameters by component")
    for col in ("component", "params", "share", "bytes"):
        parts.add_column(col, justify="left" if col == "component" else "right")
    total = frame.attrs["params"]
    for r in records(section(frame, "component")):
        share = f"{r['params'] / total:.1%}" if total else "-"
        parts.add_row(r["name"], f"{r['params']:,}", share, fmt_bytes(r["bytes"]))
    console.print(parts)

    config = Table(title="what decides the KV cache")
    config.add_column("figure")
    config.add_column("value", justify="right")
    for r in records(section(frame, "config")):
        config.add_row(r["name"], str(r["value"]))
    console.print(config)

    kv = Table(title=f"KV cache of one sequence ({dtype}, dynamic cache): exact and naive")
    for col in ("", "tokens", "exact", "naive", "exact / naive", "note"):
        kv.add_column(col, justify="left" if col in ("", "note") else "right")
    for r in records(section(frame, "kv_cache")):
        ratio = f"{r['bytes'] / r['naive_bytes']:.2f}" if r["bytes"] is not None and r["naive_bytes"] else "-"
        shown = fmt_bytes_exact if r["tokens"] == 1 else fmt_bytes  # per token: exact, as users check it
        kv.add_row(r["name"], f"{r['tokens']:,}", shown(r["bytes"]), shown(r["naive_bytes"]), ratio,
                   r.get("note") or "")
    console.print(kv)
