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
from kvbench.measuring.harness import runner
from kvbench.measuring.harness.resume import SweepInterrupted
from kvbench.results.store import PartialLineWarning

GRID = kvbench.grid([4, 6], [2], [1])  # four scenarios: two prompts, with and without the cache


def ids(run_dir):
    return [json.loads(line)["scenario_id"] for line in (run_dir / "records.jsonl").read_text().splitlines()]


@pytest.fixture
def counted(monkeypatch):
    """The scenarios `measure` is called for, in order."""
    calls = []
    real = runner.measure

    def measure(loaded, scenario, **kw):
        calls.append(scenario.id)
        return real(loaded, scenario, **kw)

    monkeypatch.setattr(runner, "measure", measure)
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
    assert first["measured"] == [s.id for s in GRID] and resumed["measured"] == [s.id for s in GRID[1:]]
    assert first["started_utc"] == info["started_utc"] <= resumed["started_utc"] <= resumed["finished_utc"]
    assert first["environment"]["env_torch"] == resumed["environment"]["env_torch"] == torch.__version__


def test_resume_measures_error_records_again_and_keeps_one_record_each(tiny_loaded, tmp_path, monkeypatch):
    real = runner.measure

    def broken(loaded, scenario, **kw):
        if scenario.prompt_len == 6:
            raise RuntimeError("device busy")
        return real(loaded, scenario, **kw)

    monkeypatch.setattr(runner, "measure", broken)
    run = tmp_path / "run"
    first = kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0)
    assert [r["status"] for r in first] == ["ok", "ok", "error", "error"]
    monkeypatch.setattr(runner, "measure", real)
    again = kvbench.run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0, resume=True)
    assert [r["status"] for r in again] == ["ok"] * 4
    assert sorted(ids(run)) == sorted(s.id for s in GRID)  # the error records were replaced, not kept beside


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
    (run / "records.jsonl").write_text(lines[0])
    capsys.readouterr()
    assert cli_run(tiny_config_file, run) == 2  # not without --resume
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    counted.clear()
    assert main(["run", "--resume", str(run)]) == 0  # the grid, model and repeats come from run.json
    assert counted == [s.id for s in GRID[1:]] and sorted(ids(run)) == sorted(s.id for s in GRID)
    assert "3 scenarios (of 4; the others are recorded)" in " ".join(capsys.readouterr().out.split())
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


def interrupting(monkeypatch, times):
    """`measure` that sends this process `times` SIGINTs while it measures the second scenario."""
    real = runner.measure
    seen = []

    def measure(loaded, scenario, **kw):
        seen.append(scenario.id)
        if len(seen) == 2:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return real(loaded, scenario, **kw)

    monkeypatch.setattr(runner, "measure", measure)


def test_ctrl_c_stops_after_the_scenario_in_flight(tiny_loaded, tmp_path, monkeypatch, capsys):
    interrupting(monkeypatch, 1)
    with pytest.raises(SweepInterrupted) as info:
        kvbench.run_sweep(tiny_loaded, GRID, tmp_path / "run", repeats=1, warmup=0)
    assert (info.value.done, info.value.total) == (2, 4) and len(ids(tmp_path / "run")) == 2
    assert "stopping after the scenario in flight" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_second_ctrl_c_stops_at_once(tiny_loaded, tmp_path, monkeypatch):
    interrupting(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt) as info:
        kvbench.run_sweep(tiny_loaded, GRID, tmp_path / "run", repeats=1, warmup=0)
    assert not isinstance(info.value, SweepInterrupted) and len(ids(tmp_path / "run")) == 1


@pytest.mark.parametrize("times", [1, 2])
def test_cli_ctrl_c_prints_what_finished_and_how_to_resume(tiny_config_file, tmp_path, monkeypatch, capsys, times):
    interrupting(monkeypatch, times)
    run = tmp_path / "my run"
    assert cli_run(tiny_config_file, run) == 130
    out, err = capsys.readouterr()
    out = " ".join(out.split())  # rich wraps long lines
    assert f"interrupted: {3 - times} of 4 scenarios recorded in {run / 'records.jsonl'}" in out
    assert f"resume with: kvbench run --resume '{run}'" in out and "Traceback" not in out + err
    monkeypatch.undo()
    assert main(["run", "--resume", str(run)]) == 0 and sorted(ids(run)) == sorted(s.id for s in GRID)
