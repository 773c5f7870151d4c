"""`kvbench report` and `kvbench compare`: the commands over `kvbench.report`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich.markup import escape

from ..errors import UserError
from ..report.metrics import GATED, METRICS
from .common import check_writable_folder, console

if TYPE_CHECKING:
    import pandas as pd

# The defaults of `kvbench compare --gate` and the metrics it may name (report.metrics: no pandas needed to parse).
GATE_DEFAULT = ",".join(GATED)
GATE_METRICS = ", ".join(METRICS)


def report_command(
    runs: List[Path] = typer.Argument(..., help="run folders, records.jsonl or pytest-benchmark JSON files"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: RUN/report for one run folder, "
                                                  "<file>-report beside one file, else ./kvbench-report)"),
):
    """Figures and tables of one or several runs: report.html (self-contained), report.md, PNG/SVG, CSV."""
    import matplotlib

    matplotlib.use("Agg")
    from ..report.report import default_out, write_report

    out_dir = out or default_out(runs)
    check_writable_folder("--out", out_dir)
    paths = write_report(runs, out_dir)
    typer.echo(f"report: {paths['html']}")
    typer.echo(f"markdown: {paths['markdown']} (figures in {out_dir / 'figures'}, tables in {out_dir / 'tables'})")


def print_comparison(table: pd.DataFrame, threshold: float, env: pd.DataFrame, notes: list[str], gated) -> None:
    """The ratios new / base on the console (regressions red, improvements green), the notes, the environment
    fields that differ, each regressed scenario with the metrics that failed, and the verdict line."""
    import pandas as pd
    from rich.table import Table as RichTable

    from ..report.compare import regression_lines, verdict_line
    from ..report.pages import fmt_ratio

    from ..report.verdicts import noise_notes

    styles = {"regression": "red", "improvement": "green", "can't tell": "yellow"}
    metrics = [m for m in METRICS if f"{m}_ratio" in table]
    out = RichTable(title=f"new / base (threshold ±{threshold:.0%}; gated: {', '.join(gated) or 'none'})")
    for col in ["new run", "scenario", *metrics, "verdict"]:
        out.add_column(col, justify="left" if col in ("new run", "scenario", "verdict") else "right")
    for rec in table.to_dict("records"):
        cells = []
        for m in metrics:
            ratio = rec[f"{m}_ratio"]
            text = "-" if pd.isna(ratio) else fmt_ratio(ratio)
            style = styles.get(rec[f"{m}_verdict"])
            cells.append(f"[{style}]{text}[/]" if style else text)
        verdict = rec["verdict"] + (f" ({rec['regressed']})" if rec["regressed"] else "")
        out.add_row(escape(str(rec["new_run"])), escape(str(rec["scenario"])), *cells,
                    f"[{styles[rec['verdict']]}]{verdict}[/]" if rec["verdict"] in styles else verdict)
    console.print(out)
    notes = [*notes, *noise_notes(table, threshold, gated)]
    for note in notes:
        console.print(f"[yellow]note[/] {escape(note)}", markup=True, highlight=False)
    if len(env):
        console.print("environment differs: " + "; ".join(
            f"{r['field']}: " + " vs ".join(str(v) for v in list(r.values())[1:]) for r in env.to_dict("records")),
            highlight=False, markup=False)
    for line in regression_lines(table):
        console.print(f"[red]regression[/] {escape(line)}", highlight=False)
    line = verdict_line(table, threshold, gated)
    console.print(f"[red]{escape(line)}[/]" if line.startswith("FAIL") else f"[green]{escape(line)}[/]", highlight=False)


def compare_command(
    base: Path = typer.Argument(..., help="the reference run (run folder, records.jsonl or pytest-benchmark JSON)"),
    new: List[Path] = typer.Argument(..., help="runs to compare with it"),
    threshold: str = typer.Option("5%", help="changes beyond this mark a regression or improvement (5% or 0.05)"),
    out: Optional[Path] = typer.Option(None, help="also write compare.html, compare.md, figure and CSV here"),
    gate: str = typer.Option(GATE_DEFAULT, help="metrics whose regression fails the comparison (comma-separated, "
                                                f"of {GATE_METRICS}; 'none' for none). The peak RSS "
                                                "(peak_rss_delta_bytes) is noisy: it gates only when named here"),
    fmt: str = typer.Option("table", "--format", help="table (the terminal) or json (every row's ratio, "
                                                      "interval, p-value and verdict, per metric)"),
):
    """Match scenarios across runs and show new / base ratios; exit 1 on a significant regression beyond the
    threshold (Mann-Whitney U on the timed repeats, p < 0.002) measured without contention."""
    import pandas as pd

    from ..report.compare import (
        compare_page,
        compare_table,
        parse_gate,
        parse_threshold,
        plot_compare,
        unmatched,
    )
    from ..report.report import environment_differences, load_runs

    if fmt not in ("table", "json"):
        raise UserError(f"--format: {fmt!r} is not table or json")
    limit = parse_threshold(threshold)
    gated = parse_gate(gate)
    if out:
        check_writable_folder("--out", out)
    paths = [base, *new]
    df = load_runs(paths, one_run_per_path=True)
    names = list(pd.unique(df["run"]))
    table = compare_table(df, names[0], names[1:], limit, gated)
    env = environment_differences(df)
    notes = unmatched(df, names[0], names[1:], table)
    if fmt == "json":
        import json

        from ..report.verdicts import table_json

        typer.echo(json.dumps(table_json(table, METRICS, limit), indent=1))
    else:
        print_comparison(table, limit, env, notes, [m for m in gated if f"{m}_ratio" in table])
    if out:
        import matplotlib

        matplotlib.use("Agg")
        from ..report.pages import write_page

        page = compare_page(df, names[0], names[1:], table, limit, [str(p) for p in paths], gated)
        written = write_page(page, out, "compare", {"compare": plot_compare(table, limit)})
        typer.echo(f"comparison: {written['html']}")
    if (table["verdict"] == "regression").any():
        raise typer.Exit(1)
