"""Docs that agree with the CLI: every `kvbench ...` command line the docs show (code blocks and inline code), every
option their option tables name, and every metric they name for `--gate`, run through the CLI's own parser."""

import re
import shlex
from pathlib import Path

import pytest
import typer

from kvbench.cli.app import app
from kvbench.cli.report import GATE_DEFAULT
from kvbench.report.compare import parse_gate

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
CLI = typer.main.get_command(app)
PLACEHOLDER = re.compile(r"\.\.\.|\[|<|\||\bN\b|\$")  # a synopsis (RUN..., [--out DIR], <run>), not a command


def command_lines(inline: bool = False) -> list[tuple[str, str]]:
    """(where, command line) for each `kvbench ...` line of a code block, or (`inline`) each inline `kvbench ...`
    span (often part of a command: its options are checked, not its completeness)."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("kvbench ") and not inline:
                    found.append((doc.name, line.split(" #")[0].split(" || ")[0].strip()))
        for span in re.findall(r"`(kvbench [^`]+)`", text):
            if inline and not PLACEHOLDER.search(span):
                found.append((doc.name, span))
    return found


LINES = command_lines()
SPANS = command_lines(inline=True)


def test_the_docs_show_command_lines():
    assert len(LINES) > 30  # the collection itself works


@pytest.mark.parametrize("where, line", LINES, ids=[f"{w}:{line}"[:90] for w, line in LINES])
def test_every_command_line_in_the_docs_parses(where, line):
    args = shlex.split(line)[1:]
    if "--help" in args or "--version" in args:
        return
    name, *rest = args
    assert name in CLI.commands, f"{where}: kvbench {name} is no command"
    command = CLI.commands[name]
    command.make_context(f"kvbench {name}", rest)  # click's parse and typer's conversion: a usage error raises
    if "--gate" in rest:
        parse_gate(rest[rest.index("--gate") + 1])


@pytest.mark.parametrize("where, span", SPANS, ids=[f"{w}:{span}"[:90] for w, span in SPANS])
def test_every_option_an_inline_command_names_is_the_commands(where, span):
    args = shlex.split(span)[1:]
    if not args or args[0] in ("COMMAND", "--version", "--help"):  # the program itself
        return
    name, *rest = args
    assert name in CLI.commands, f"{where}: kvbench {name} is no command"
    opts = {o for p in CLI.commands[name].params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for option in (a.split("=")[0] for a in rest if a.startswith("--")):
        assert option in opts, f"{where}: kvbench {name} has no {option}"
    if "--gate" in rest and rest.index("--gate") + 1 < len(rest):
        parse_gate(rest[rest.index("--gate") + 1])


def option_rows() -> list[tuple[str, str, str]]:
    """(command, option, the row) for each option an option table of docs/cli.md names."""
    rows, command = [], None
    for line in (ROOT / "docs" / "cli.md").read_text().splitlines():
        heading = re.match(r"## `kvbench (\w+)`", line)
        if heading:
            command = heading.group(1)
        elif command and line.startswith("| `"):
            first = line.split("|")[1]
            rows += [(command, option, line) for option in re.findall(r"--[a-z][a-z0-9-]*", first)]
    return rows


@pytest.mark.parametrize("command, option, row", option_rows(), ids=lambda v: v if len(v) < 40 else None)
def test_every_option_the_tables_name_is_the_commands(command, option, row):
    opts = {o for p in CLI.commands[command].params for o in (*p.opts, *p.secondary_opts)}
    assert option in opts, f"kvbench {command} has no {option}"


def test_every_gate_metric_the_docs_name_is_accepted_and_the_default_is_the_clis():
    cli_md = (ROOT / "docs" / "cli.md").read_text()
    row = \
        next(line for line in cli_md.splitlines() if line.startswith("| `--gate`"))
    meaning, default = row.split("|")[2], row.split("|")[3]
    for metric in re.findall(r"`([a-z_]+)`", meaning):
        parse_gate(metric)
    assert default.strip().strip("`") == GATE_DEFAULT
    reports = " ".join((ROOT / "docs" / "reports.md").read_text().split())
    defaults = re.search(r"by default ((?:`[a-z_]+`,? ?)+)", reports).group(1)
    assert ",".join(re.findall(r"`([a-z_]+)`", defaults)) == GATE_DEFAULT


def test_the_default_repeats_the_docs_name_are_those_each_way_of_running_takes():
    """kvbench run: 3 (docs/cli.md); the Python API (measure, RunOptions) and the plugin's --kv-rounds: 5."""
    import inspect

    from kvbench import RunOptions, measure
    from kvbench.inputs.options import CLI_REPEATS, REPEATS

    def default_column(doc, option, column):
        row = next(line for line in (ROOT / "docs" / doc).read_text().splitlines() if line.startswith(f"| `{option}`"))
        return row.split("|")[column].strip().strip("`")

    run = {p.name: p.default for p in CLI.commands["run"].params}
    assert (run["repeats"], default_column("cli.md", "--repeats", -2)) == (str(CLI_REPEATS), "3")
    assert default_column("bench.md", "--kv-rounds", 2) == str(REPEATS) == "5"
    api = re.search(r"`measure\(model, scenario, repeats=(\d+)", (ROOT / "docs" / "python-api.md").read_text())
    assert int(api.group(1)) == REPEATS == RunOptions().repeats
    assert inspect.signature(measure).parameters["repeats"].default == REPEATS
