"""The table `kvbench run` prints at the end: one row per scenario, what the cache buys (latency with and without
it, the speedup) and what it costs (the bytes it held, beside the estimates).

Only what tells the rows apart is a column: the axes Scenario declares (`kvbench.inputs.axes`; the cache switch
aside, which the columns show) that vary in the run (those that do not are named once under the table). The
numbers sit in the columns of the run's `--use-cache` choice: with the cache only, without it only ("without
cache"), or both side by side with the speedup. Rows whose timed repeats lie further apart than `SPREAD_LIMIT`
carry a `*` and a footnote. The table fits the console: columns that matter less
are left out (and named) until it does; `wide` keeps every column.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..inputs import axes
from ..results.frame import SPREAD_LIMIT, noisy, ok_rows, speedups, with_spread
from ..units import fmt_bytes, fmt_seconds
from .caveats import below_level, busy, contention_summary, interval_text

NOISY = "*"
BUSY = "!"  # measured under contention (either side of a speedup)
KEEP = 100  # priority of the columns never left out for width


@dataclass
class Column:
    header: str
    cells: list[str]
    priority: int = KEEP  # when the table is too wide, the lowest priority goes first
    wide_only: bool = False  # shown with `wide` only


def _axis_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None or value != value else str(value)


def _count(value) -> str:
    return "-" if value is None or value != value else f"{int(value):,}"


def fmt_time(seconds) -> str:
    """Seconds as the table shows them: "732.4 ms", "12.24 s", "7537 s" (at most 8 characters below 3 hours)."""
    if seconds is None or seconds != seconds or seconds < 100:
        return fmt_seconds(seconds)
    return f"{seconds:.0f} s"


def fmt_speedup(ratio) -> str:
    if not ratio or ratio != ratio:
        return "-"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def _timed(seconds, spread) -> str:
    return fmt_time(seconds) + (NOISY if noisy(spread) else "")


def summary_rows(records: list[dict]):
    """The rows to show and the `--use-cache` choice they come from: "both" (cached rows beside their uncached
    twin, `*_nocache` columns), "on" or "off"."""
    import pandas as pd

    df = with_spread(ok_rows(pd.DataFrame(records)))
    if df.empty:
        return df, "on"
    cached = df["use_cache"].astype(bool)
    if cached.any() and (~cached).any():
        return speedups(df.assign(run="")), "both"
    names = [a for a in shown_axes() if a.name in df]
    return df.sort_values([a.name for a in names]).reset_index(drop=True), "on" if cached.all() else "off"


def shown_axes() -> list:
    """The axes the table may show: every declared axis but the cache switch (the columns say with or without)."""
    return [a for a in axes.declaration() if a.kind != axes.SWITCH]


def summary_columns(records: list[dict], wide: bool = False) -> tuple[list[Column], list[str]]:
    """Every column the table may show (axes first), and the axes that hold one value throughout as "P=16"."""
    rows, mode = summary_rows(records)
    if rows.empty:
        return [], []
    recs = rows.to_dict("records")
    get = lambda key: [r.get(key) for r in recs]  # noqa: E731
    columns, constant = [], []
    for axis in [a for a in shown_axes() if a.name in rows]:
        values = [_axis_text(v) for v in get(axis.name)]
        if len(set(values)) > 1 or wide:
            columns.append(Column(axis.header, values))
        elif values[0] != "-":  # an axis that applies to no row (quantization without the quantized cache) is not named
            constant.append(f"{axis.header}={values[0]}")
    on, off = mode in ("on", "both"), mode in ("off", "both")
    # with the cache: the row's own fields; without it: the twin's (*_nocache) in "both", the row's in "off"
    nc = "_nocache" if mode == "both" else ""
    if on:
        columns.append(Column("with\ncache", [_timed(r.get("total_s"), r.get("total_s_spread")) for r in recs]))
    if off:
        columns.append(Column("without\ncache", [_timed(r.get(f"total_s{nc}"), r.get(f"total_s_spread{nc}"))
                                                 for r in recs]))
    if on and off:
        columns.append(Column("speedup", [
            fmt_speedup(r.get("speedup"))
            + (NOISY if noisy(r.get("total_s_spread")) or noisy(r.get("total_s_spread_nocache")) else "")
            + (BUSY if busy(r) else "") for r in recs]))
        levels = [r.get("speedup_ci_level") for r in recs]
        below = any(below_level(v) for v in levels)  # too few repeats for 95% somewhere
        columns.append(Column("interval\n(coverage)" if below else "95%\ninterval",
                              [interval_text(r.get("speedup_ci_low"), r.get("speedup_ci_high"), r.get("speedup_ci_level"))
                                               .strip() or "-" for r in recs], priority=60))
    elif any(busy(r) for r in recs):
        columns.append(Column("busy", [BUSY if busy(r) else "" for r in recs]))
    suffix = "" if on else nc
    columns.append(Column("TTFT", [fmt_seconds(r.get(f"ttft_s{suffix}")) for r in recs], priority=30))
    columns.append(Column("step", [fmt_seconds(r.get(f"decode_step_s{suffix}")) for r in recs], priority=40))
    if on and off:
        columns.append(Column("TTFT\nwithout", [fmt_seconds(r.get("ttft_s_nocache")) for r in recs],
                              wide_only=True))
        columns.append(Column("step\nwithout", [fmt_seconds(r.get("decode_step_s_nocache")) for r in recs],
                              wide_only=True))
        columns.append(Column("positions\nwith/without", [
            f"{_count(r.get('positions_processed'))}/{_count(r.get('positions_processed_nocache'))}"
            for r in recs], priority=50))
    else:
        columns.append(Column("positions", [_count(r.get(f"positions_processed{suffix}")) for r in recs],
                              priority=50))
    if on:
        columns.append(Column("KV\nmeasured", [fmt_bytes(v) for v in get("kv_cache_bytes")]))
        columns.append(Column("KV\nestimate", [
            "exact" if r.get("kv_cache_bytes") is not None and r.get("kv_cache_bytes_estimate") == r["kv_cache_bytes"]
            else fmt_bytes(r.get("kv_cache_bytes_estimate")) for r in recs], priority=20))
        columns.append(Column("KV\nnaive", [fmt_bytes(v) for v in get("kv_cache_bytes_naive")], priority=10))
    if wide:
        for key, head in (("total_s_spread", "spread"), ("total_s_spread_nocache", "spread\nwithout")):
            if key in rows and (key != "total_s_spread" or on):
                columns.append(Column(head, ["-" if v != v or v is None else f"{v:.0%}" for v in get(key)]))
    return [c for c in columns if wide or not c.wide_only], constant


def _table(columns: list[Column], title: str, caption: str | None):
    from rich import box
    from rich.table import Table

    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, caption_justify="left", pad_edge=False,
                  collapse_padding=True, show_edge=False)
    for column in columns:
        table.add_column(column.header, justify="right", no_wrap=True)
    for cells in zip(*(c.cells for c in columns)):
        table.add_row(*cells)
    return table


def _width(console, table) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update(width=10_000), table).maximum


def summary_table(records: list[dict], console, wide: bool = False):
    """The rich Table to print on `console`, and the lines to print under it (noise, columns left out)."""
    columns, constant = summary_columns(records, wide)
    title = "KV cache: what it buys and costs"
    if not columns:
        return None, ["no scenario ran successfully: nothing to summarize"]
    caption = "every row: " + ", ".join(constant) if constant else None
    dropped = []
    table = _table(columns, title, caption)
    while not wide and _width(console, table) > console.width:
        optional = [c for c in columns if c.priority < KEEP]
        if not optional:
            break
        drop = min(optional, key=lambda c: c.priority)
        columns.remove(drop)
        dropped.append(drop.header.replace("\n", " "))
        table = _table(columns, title, caption)
    notes = []
    if any(NOISY in cell for c in columns for cell in c.cells):
        notes.append(f"{NOISY} timed repeats more than {SPREAD_LIMIT:.0%} apart (max - min over median): the "
                     "timing is noisy; rerun with more --repeats on an idle machine")
    if note := contention_summary([r for r in records if r.get("status", "ok") == "ok"]):
        notes.append(f"{BUSY} " + note)
    if dropped:
        notes.append(f"left out to fit {console.width} columns: {', '.join(dropped)} (--wide shows every column)")
    return table, notes


def print_summary(records: list[dict], console, wide: bool = False) -> None:
    """Print the summary table of a run's records on a rich `console`, its footnotes, and the out-of-memory rows."""
    table, notes = summary_table(records, console, wide)
    if table is not None and wide and _width(console, table) > console.width:
        from rich.segment import Segments

        # wider than the console: rendered at its own width, lines left to the terminal to wrap
        lines = console.render(table, console.options.update_width(_width(console, table)))
        console.print(Segments(lines), soft_wrap=True)
    elif table is not None:
        console.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False)
    for r in records:
        if r.get("status") == "oom":
            console.print(f"[yellow]out of memory[/] {r['scenario_id']}")
