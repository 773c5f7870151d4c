"""tools/gpu_acceptance.py, the driver of tools/gpu_acceptance.sh: its commands against kvbench's own command line,
the time boxes of both executors (a process per step on a GPU, this process for the quick dry run), the summary
lines, and (with KVBENCH_DRY_RUN=1, one to two minutes) the whole dry run the GPU's way, one process per step,
without git on PATH, and every file it writes. .ci/run runs that one on the GPU machine's versions."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_acceptance", ROOT / "tools" / "gpu_acceptance.py")
acceptance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(acceptance)
spec = importlib.util.spec_from_file_location("gpu_selfcheck", ROOT / "tools" / "gpu_selfcheck.py")
selfcheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(selfcheck)
STEPS = ["versions", "env", "selfcheck", "study", "compile", "sweep", "frontier", "energy", "records"]


def parse(args: list[str]):
    """kvbench's own command line parses `args` (click, under typer) without running anything."""
    import typer

    from kvbench.cli.app import app

    command = typer.main.get_command(app).commands[args[0]]
    with command.make_context(args[0], list(args[1:])) as ctx:
        return ctx.params


@pytest.mark.parametrize("grid", ["gpu", "cpu"])
def test_every_step_is_a_command_its_program_accepts(grid, tmp_path):
    """A typo in a flag would cost a step on the GPU machine: each kvbench step parses, and each self-check
    step's options are the self-check's."""
    for step in acceptance.steps(acceptance.GRIDS[grid], tmp_path):
        if step.get("unless"):  # not run on this checkout (the energy step before the meter lands)
            continue
        if step["kind"] == "kvbench":
            assert parse(step["args"])["model"] == acceptance.GRIDS[grid]["model"], step["name"]
        else:
            selfcheck.build_parser().parse_args(step["args"])  # exits (2) on an option it does not have


def test_the_dry_run_skips_only_the_frontier_it_cannot_run(tmp_path):
    steps = {s["name"]: s for s in acceptance.steps(acceptance.GRIDS["cpu"], tmp_path)}
    assert list(steps) == STEPS
    skip = steps["frontier"]["skip"]
    assert skip(2, "kvbench: error: ... on a CUDA GPU, and torch sees none").startswith("needs CUDA")
    assert skip(1, "on a CUDA GPU") == "" and skip(2, "some other refusal") == ""


def test_the_gpu_run_fits_its_window(tmp_path):
    """The issue's limits: at most 6 minutes of work, each step a process with its own limit, the limits adding up
    to no more than the budget (no step starves a later one), the decisive steps first, at most 8 files."""
    grid = acceptance.GRIDS["gpu"]
    steps = acceptance.steps(grid, tmp_path)
    assert grid["budget_s"] <= 360 and sum(s["limit"] for s in steps) <= grid["budget_s"]
    assert all(s["limit"] <= 600 for s in steps)
    assert [s["name"] for s in steps][:3] == ["versions", "env", "selfcheck"]
    assert len(acceptance.FILES) <= 8 and {f"{a}.tar.gz" for a in acceptance.ARCHIVES} <= set(acceptance.FILES)
    assert {s["stdout"] for s in steps if "stdout" in s} <= set(acceptance.FILES)
    assert all(s.get("skip", lambda rc, tail: "")(2, "a CUDA GPU") == "" for s in steps)  # nothing skips on a GPU
    compiled = next(s for s in steps if s["name"] == "compile")
    assert "TORCH_LOGS" in compiled["env"] and compiled["keep_output"].is_relative_to(tmp_path / "compile")
    params = parse(compiled["args"])
    assert params["compile"] == "off,auto" and params["cache_implementation"] == "static"


def test_the_energy_step_runs_cached_and_uncached_and_its_records_are_read(tmp_path):
    steps = {s["name"]: s for s in acceptance.steps(acceptance.GRIDS["gpu"], tmp_path, flags="")}
    assert not steps["energy"]["unless"] and parse(steps["energy"]["args"])["use_cache"] == "both"
    assert str(tmp_path / "sweep" / "energy") in steps["records"]["args"]


