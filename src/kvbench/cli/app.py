"""The `kvbench` command: the Typer app, every command registered on it, and `main` (the entry point).

User mistakes print one line and exit 2; bugs keep their traceback.
"""

from __future__ import annotations

import sys
import warnings

import typer

from ..errors import UserError
from ..results.schema import PartialLineWarning
from .common import CLICK_ERRORS
from .env import env_command, version_line
from .inspect import inspect_command
from .merge import merge_command
from .plan import frontier_command, plan_command
from .presets import presets
from .report import compare_command, report_command
from .run import run
from .steps import steps_command

app = typer.Typer(
    help="Measure what the KV cache of a transformers causal LM buys (latency) and costs (memory).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)
app.command("run")(run)
app.command("presets")(presets)
app.command("report")(report_command)
app.command("compare")(compare_command)
app.command("plan")(plan_command)
app.command("frontier")(frontier_command)
app.command("merge")(merge_command)
app.command("inspect")(inspect_command)
app.command("steps")(steps_command)
app.command("env")(env_command)


def _show_version(value: bool) -> None:
    if value:
        print(version_line())
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                          help="Show kvbench's, Python's, torch's and transformers' versions.")):
    """Measure what the KV cache of a transformers causal LM buys (latency) and costs (memory)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print one line and exit 2; bugs keep their traceback."""
    command = typer.main.get_command(app)
    try:
        with warnings.catch_warnings():
            # Libraries' deprecation notices are not kvbench's output: ignored, as Python's default filters do outside
            # __main__ (a host that turns them on, pytest, would print torch's at hqq's import amid a one-line error).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("always", PartialLineWarning)  # every skipped line, however often seen before
            warnings.showwarning = show_warning
            # Outside standalone mode click returns a command's typer.Exit code instead of raising it.
            code = command.main(args=argv, prog_name="kvbench", standalone_mode=False)
    except (UserError, *CLICK_ERRORS) as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `kvbench`: the help, not an error
            print(exc.format_message())
            return 0
        message = str(exc) if isinstance(exc, UserError) else exc.format_message() + bad_value(exc)
        print(f"kvbench: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except typer.Exit as exc:  # click's Exit up to typer 0.25, typer's own after
        return exc.exit_code
    except typer.Abort:
        print("kvbench: aborted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """kvbench's own warnings (a skipped half-written line, ...) as one line each; others as Python prints them."""
    if issubclass(category, PartialLineWarning):
        print(f"kvbench: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def bad_value(exc) -> str:
    """The value typer refused, quoted, where its message leaves it out ("Input should be a valid integer")."""
    errors = getattr(exc.__cause__, "errors", None)  # typer validates through pydantic
    try:
        value = errors()[0]["input"] if errors else None
    except (TypeError, LookupError):
        return ""
    return f" (got {value!r})" if value is not None and repr(value) not in exc.format_message() else ""


if __name__ == "__main__":
    sys.exit(main())
