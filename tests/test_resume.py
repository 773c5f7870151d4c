"""Resume, locking and Ctrl-C: a resumed run measures only what is not recorded, with the run's own settings; a
run folder is never written twice over or by two processes; Ctrl-C stops between scenarios and says how to resume."""

import json
import os
import signal
import subprocess
import sys

import pytest

import kvbench
from kvbench import UserError
from kvbench.cli.app import main
from kvbench.measuring.harness import interleave, runner
from kvbench.measuring.harness.resume import SweepInterrupted
from kvbench.results.store import PartialLineWarning

GRID = kvbench.grid([4, 6], [2], [1])  # four scenarios: two prompts, with and without the cache


def ids(run_dir):
    return [json.loads(line)["scenario_id"] for line in (run_dir / "records.jsonl").read_text().splitlines()]


def patch_measuring(monkeypatch, before):
    """Call `before(scenario)` as each scenario starts to be measured, alone (`runner.measure`, grouped order) or
    taking turns with its group (`interleave.measure_steps`, interleaved: the default)."""
    real, real_steps = runner.measure, interleave.measure_steps

    def measure(loaded, scenario, **kw):
        before(scenario)
        return real(loaded, scenario, **kw)

    def measure_steps(loaded, scenario, *args):
        before(scenario)
        return (yield from real_steps(loaded, scenario, *args))

    monkeypatch.setattr(runner, "measure", measure)
    monkeypatch.setattr(interleave, "measure_steps", measure_steps)


@pytest.fixture
def counted(monkeypatch):
    """The scenarios measured, in the order they started."""
    calls = []
    patch_measuring(monkeypatch, lambda scenario: calls.append(scenario.id))
    return calls


def test_resume_measures_only_what_is_missing_after_a_kill(tiny_loaded, tmp_path, counted):
    run = tmp_path / "run"
    kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0)
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    (run / "records.jsonl").write_text("".join(lines[:2]) + lines[2][:30])  # killed while writing the third
    counted.clear()
    with pytest.warns(PartialLineWarning, match=r"records.jsonl:3: removed a half-written last line"):
        records = kvbench.run_sweep(tiny_loaded, None, run, repeats=1, warmup=0, resume=True)
    assert counted == [s.id for s in GRID[2:]]
    assert ids(run) == [s.id for s in GRID] == [r["scenario_id"] for r in records]
    info = json.loads((run / "run.json").read_text())
    assert len(info["invocations"]) == 2 and info["grid"] == [s.as_dict() for s in GRID]
    counted.clear()
    kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0, resume=True)  # nothing left: nothing runs
    assert counted == [] and ids(run) == [s.id for s in GRID]


def test_a_resumed_run_keeps_the_environment_of_every_invocation(tiny_loaded, tmp_path):
    """run.json lists each invocation that wrote to the run, with its own environment and what it measured; the
    first invocation's environment is not overwritten by the resumed one's (torch's thread count tells them apart)."""
    import torch

    run, threads = tmp_path / "run", torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0)
        lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
        (run / "records.jsonl").write_text("".join(lines[:1]))  # killed after the first scenario
        torch.set_num_threads(2)
        kvbench.run_sweep(tiny_loaded, None, run, repeats=1, warmup=0, resume=True)
    finally:
        torch.set_num_threads(threads)
    info = json.loads((run / "run.json").read_text())
    first, resumed = info["invocations"]
    assert [first["environment"]["env_torch_threads"], resumed["environment"]["env_torch_threads"]] == [1, 2]
    assert info["env_torch_threads"] == 1  # the top of run.json stays the first invocation's
    # the first group (P4 with and without the cache) was only partly recorded: measured again, whole
    assert first["measured"] == [s.id for s in GRID] and resumed["measured"] == [s.id for s in GRID]
    assert first["started_utc"] == info["started_utc"] <= resumed["started_utc"] <= resumed["finished_utc"]
    assert first["environment"]["env_torch"] == resumed["environment"]["env_torch"] == torch.__version__


