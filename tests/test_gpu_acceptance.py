"""tools/gpu_acceptance.py, the driver of tools/gpu_acceptance.sh: the GPU run's commands, the time boxes of both
executors (a process per step on a GPU, this process for the CPU dry run), the summary lines, and (with
KVBENCH_DRY_RUN=1, about a minute) the whole `--cpu` dry run and every file it writes."""

import importlib.util
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


def test_the_gpu_run_keeps_its_commands(tmp_path):
    """The GPU steps: the commands and grids of issue 9, one process each."""
    w = str(tmp_path)
    kv = "--model phi-3-mini-4k --device cuda --dtype float16"
    sweep = f"run {kv} --prompt-len 128,1024,3500 --new-tokens 16 --batch-size 1,16 --repeats 2 --warmup 1 --use-cache on"
    expected = {
        "env": (90, "env", "--env --device cuda"),
        "study": (150, "kvbench", f"run {kv} --prompt-len 55 --new-tokens 100 --batch-size 1 --repeats 5 --warmup 1 "
                                  f"--use-cache both --out {w}/study"),
        "sweep": (240, "kvbench", f"{sweep} --cache-implementation dynamic,static --compile auto --profile-steps "
                                  f"--out {w}/sweep/auto"),
        "sweep-off": (100, "kvbench", f"{sweep} --cache-implementation static --compile off --profile-steps "
                                      f"--out {w}/sweep/static-off"),
        "frontier": (120, "kvbench", f"frontier --model phi-3-mini-4k --dtype float16 --memory-cap 14.75GiB "
                                     f"--out {w}/frontier"),
        "selfcheck": (120, "selfcheck", f"--records {w}/study {w}/sweep/auto {w}/sweep/static-off {w}/frontier --live "
                                        f"{kv} --prompt-len 128 --new-tokens 32"),
        "bench": (180, "pytest", f"bench --benchmark-only -q -p no:cacheprovider --kv-device cuda --kv-model "
                                 f"phi-3-mini-4k --kv-dtype float16 --kv-prompt-len 64 --kv-rounds 3 --kv-warmup-rounds 1 "
                                 f"--benchmark-json {w}/bench/bench.json"),
    }
    steps = acceptance.steps(acceptance.GRIDS["gpu"], tmp_path)
    assert {s["name"]: (s["limit"], s["kind"], " ".join(s["args"])) for s in steps} == expected
    assert [s["name"] for s in steps] == list(expected)  # in this order
    assert acceptance.GRIDS["gpu"]["budget_s"] == 510
    assert all(s.get("skip", lambda rc, tail: "")(2, "a CUDA GPU") == "" for s in steps)  # nothing skips on a GPU
    assert acceptance.command_line("kvbench", ["run"])[1:] == ["-m", "kvbench", "run"]
    assert acceptance.command_line("env", ["--env"])[1:] == ["tools/gpu_selfcheck.py", "--env"]


def test_the_dry_run_skips_only_the_frontier_it_cannot_run(tmp_path):
    steps = {s["name"]: s for s in acceptance.steps(acceptance.GRIDS["cpu"], tmp_path)}
    assert list(steps) == ["env", "study", "sweep", "sweep-off", "frontier", "selfcheck", "bench"]
    skip = steps["frontier"]["skip"]
    assert skip(2, "kvbench: error: ... on a CUDA GPU, and torch sees none").startswith("needs CUDA")
    assert skip(1, "on a CUDA GPU") == "" and skip(2, "some other refusal") == ""
    assert str(tmp_path / "frontier") not in steps["selfcheck"]["args"]  # its records exist only on a GPU


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
    run.start -= 89.5  # 10 s of the budget left: the next step does not start
    assert run.run_step(dict(name="bench", limit=180, kind="pytest", args=[]), tmp_path) == (-1, 0, "")
    run.verdict("bench", -1, 0)
    run.log.close()
    assert (tmp_path / "summary.txt").read_text().splitlines() == [
        "env       PASS        8s  exit 0    ",
        "frontier  SKIP        0s  exit 2    needs CUDA (see log.txt)",
        "sweep     TIMEOUT    94s  exit 124  ",
        "bench     FAIL        0s  exit -1   not run: the 100s budget was spent",
    ]
    assert run.failed
    assert "=== bench: not run, 10s left of the 100s budget" in (tmp_path / "log.txt").read_text()


def test_summary_skip_is_no_failure(tmp_path):
    run = acceptance.Acceptance(tmp_path, acceptance.GRIDS["cpu"], budget_s=100, separate=False)
    run.verdict("env", 0, 1)
    run.verdict("frontier", 2, 0, "needs CUDA")
    run.log.close()
    assert not run.failed


@pytest.mark.skipif(not os.environ.get("KVBENCH_DRY_RUN"), reason="the whole --cpu dry run (about a minute): "
                    "KVBENCH_DRY_RUN=1 runs it")
def test_the_cpu_dry_run_writes_every_output(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_acceptance.sh"), "--cpu"], capture_output=True, text=True,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(acceptance.FILES)
    summary = (out / "summary.txt").read_text()
    verdicts = {line.split()[0]: line.split()[1] for line in summary.splitlines()
                if line.split()[:1] and line.split()[0] in
                ("env", "study", "sweep", "sweep-off", "frontier", "selfcheck", "bench")}
    assert verdicts == {"env": "PASS", "study": "PASS", "sweep": "PASS", "sweep-off": "PASS", "frontier": "SKIP",
                        "selfcheck": "PASS", "bench": "PASS"}, summary
    checks = [line.split(":")[0] for line in (out / "selfcheck.txt").read_text().splitlines()
              if not line.startswith("INFO")]
    assert checks == ["PASS kv-bytes", "PASS compile-recorded", "PASS events-vs-wall", "SKIP oom-recovered"]
    assert summary.endswith((out / "selfcheck.txt").read_text())
    env = (out / "env.txt").read_text()
    assert "nvidia-smi: not on this machine" in env and '"copy_bandwidth_gbps"' in env
    members = {}
    for part in acceptance.ARCHIVES:
        with tarfile.open(out / f"{part}.tar.gz") as tar:
            members[part] = set(tar.getnames())
    assert {"study/records.jsonl", "study/run.json"} <= members["study"]
    assert {"sweep/auto/records.jsonl", "sweep/static-off/records.jsonl"} <= members["sweep"]
    assert members["frontier"] == {"frontier", "frontier/NOTHING-WRITTEN.txt"}
    assert "bench/bench.json" in members["bench"]
    log = (out / "log.txt").read_text()
    names = ("env", "study", "sweep", "sweep-off", "frontier", "selfcheck", "bench")
    starts = [line.split()[1] for line in log.splitlines() if line.startswith("=== ") and "(limit " in line]
    ends = [line.split()[1] for line in log.splitlines() if line.startswith("=== ") and ": exit " in line]
    assert starts == list(names) and ends == [f"{name}:" for name in names]
    assert "every step in this process, OMP_NUM_THREADS=" in log


def test_the_eight_files_are_the_ones_the_script_names():
    header = (ROOT / "tools" / "gpu_acceptance.sh").read_text()
    assert len(set(acceptance.FILES)) == 8 and all(name in header for name in acceptance.FILES)
    assert {f"{part}.tar.gz" for part in acceptance.ARCHIVES} <= set(acceptance.FILES)
