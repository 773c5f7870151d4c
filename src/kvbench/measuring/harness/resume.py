"""Resuming and interrupting a sweep.

Resume: a run folder's `run.json` holds the run's settings (model, device, dtype, repeats, warm-up, the grid as
scenario dicts, and the CLI's options); a resumed sweep measures only the scenarios without a record, and refuses
settings that differ from the run's, naming the field. Records with status "ok", "oom" or "skipped" count as done;
a scenario whose record says "error" is measured again (errors are often passing: a busy device, a bug since fixed)
and its error record is taken out of records.jsonl first, so the run ends with exactly one record per scenario.
"skipped" records (`on_oom="skip-larger"`) stay skipped, unless the resumed sweep is asked for `on_oom="continue"`:
then they are measured again like errors (the memory that ran out may be there now).

Out of memory (`on_oom`): "continue" measures every scenario; "skip-larger" records a scenario as "skipped",
unmeasured, once a scenario it is larger than (`larger_than`) has run out of memory, in this sweep or, resumed, in
the run before.

Interrupt: inside `stop_after_scenario` a first Ctrl-C asks the sweep to stop once the scenario in flight is
recorded (interleaved order: every scenario of its group, `kvbench.measuring.harness.interleave`) (it then raises SweepInterrupted, a KeyboardInterrupt); a second one stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from types import SimpleNamespace

from ...errors import UserError
from ...inputs import axes
from ...inputs.options import MAX_REPEATS, ON_OOM  # noqa: F401 - re-exported
from ...inputs.scenario import Scenario

DONE = ("ok", "oom", "skipped")  # statuses a resumed run does not measure again
# run.json fields a resumed sweep must match: what tells runs apart beyond the scenario, and the timing settings.
# The scenarios themselves are compared by id (every axis, `kvbench.inputs.axes`); what makes one scenario larger
# than another is its size axes.
COMPARED = (*axes.RUN_FIELDS, "repeats", "warmup")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep between two scenarios; every finished scenario is recorded."""

    def __init__(self, done: int, total: int):
        super().__init__(f"stopped after {done} of {total} scenarios")
        self.done, self.total = done, total


def check_sweep_args(scenarios, resume: bool) -> list[Scenario] | None:
    """run_sweep's scenarios, refused with a UserError (a ValueError) naming what is wrong; as a list (the run
    options check themselves: `kvbench.inputs.options.RunOptions`)."""
    if scenarios is None and not resume:
        raise UserError("scenarios: None is only allowed with resume=True (the run's own grid)")
    if scenarios is not None:
        if isinstance(scenarios, (str, bytes, dict)) or not hasattr(scenarios, "__iter__"):
            raise UserError(f"scenarios must be a list of kvbench.Scenario, got {type(scenarios).__name__}")
        scenarios = list(scenarios)
        if not scenarios:
            raise UserError("scenarios: the list is empty (nothing to measure)")
        wrong = [s for s in scenarios if not isinstance(s, Scenario)]
        if wrong:
            raise UserError(f"scenarios must be kvbench.Scenario objects, got {wrong[0]!r}")
    return scenarios


def run_grid(info: dict, where) -> list[Scenario]:
    """The scenarios of a run, rebuilt from the scenario dicts in its run.json."""
    grid = info.get("grid")
    if not isinstance(grid, list) or not grid:
        raise UserError(f"{where}: its run.json holds no grid to resume (a run written by an older kvbench)")
    try:
        return [Scenario(**fields) for fields in grid]
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: its run.json has a scenario this kvbench cannot rebuild ({exc})") from None


def check_same_run(info: dict, given: dict, scenarios: list[Scenario], where) -> None:
    """Refuse, naming the field, settings that differ from the ones the run was started with."""
    for field in COMPARED:
        if field in info and field in given and info[field] != given[field]:
            raise UserError(f"{where}: {field} is {given[field]!r} here but {info[field]!r} in the run being "
                            "resumed (its run.json); resume with the run's settings")
    if "scenarios" in info and sorted(info["scenarios"]) != sorted(s.id for s in scenarios):
        extra = sorted({s.id for s in scenarios} - set(info["scenarios"]))
        missing = sorted(set(info["scenarios"]) - {s.id for s in scenarios})
        raise UserError(f"{where}: scenarios differ from the run being resumed (its run.json): "
                        + "; ".join(part for part in (f"not in the run: {', '.join(extra)}" if extra else "",
                                                      f"left out: {', '.join(missing)}" if missing else "") if part))


def split_done(records: list[dict], scenarios: list[Scenario], redo_skipped: bool = False
               ) -> tuple[list[dict], list[Scenario]]:
    """(records that stay, scenarios still to measure): records of status ok/oom/skipped stay and their scenarios
    are done; error records (and skipped ones, with `redo_skipped`) are dropped and their scenarios measured again."""
    done_statuses = [s for s in DONE if not (redo_skipped and s == "skipped")]
    kept = [r for r in records if r.get("status", "ok") in done_statuses]
    done = {r.get("scenario_id") for r in kept}
    return kept, [s for s in scenarios if s.id not in done]


def larger_than(scenario: Scenario, other: Scenario) -> bool:
    """Whether `scenario` is `other` grown along the size axes: the same on every other axis, at least as large on
    every size axis (prompt, new tokens, batch), and larger on one of them."""
    mine, theirs = scenario.as_dict(), other.as_dict()
    sizes = axes.names(axes.SIZE)
    if any(mine[k] != theirs[k] for k in axes.names() if k not in sizes):
        return False
    return mine != theirs and all(mine[k] >= theirs[k] for k in sizes)


class OOMSkips:
    """on_oom="skip-larger": the scenarios that ran out of memory, and the reason a larger one is not run."""

    def __init__(self, on_oom: str, records=(), scenarios=()):
        self.active = on_oom == "skip-larger"
        by_id = {s.id: s for s in scenarios}
        self.ooms = [by_id[r["scenario_id"]] for r in records
                     if r.get("status") == "oom" and r.get("scenario_id") in by_id]

    def reason(self, scenario: Scenario) -> str | None:
        """Why `scenario` is skipped (naming the scenario that ran out of memory), or None: measure it."""
        if not self.active:
            return None
        for oom in self.ooms:
            if larger_than(scenario, oom):
                return f"not run: larger than {oom.id}, which ran out of memory (on_oom skip-larger)"
        return None

    def saw(self, scenario: Scenario, record: dict) -> None:
        if record.get("status") == "oom":
            self.ooms.append(scenario)


@contextmanager
def stop_after_scenario():
    """`state.requested` turns true on a first Ctrl-C (a line on stderr says so); a second Ctrl-C raises
    KeyboardInterrupt at once. Only where Python's own SIGINT handler is in place, in the main thread."""
    state = SimpleNamespace(requested=False)
    if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield state
        return

    def on_sigint(signum, frame):
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True
        print("\nCtrl-C: stopping after the scenario in flight (interleaved: with the scenarios taking turns "
              "with it) (Ctrl-C again stops now)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
