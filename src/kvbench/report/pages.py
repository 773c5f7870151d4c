"""Pages (the report, the comparison) as sections of text, figures and tables, written three ways: a
self-contained HTML file (figures embedded as data URIs, no script, no network), Markdown beside PNG files,
and each figure as PNG and SVG with each table as CSV.

Everything that comes from data reaches the HTML through Jinja2's autoescape and the Markdown through `md_cell`.
Output depends only on the input: no timestamps, no random ids; SVG ids are salted by a constant, and each
figure's layout is frozen on a grid before it is saved (`figstyle.freeze_layout`).
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..units import fmt_bytes, fmt_seconds

FIGURES_DIR = "figures"
TABLES_DIR = "tables"


@dataclass
class Table:
    caption: str
    frame: pd.DataFrame  # raw values; shown through `display_frame`, written whole to CSV
    name: str | None = None  # tables/<name>.csv
    collapsed: bool = True
    display: pd.DataFrame | None = None  # a shorter table to show instead of `frame` (the CSV keeps `frame`)
    text: bool = False  # cells of prose: wrapped and left-aligned


@dataclass
class Section:
    title: str
    anchor: str
    text: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warning_title: str = ""
    notes: list[str] = field(default_factory=list)
    figure: str | None = None  # figures/<figure>.{png,svg}
    tables: list[Table] = field(default_factory=list)
    caption: str | None = None  # under the figure: what it shows and where its data come from


@dataclass
class Page:
    title: str
    lead: list[str]
    sections: list[Section]
    header: list[tuple[str, str]] = field(default_factory=list)  # (field, value) under the title: model, device...


# ------------------------------------------------------------------ formatting
def fmt_ratio(value) -> str:
    """A ratio as people read it: "1.200x", "0.056x", "12.6x", "831x"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}x" if abs(value) < 10 else f"{value:,.1f}x" if abs(value) < 1000 else f"{value:,.0f}x"


def fmt_value(column: str, value) -> str:
    """A cell as text, by the unit in its column name (`_bytes`, `_s`, `_gbps`, spreads and fractions; ratios
    (`_ratio`, `a_over_b`, `speedup`) as "1.200x" whatever unit the figures they divide carry)."""
    if isinstance(value, (list, tuple, dict)):
        return f"[{len(value)} values]"
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return str(value)
    name = column.lower()
    for suffix in ("_nocache", "_base", "_new"):
        name = name.removesuffix(suffix)
    if name.endswith("_ratio") or "_over_" in name or name == "speedup":
        return fmt_ratio(value)
    if "spread" in name or name.endswith("_fraction"):
        return f"{value:.1%}"
    if "_bytes" in name:
        return fmt_bytes(value)
    if name.endswith("_s") or "_s_" in name:
        return fmt_seconds(value)
    if float(value).is_integer():
        return f"{int(value)}"
    if name.endswith("_gbps"):
        return f"{value:,.1f}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def display_frame(frame: pd.DataFrame, drop_constant: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Cells as text; columns that hold one value throughout (and list columns) are lifted into a caption."""
    frame = frame.reset_index(drop=True)
    lists = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, (list, dict))).any()]
    frame = frame.drop(columns=lists)
    constant = []
    if drop_constant and len(frame) > 1:
        for col in frame.columns:
            values = frame[col].astype(str).unique()
            if len(values) == 1 and len(frame.columns) - len(constant) > 2:
                constant.append(col)
    shown = frame.drop(columns=constant)
    text = pd.DataFrame({c: [fmt_value(c, v) for v in shown[c]] for c in shown.columns}, index=shown.index)
    return text, [f"{c} = {fmt_value(c, frame[c].iloc[0])}" for c in constant]