@pytest.mark.parametrize("order", ["interleaved", "grouped"])
def test_resume_measures_error_records_again_and_keeps_one_record_each(tiny_loaded, tmp_path, monkeypatch, order):
    def broken(scenario):
        if scenario.prompt_len == 6:
            raise RuntimeError("device busy")

    patch_measuring(monkeypatch, broken)
    run = tmp_path / "run"
    first = kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0, order=order)
    assert [r["status"] for r in first] == ["ok", "ok", "error", "error"]
    assert first[2]["error"] == "RuntimeError: device busy"
    monkeypatch.undo()
    again = kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0, resume=True, order=order)
    assert [r["status"] for r in again] == ["ok"] * 4
    assert sorted(ids(run)) == sorted(s.id for s in GRID)  # the error records were replaced, not kept beside


def test_a_resumed_run_keeps_its_seed_and_measures_a_partly_recorded_group_whole(tiny_loaded, tmp_path, counted):
    run = tmp_path / "run"
    kvbench.run_sweep(tiny_loaded, GRID, run, repeats=2, warmup=0)  # interleaved, the seed drawn at random
    seed = json.loads((run / "run.json").read_text())["order_seed"]
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    (run / "records.jsonl").write_text("".join(lines[:1]))  # killed after one record of the first group
    counted.clear()
    records = kvbench.run_sweep(tiny_loaded, None, run, repeats=2, warmup=0, resume=True)
    assert counted == [s.id for s in GRID]  # P4 with the cache measured again beside its twin, then P6's pair
    assert sorted(ids(run)) == sorted(s.id for s in GRID)  # one record each: the partial group's was replaced
    assert json.loads((run / "run.json").read_text())["order_seed"] == seed
    assert [r["order_seed"] for r in records] == [seed] * 4 and {r["order"] for r in records} == {"interleaved"}
    assert records[0]["interleave_group"] == [GRID[0].id, GRID[1].id]


@pytest.mark.parametrize("change, message", [
    (dict(repeats=2), "repeats is 2 here but 1 in the run being resumed"),
    (dict(warmup=1), "warmup is 1 here but 0 in the run being resumed"),
    (dict(scenarios=GRID[:2]), "scenarios differ from the run being resumed (its run.json): left out: P6-N2-B1"),
    (dict(scenarios=kvbench.grid([4, 8], [2], [1])), "not in the run: P8-N2-B1-cache-dynamic-greedy"),
], ids=["repeats", "warmup", "fewer", "other"])
def test_resume_refuses_settings_that_differ_naming_the_field(tiny_loaded, tmp_path, change, message):
    run = tmp_path / "run"
    kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0)
    kwargs = dict(scenarios=GRID, repeats=1, warmup=0) | change
    with pytest.raises(UserError) as info:
        kvbench.run_sweep(tiny_loaded, kwargs.pop("scenarios"), run, resume=True, **kwargs)
    assert str(info.value).startswith(f"{run}: ") and message in str(info.value)


def test_a_second_sweep_into_a_run_folder_is_refused(tiny_loaded, tmp_path):
    run = tmp_path / "run"
    kvbench.run_sweep(tiny_loaded, GRID[:1], run, repeats=1, warmup=0)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(UserError, match="already holds a run; continue it with --resume"):
        kvbench.run_sweep(tiny_loaded, GRID[:1], run, repeats=1, warmup=0)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    with pytest.raises(UserError, match="no such run folder to resume"):
        kvbench.run_sweep(tiny_loaded, GRID, tmp_path / "nope", resume=True)


def test_a_folder_locked_by_another_process_is_refused(tiny_loaded, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # another process holding the run's lock (plain Python: fcntl.flock, as kvbench)
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); f.write('4242'); f.flush(); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", str(run / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UserError, match=r"another kvbench process \(pid 4242\) is writing this run folder"):
            kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0)
    finally:
        holder.communicate("")
    assert not (run / "records.jsonl").exists()
    kvbench.run_sweep(tiny_loaded, GRID[:1], run, repeats=1, warmup=0)  # its exit released the lock


def cli_run(config, out, *extra):
    return main(["run", "--model", str(config), "--prompt-len", "4,6", "--new-tokens", "2", "--batch-size", "1",
                 "--repeats", "1", "--warmup", "0", "--device", "cpu", "--out", str(out), *extra])