def test_a_rerun_of_a_few_steps(tmp_path):
    all_steps = acceptance.steps(acceptance.GRIDS["gpu"], tmp_path, flags="")
    assert acceptance.select(all_steps, None, tmp_path) == all_steps
    chosen = acceptance.select(all_steps, ["records", "compile"], tmp_path)
    assert [s["name"] for s in chosen] == ["compile", "records"]  # in the run's order
    records = chosen[1]["args"]
    assert str(tmp_path / "compile" / "run") in records and str(tmp_path / "study") not in records
    selfcheck.build_parser().parse_args(records)
    stretched = {s["name"]: s["limit"] for s in acceptance.select(all_steps, ["compile", "records"], tmp_path, 360)}
    assert stretched["compile"] > 2 * {s["name"]: s["limit"] for s in all_steps}["compile"]  # room for a rerun
    assert sum(stretched.values()) <= 360 and max(stretched.values()) <= 570
    with pytest.raises(SystemExit, match="no step bench"):
        acceptance.select(all_steps, ["bench"], tmp_path)


def test_the_commit_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "git")

    monkeypatch.setattr(acceptance.subprocess, "run", no_git)
    assert acceptance.commit() == "unknown (no git on this machine)"


def test_a_step_in_this_process_writes_where_a_process_would_and_is_time_boxed(tmp_path, monkeypatch):
    def fake_main(argv):
        print("to stdout", argv, flush=True)
        os.write(2, b"to fd 2\n")  # C-level output too
        if argv == ["sleep"]:
            time.sleep(10)
        return 3

    monkeypatch.setattr(acceptance, "in_process_main", lambda kind: fake_main)
    with open(tmp_path / "out", "a") as out, open(tmp_path / "err", "a") as err:
        assert acceptance.run_in_process("kvbench", ["x"], 10, out, err) == 3
    assert (tmp_path / "out").read_text() == "to stdout ['x']\n" and (tmp_path / "err").read_text() == "to fd 2\n"
    t0 = time.monotonic()
    with open(tmp_path / "both", "a") as both:
        assert acceptance.run_in_process("kvbench", ["sleep"], 1, both, both) == 124
    assert time.monotonic() - t0 < 5
    assert "StepTimeout: time limit of 1s" in (tmp_path / "both").read_text()

    def broken(argv):
        raise ValueError("a bug")

    monkeypatch.setattr(acceptance, "in_process_main", lambda kind: broken)
    with open(tmp_path / "bug", "a") as bug:
        assert acceptance.run_in_process("kvbench", [], 10, bug, bug) == 1
    assert "ValueError: a bug" in (tmp_path / "bug").read_text()
    print("fd 1 is back")  # pytest's capture again, not the files above
    assert "fd 1 is back" not in (tmp_path / "bug").read_text()


def test_a_step_in_its_own_process_is_time_boxed(tmp_path, monkeypatch):
    monkeypatch.setattr(acceptance, "command_line", lambda kind, args: ["sleep", "10"])
    t0 = time.monotonic()
    with open(tmp_path / "log", "a") as log:
        assert acceptance.run_separately("kvbench", [], 1, log, log) == 124
    assert time.monotonic() - t0 < 5


def test_summary_lines_and_the_budget(tmp_path):
    run = acceptance.Acceptance(tmp_path, acceptance.GRIDS["cpu"], budget_s=100, separate=False)
    run.verdict("env", 0, 8)
    run.verdict("frontier", 2, 0, "needs CUDA (see log.txt)")
    run.verdict("sweep", 124, 94)
    run.start -= 92.5  # 7 s of the budget left: the next step does not start
    assert run.run_step(dict(name="bench", limit=180, kind="pytest", args=[]), tmp_path) == (-1, 0, "")
    run.verdict("bench", -1, 0)
    run.verdict("energy", None, 0, "not landed")
    run.log.close()
    assert (tmp_path / "summary.txt").read_text().splitlines() == [
        "env       PASS        8s  exit 0    ",
        "frontier  SKIP        0s  exit 2    needs CUDA (see log.txt)",
        "sweep     TIMEOUT    94s  exit 124  ",
        "bench     FAIL        0s  exit -1   not run: the 100s budget was spent",
        "energy    SKIP        0s  exit -    not landed",
    ]
    assert run.failed
    assert "=== bench: not run, 7s left of the 100s budget" in (tmp_path / "log.txt").read_text()