def md_cell(text) -> str:
    """Text safe inside a Markdown table cell (and as HTML, which Markdown passes through)."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


# ------------------------------------------------------------------ writing
def save_figure(fig, out_dir: Path, stem: str) -> dict[str, bytes]:
    """figures/<stem>.png and .svg, with fixed metadata so the same figure gives the same bytes."""
    from .figstyle import freeze_layout, style

    folder = out_dir / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    with style():
        freeze_layout(fig)
        for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
            path = folder / f"{stem}.{fmt}"
            fig.savefig(path, format=fmt, metadata=metadata)
            written[fmt] = path.read_bytes()
    return written


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("kvbench", "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )


def _tables_for(section: Section) -> list[dict]:
    out = []
    for table in section.tables:
        text, constant = display_frame(table.display if table.display is not None else table.frame,
                                       drop_constant=not table.text)
        out.append(dict(caption=table.caption, columns=list(text.columns), rows=text.values.tolist(),
                        constant=constant, csv=f"{TABLES_DIR}/{table.name}.csv" if table.name else None,
                        collapsed=table.collapsed, whole=table.display is not None, text=table.text))
    return out


def render_html(page: Page, svgs: dict[str, bytes], widths: dict[str, int]) -> str:
    """The page as one HTML document; `svgs` maps figure stems to SVG bytes, `widths` to display widths (px)."""
    sections = []
    for s in page.sections:
        image = None
        if s.figure and s.figure in svgs:
            image = "data:image/svg+xml;base64," + base64.b64encode(svgs[s.figure]).decode("ascii")
        sections.append(dict(title=s.title, anchor=s.anchor, text=s.text, warnings=s.warnings,
                             warning_title=s.warning_title, notes=s.notes, image=image, figure=s.figure,
                             width=widths.get(s.figure), tables=_tables_for(s), caption=s.caption))
    return _environment().get_template("page.html.j2").render(title=page.title, lead=page.lead, sections=sections,
                                                              header=page.header)


def render_markdown(page: Page, figures: set[str]) -> str:
    lines = [f"# {md_cell(page.title)}", ""]
    if page.header:
        lines += [" · ".join(f"**{md_cell(k)}:** {md_cell(v)}" for k, v in page.header), ""]
    lines += [md_cell(p) for p in page.lead] + [""]
    for s in page.sections:
        lines += [f"## {md_cell(s.title)}", ""]
        for p in s.text:
            lines += [md_cell(p), ""]
        if s.warnings:
            lines += [f"> **Warning:** {md_cell(s.warning_title)}", ">"]
            lines += [f"> - {md_cell(w)}" for w in s.warnings] + [""]
        for n in s.notes:
            lines += [f"> **Note:** {md_cell(n)}", ""]
        if s.figure and s.figure in figures:
            lines += [f"![{md_cell(s.title)}]({FIGURES_DIR}/{s.figure}.png)", "",
                      f"([SVG]({FIGURES_DIR}/{s.figure}.svg))", ""]
            if s.caption:
                lines += [f"*{md_cell(s.caption)}*", ""]
        for t in _tables_for(s):
            caption = md_cell(t["caption"])
            if t["csv"]:
                caption += f" ([CSV]({t['csv']}){', every row' if t['whole'] else ''})"
            lines += [f"**{caption}**", ""]
            if t["constant"]:
                lines += ["All rows: " + "; ".join(md_cell(c) for c in t["constant"]), ""]
            lines += [md_table(pd.DataFrame(t["rows"], columns=t["columns"])), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_page(page: Page, out_dir: str | Path, name: str, figures: dict) -> dict[str, Path]:
    """Write <name>.html, <name>.md, figures/*.png|svg and tables/*.csv; returns the paths by kind.

    `figures` maps a section's figure stem to a matplotlib Figure.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    svgs = {stem: save_figure(fig, out_dir, stem)["svg"] for stem, fig in figures.items()}
    for s in page.sections:  # a figure this input cannot draw must not linger from an earlier report
        if s.figure and s.figure not in figures:
            for path in (FIGURES_DIR + f"/{s.figure}.png", FIGURES_DIR + f"/{s.figure}.svg",
                         TABLES_DIR + f"/{s.figure}.csv"):
                (out_dir / path).unlink(missing_ok=True)
    tables = out_dir / TABLES_DIR
    for s in page.sections:
        for t in s.tables:
            if t.name:
                tables.mkdir(exist_ok=True)
                t.frame.to_csv(tables / f"{t.name}.csv", index=False, lineterminator="\n")
    paths = {"html": out_dir / f"{name}.html", "markdown": out_dir / f"{name}.md"}
    widths = {stem: round(fig.get_figwidth() * 120) for stem, fig in figures.items()}
    paths["html"].write_text(render_html(page, svgs, widths), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(page, set(figures)), encoding="utf-8")
    return paths