def test_cli_resume_takes_the_run_settings_and_refuses_other_ones(tiny_config_file, tmp_path, capsys, counted):
    run = tmp_path / "run"
    assert cli_run(tiny_config_file, run) == 0
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    (run / "records.jsonl").write_text("".join(lines[:2]))  # the first group (P4, with and without the cache)
    capsys.readouterr()
    assert cli_run(tiny_config_file, run) == 2  # not without --resume
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    counted.clear()
    assert main(["run", "--resume", str(run)]) == 0  # the grid, model and repeats come from run.json
    assert counted == [s.id for s in GRID[2:]] and sorted(ids(run)) == sorted(s.id for s in GRID)
    assert "2 scenarios (of 4; the others are recorded)" in " ".join(capsys.readouterr().out.split())
    for args, message in [
        (["--repeats", "2"], "--repeats 2: the run in {run} was started with --repeats 1"),
        (["--prompt-len", "4,8"], "--prompt-len 4,8: the run in {run} was started with --prompt-len 4,6"),
        (["--model", "tiny"], "--model tiny: the run in {run} was started with --model"),
        (["--out", str(tmp_path / "other")], "--out {tmp}/other and --resume {run} name different run folders"),
    ]:
        assert main(["run", "--resume", str(run), *args]) == 2
        err = capsys.readouterr().err
        assert message.format(run=run, tmp=tmp_path) in err and err.count("\n") == 1, err
    assert main(["run", "--resume", str(run), "--repeats", "1", "--device", "cpu", "--prompt-len", "4, 6"]) == 0
    assert main(["run", "--resume", str(tmp_path / "nope")]) == 2
    assert "no run.json, so no run to resume here" in capsys.readouterr().err


def interrupting(monkeypatch, times, at=2):
    """Send this process `times` SIGINTs as the `at`-th scenario starts to be measured."""
    seen = []

    def before(scenario):
        seen.append(scenario.id)
        if len(seen) == at:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)

    patch_measuring(monkeypatch, before)


@pytest.mark.parametrize("order, recorded", [("grouped", 1), ("interleaved", 2)])
def test_ctrl_c_stops_after_the_scenario_in_flight(tiny_loaded, tmp_path, monkeypatch, capsys, order, recorded):
    """Grouped, the scenario in flight is one scenario; interleaved, it is its group (P4 with and without the cache),
    whose records are written together when the group ends."""
    interrupting(monkeypatch, 1, at=1)
    with pytest.raises(SweepInterrupted) as info:
        kvbench.run_sweep(tiny_loaded, GRID, tmp_path / "run", repeats=1, warmup=0, order=order)
    assert (info.value.done, info.value.total) == (recorded, 4) and ids(tmp_path / "run") == [s.id for s in
                                                                                              GRID[:recorded]]
    assert "stopping after the scenario in flight" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


@pytest.mark.parametrize("order", ["grouped", "interleaved"])
def test_a_second_ctrl_c_stops_at_once_and_keeps_what_finished(tiny_loaded, tmp_path, monkeypatch, order):
    interrupting(monkeypatch, 2, at=3)  # as P6 with the cache starts: the P4 pair is finished and written
    with pytest.raises(KeyboardInterrupt) as info:
        kvbench.run_sweep(tiny_loaded, GRID, tmp_path / "run", repeats=1, warmup=0, order=order)
    assert not isinstance(info.value, SweepInterrupted) and ids(tmp_path / "run") == [s.id for s in GRID[:2]]


@pytest.mark.parametrize("times, recorded", [(1, 2), (2, 0)])
def test_cli_ctrl_c_prints_what_finished_and_how_to_resume(tiny_config_file, tmp_path, monkeypatch, capsys, times,
                                                           recorded):
    """Interleaved (the default): Ctrl-C as the first pair's second scenario starts; once, the pair is finished and
    recorded; twice, the pair in flight is lost (nothing was finished) and resume measures it."""
    interrupting(monkeypatch, times)
    run = tmp_path / "my run"
    assert cli_run(tiny_config_file, run) == 130
    out, err = capsys.readouterr()
    out = " ".join(out.split())  # rich wraps long lines
    assert f"interrupted: {recorded} of 4 scenarios recorded in {run / 'records.jsonl'}" in out
    assert f"resume with: kvbench run --resume '{run}'" in out and "Traceback" not in out + err
    monkeypatch.undo()
    assert main(["run", "--resume", str(run)]) == 0 and sorted(ids(run)) == sorted(s.id for s in GRID)