def test_summary_skip_is_no_failure(tmp_path):
    run = acceptance.Acceptance(tmp_path, acceptance.GRIDS["cpu"], budget_s=100, separate=False)
    run.verdict("env", 0, 1)
    run.verdict("frontier", 2, 0, "needs CUDA")
    run.log.close()
    assert not run.failed


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH of links to every program of this PATH but `missing` (git, say), first found first."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = folder / entry.name
            if entry.name not in missing and not os.path.lexists(link) and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(folder)


@pytest.mark.skipif(not os.environ.get("KVBENCH_DRY_RUN"), reason="the whole dry run, one process per step (one to "
                    "two minutes): KVBENCH_DRY_RUN=1 runs it (.ci/run does, on the GPU machine's versions)")
def test_the_dry_run_one_process_per_step_without_git(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PATH": path_without(tmp_path, "git")}
    assert subprocess.run(["which", "git"], env=env, capture_output=True).returncode != 0
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_acceptance.sh"), "--cpu", "--separate"],
                          capture_output=True, text=True, env=env, timeout=700)
    seconds = time.monotonic() - t0
    print(f"dry run, one process per step: {seconds:.0f} s (load average {os.getloadavg()[0]:.1f})")
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(acceptance.FILES) and len(files) <= 8 and all((out / f).is_file() for f in files)
    summary = (out / "summary.txt").read_text()
    assert "commit unknown (no git on this machine)" in summary and "one process per step" in summary
    verdicts = {line.split()[0]: line.split()[1] for line in summary.splitlines()
                if line.split()[:1] and line.split()[0] in STEPS}
    assert verdicts == {**dict.fromkeys(STEPS, "PASS"), "frontier": "SKIP"}, summary
    checks = [line.split(":")[0] for line in (out / "selfcheck.txt").read_text().splitlines()
              if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert checks == ["PASS device-time", "PASS kv-bytes-live", "PASS peak-vs-estimate", "PASS step-busy-live",
                      "SKIP oom-recovered", "PASS kv-bytes", "PASS compile-recorded", "PASS step-busy"]
    assert summary.endswith((out / "selfcheck.txt").read_text())
    env_txt = (out / "env.txt").read_text()
    assert "which git: not found" in env_txt and "nvidia-smi: not on this machine" in env_txt
    assert '"copy_bandwidth_gbps"' in env_txt and f"python {sys.version.split()[0]}" in env_txt
    members = {}
    for part in acceptance.ARCHIVES:
        with tarfile.open(out / f"{part}.tar.gz") as tar:
            members[part] = set(tar.getnames())
            assert all(name.count("/") <= 3 for name in members[part])
    assert {"study/records.jsonl", "study/run.json"} <= members["study"]
    assert {"compile/run/records.jsonl", "compile/compile.log"} <= members["compile"]
    assert "sweep/dynamic/records.jsonl" in members["sweep"]
    assert members["frontier"] == {"frontier", "frontier/NOTHING-WRITTEN.txt"}
    with tarfile.open(out / "compile.tar.gz") as tar:
        log = tar.extractfile("compile/compile.log").read().decode()
        records = [json.loads(line) for line in tar.extractfile("compile/run/records.jsonl").read().splitlines()]
    assert log.startswith("# TORCH_LOGS=") and "(step compile, exit 0)" in log
    rows = {(r["cache_implementation"], r["compile"]) for r in records}
    # the static cache with each compile setting (on a GPU, of phi-3: a sliding-window model)
    assert rows == {("static", "off"), ("static", "auto")}
    log = (out / "log.txt").read_text()
    starts = [line.split()[1] for line in log.splitlines() if line.startswith("=== ") and "(limit " in line]
    assert starts == list(STEPS)
    assert seconds < 150 or os.getloadavg()[0] > 3, f"{seconds:.0f} s on an idle machine"
