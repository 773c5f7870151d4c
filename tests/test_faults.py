"""Fault injection on a real sweep: `python -m kvbench run` in a subprocess, killed with SIGKILL at random moments
(fixed seed) and resumed each time, ends with exactly the grid on disk -- no record lost, none twice -- and
`kvbench report` reads it. Ctrl-C (SIGINT), once among the kills, stops between scenarios with exit 130.

What it costs is the start of each process (importing torch and transformers): a tiny config.json model and a
grid of 6 small scenarios keep the rest short; the kills at the start are the cheap ones, so most kills are those.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvbench import grid
from kvbench.cli.app import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
# 10 scenarios: five prompts, with and without the cache; five interleave groups (a group's records are written as it
# finishes), so the Ctrl-C, sent after a group is recorded, comes before the last group
GRID = grid([4, 8, 12, 16, 20], [2], [1])
RUN_ARGS = ["--prompt-len", "4,8,12,16,20", "--new-tokens", "2", "--batch-size", "1", "--repeats", "1",
            "--warmup", "0", "--device", "cpu"]


def start(config, run: Path) -> subprocess.Popen:
    """The sweep, new or (once its run.json exists) resumed."""
    args = ["--resume", str(run)] if (run / "run.json").exists() else ["--model", str(config), "--out", str(run),
                                                                        *RUN_ARGS]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kvbench", "run", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines(run: Path) -> int:
    try:
        return (run / "records.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_growth(proc, run: Path, before: int, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s
    while lines(run) <= before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_sigkill_at_random_moments_then_resume_loses_and_duplicates_nothing(tiny_config_file, tmp_path):
    rng = random.Random(12)
    run = tmp_path / "run"
    kills, history = 0, []
    # SIGKILL at a random moment of the start (importing, loading the model, the first scenario), or as soon as a
    # record has been written (often in the middle of the next scenario, sometimes of its line); once, Ctrl-C
    for moment in ["start", "record", "start", "ctrl-c", "start", "start"]:
        before, began = lines(run), time.monotonic()
        proc = start(tiny_config_file, run)
        if moment == "start":
            time.sleep(rng.uniform(0.1, 1.5))
        else:
            wait_for_growth(proc, run, before)
            time.sleep(rng.uniform(0, 0.01))
        assert proc.poll() is None, (history, proc.communicate())  # the moment came before the sweep was over
        proc.send_signal(signal.SIGINT if moment == "ctrl-c" else signal.SIGKILL)
        kills += moment != "ctrl-c"
        out, err = proc.communicate(timeout=120)
        history.append((moment, before, lines(run), proc.returncode, round(time.monotonic() - began, 1)))
        assert "Traceback" not in out + err, err
        if moment == "ctrl-c":  # stops after the scenario in flight, says what finished and how to resume
            out = " ".join(out.split())
            assert proc.returncode == 130 and "stopping after the scenario in flight" in err, (out, err)
            assert f"interrupted: {lines(run)} of {len(GRID)} scenarios recorded in {run / 'records.jsonl'}" in out
            assert f"resume with: kvbench run --resume {run}" in out
            assert (run / "records.jsonl").read_bytes().endswith(b"\n")  # the scenario in flight finished whole
    assert kills == 5 and lines(run) < len(GRID), history
    proc = start(tiny_config_file, run)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert sorted(r["scenario_id"] for r in records) == sorted(s.id for s in GRID), history
    assert {r["status"] for r in records} == {"ok"}
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").is_file()
