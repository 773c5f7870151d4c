"""kvbench's GPU acceptance run: the steps, their time boxes, the summary and the archives (see gpu_acceptance.sh).

    OUT=/some/folder tools/gpu_acceptance.sh           # one CUDA GPU: each step in a process of its own
    OUT=/tmp/accept-out tools/gpu_acceptance.sh --cpu  # the dry run: tiny preset, CPU, small sizes, one process

The steps and their commands are defined once, here. On a GPU each step runs as its own process under
`timeout --kill-after=15 LIMIT` (a crash or a hung CUDA call ends one step, never the run; every step starts with a
fresh CUDA context and compile cache). With --cpu the same commands run in this one process, one after the other
(kvbench's CLI, the self-check's main and pytest.main called in turn), time-boxed by SIGALRM: torch and
transformers are imported once instead of seven times, and torch uses one thread (OMP_NUM_THREADS=1 unless set), which
on a small shared CPU is several times faster than two threads competing with other work. --separate runs the dry
run the GPU's way, one process per step.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["env.txt", "study.tar.gz", "sweep.tar.gz", "frontier.tar.gz", "bench.tar.gz", "selfcheck.txt", "log.txt",
         "summary.txt"]
ARCHIVES = ["study", "sweep", "frontier", "bench"]

GRIDS = {
    "gpu": dict(
        model="phi-3-mini-4k", device="cuda", dtype="float16", budget_s=510,
        study="--prompt-len 55 --new-tokens 100 --batch-size 1 --repeats 5 --warmup 1",
        sweep="--prompt-len 128,1024,3500 --new-tokens 16 --batch-size 1,16 --repeats 2 --warmup 1",
        bench="--kv-prompt-len 64 --kv-rounds 3 --kv-warmup-rounds 1",
        live="--prompt-len 128 --new-tokens 32"),
    "cpu": dict(
        model="tiny", device="cpu", dtype="float32", budget_s=120,
        study="--prompt-len 55 --new-tokens 8 --batch-size 1 --repeats 2 --warmup 1",
        sweep="--prompt-len 16,64 --new-tokens 4 --batch-size 1,2 --repeats 1 --warmup 1",
        bench="--kv-prompt-len 16 --kv-new-tokens 8 --kv-batch-size 1 --kv-rounds 1 --kv-warmup-rounds 0",
        live="--prompt-len 32 --new-tokens 8"),
}


def steps(grid: dict, work: Path) -> list[dict]:
    """Every step: name, time limit, what runs (kvbench / selfcheck / pytest and its arguments, or the env step)."""
    kv = ["--model", grid["model"], "--device", grid["device"], "--dtype", grid["dtype"]]
    study, sweep, bench, live = (grid[k].split() for k in ("study", "sweep", "bench", "live"))
    cpu = grid["device"] == "cpu"
    # the frontier's records only where it can run: on the CPU it refuses by design, reported as SKIP
    records = [str(work / "study"), str(work / "sweep/auto"), str(work / "sweep/static-off")] + (
        [] if cpu else [str(work / "frontier")])
    return [
        # (a) environment facts
        dict(name="env", limit=90, kind="env", args=["--env", "--device", grid["device"]]),
        # (b) the original study's scenario, cache on and off
        dict(name="study", limit=150, kind="kvbench",
             args=["run", *kv, *study, "--use-cache", "both", "--out", str(work / "study")]),
        # (c) the sweep: dynamic and static with transformers' own compile choice, and static eager beside it
        dict(name="sweep", limit=240, kind="kvbench",
             args=["run", *kv, *sweep, "--use-cache", "on", "--cache-implementation", "dynamic,static",
                   "--compile", "auto", "--profile-steps", "--out", str(work / "sweep/auto")]),
        dict(name="sweep-off", limit=100, kind="kvbench",
             args=["run", *kv, *sweep, "--use-cache", "on", "--cache-implementation", "static",
                   "--compile", "off", "--profile-steps", "--out", str(work / "sweep/static-off")]),
        # (d) the out-of-memory frontier under a T4-sized cap (CUDA only: on the CPU the command refuses, and says why)
        dict(name="frontier", limit=120, kind="kvbench",
             args=["frontier", "--model", grid["model"], "--dtype", grid["dtype"], "--memory-cap", "14.75GiB",
                   "--out", str(work / "frontier")],
             skip=(lambda rc, tail: "needs CUDA (kvbench frontier refuses on the CPU: see log.txt)"
                   if cpu and rc == 2 and "CUDA GPU" in tail else "")),
        # (f) the self-check over the records so far, and its live checks on the device
        dict(name="selfcheck", limit=120, kind="selfcheck", args=["--records", *records, "--live", *kv, *live],
             stdout="selfcheck.txt"),
        # (e) the benchmark suites on the device
        dict(name="bench", limit=180, kind="pytest",
             args=["bench", "--benchmark-only", "-q", "-p", "no:cacheprovider", "--kv-device", grid["device"],
                   "--kv-model", grid["model"], "--kv-dtype", grid["dtype"], *bench,
                   "--benchmark-json", str(work / "bench/bench.json")]),
    ]


COMMANDS = {"kvbench": ["-m", "kvbench"], "selfcheck": ["tools/gpu_selfcheck.py"], "pytest": ["-m", "pytest"]}


def command_line(kind: str, args: list[str]) -> list[str]:
    return [sys.executable, *COMMANDS["selfcheck" if kind == "env" else kind], *args]


class StepTimeout(KeyboardInterrupt):
    """Raised by SIGALRM in an in-process step: kvbench run and pytest stop as on a Ctrl-C, keeping what finished."""


def run_separately(kind: str, args: list[str], limit: int, stdout, stderr) -> int:
    """One process under `timeout` (124: timed out; 137: killed 15 s later)."""
    return subprocess.run(["timeout", "--kill-after=15", str(limit), *command_line(kind, args)], cwd=ROOT,
                          stdout=stdout, stderr=stderr).returncode


def in_process_main(kind: str):
    if kind == "kvbench":
        from kvbench.cli.app import main
        return main
    if kind in ("selfcheck", "env"):
        spec = importlib.util.spec_from_file_location("gpu_selfcheck", ROOT / "tools" / "gpu_selfcheck.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main
    import pytest
    return lambda argv: int(pytest.main(argv))


def run_in_process(kind: str, args: list[str], limit: int, stdout, stderr) -> int:
    """The command's main called here, its file descriptors 1 and 2 sent where a process's would go; SIGALRM after
    `limit` seconds stops it (124, as `timeout` says)."""
    timed_out = []

    def on_alarm(signum, frame):
        timed_out.append(True)
        raise StepTimeout(f"time limit of {limit}s")

    sys.stdout.flush(), sys.stderr.flush()
    saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    os.dup2(stdout.fileno(), 1)
    os.dup2(stderr.fileno(), 2)
    sys.stdout, sys.stderr = stdout, stderr  # Python's writes, where sys.stdout is not file descriptor 1 (pytest's)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        rc = in_process_main(kind)(args)
        rc = rc if isinstance(rc, int) else 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (StepTimeout, Exception):  # the time limit, or a bug: its traceback goes where the step's output goes
        import traceback
        traceback.print_exc()
        rc = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        sys.stdout.flush(), sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])
    return 124 if timed_out else rc


def appending(path: Path):
    """A new, empty file opened for appending: what this process and a step (in it or not) write lands in order."""
    path.write_text("")
    return open(path, "a", encoding="utf-8", buffering=1)


class Acceptance:
    def __init__(self, out: Path, grid: dict, budget_s: int, separate: bool):
        self.out, self.grid, self.budget_s = out, grid, budget_s
        self.execute = run_separately if separate else run_in_process
        self.start = time.monotonic()
        self.failed = False
        self.log = open(out / "log.txt", "w", encoding="utf-8")
        (out / "summary.txt").write_text("")

    def note(self, line: str) -> None:
        print(line, flush=True)
        with open(self.out / "summary.txt", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def logline(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()

    def budget_left(self, name: str) -> int | None:
        """Seconds left of the budget for a step, or None (and a log line) where fewer than 15 are left."""
        left = int(self.budget_s - (time.monotonic() - self.start))
        if left < 15:
            self.logline(f"=== {name}: not run, {left}s left of the {self.budget_s}s budget")
            return None
        return left

    def run_step(self, step: dict, work: Path) -> tuple[int, int, str]:
        """Run one step in its time box; its output goes to the log (stdout to `step["stdout"]` in $OUT where
        named, and then to the log too). Returns the exit code (-1: not run), seconds, and the output's last lines."""
        name = step["name"]
        left = self.budget_left(name)
        if left is None:
            return -1, 0, ""
        limit = min(step["limit"], left)
        self.logline(f"=== {name} (limit {limit}s): " + " ".join(command_line(step["kind"], step["args"])))
        t0 = time.monotonic()
        output = work / f"{name}.out"
        with appending(output) as err:
            if step["kind"] == "env":
                rc = self.env_step(step, limit)
            elif "stdout" in step:
                with appending(self.out / step["stdout"]) as out:
                    rc = self.execute(step["kind"], step["args"], limit, out, err)
                err.write((self.out / step["stdout"]).read_text(encoding="utf-8", errors="replace"))
            else:
                rc = self.execute(step["kind"], step["args"], limit, err, err)
        secs = round(time.monotonic() - t0)
        text = output.read_text(encoding="utf-8", errors="replace")
        self.log.write(text)
        self.logline(f"=== {name}: exit {rc} after {secs}s")
        return rc, secs, "\n".join(text.splitlines()[-5:])

    def env_step(self, step: dict, limit: int) -> int:
        """nvidia-smi's reports (none on a machine without one: a failure unless --cpu), then the self-check's
        environment facts, all in $OUT/env.txt."""
        with appending(self.out / "env.txt") as env:
            if shutil.which("nvidia-smi"):
                for command in (["nvidia-smi"], ["nvidia-smi", "-q", "-d", "MEMORY,CLOCK,POWER,PERFORMANCE,COMPUTE"]):
                    env.flush()
                    rc = subprocess.run(["timeout", str(limit), *command], stdout=env, stderr=env).returncode
                    if rc:
                        return 1
            else:
                env.write("nvidia-smi: not on this machine\n")
                if self.grid["device"] != "cpu":
                    return 1
            env.write(f"\n--- tools/gpu_selfcheck.py --env --device {self.grid['device']}\n")
            env.flush()
            return self.execute("env", step["args"], limit, env, env)

    def verdict(self, name: str, rc: int, secs: int, skip: str = "") -> None:
        status = {0: "PASS", -1: "FAIL", 124: "TIMEOUT", 137: "TIMEOUT"}.get(rc, "FAIL")
        if rc == -1:
            skip = f"not run: the {self.budget_s}s budget was spent"
        elif skip and status == "FAIL":
            status = "SKIP"
        self.failed |= status in ("FAIL", "TIMEOUT")
        self.note(f"{name:<9} {status:<8} {secs:>4}s  exit {rc!s:<4} {skip}")


def commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)

    sha = git("rev-parse", "--short", "HEAD").stdout.strip()
    return sha + ("" if git("diff", "--quiet", "HEAD").returncode == 0 else "-dirty")


def missing_flags() -> list[str]:
    """The interface this run drives; a flag missing here makes its step fail (loudly, in log.txt), never skip."""
    done = subprocess.run([sys.executable, "-m", "kvbench", "run", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    return [flag for flag in ("--compile", "--profile-steps") if flag not in done.stdout + done.stderr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder for the 8 files")
    parser.add_argument("--cpu", action="store_true", help="the dry run: tiny preset on the CPU, one process")
    parser.add_argument("--separate", action="store_true", help="one process per step (always so on a GPU)")
    args = parser.parse_args(argv)
    grid = GRIDS["cpu" if args.cpu else "gpu"]
    budget_s = int(os.environ.get("BUDGET_S") or grid["budget_s"])
    os.chdir(ROOT)
    src = str(ROOT / "src")
    os.environ["PYTHONPATH"] = src + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    if src not in sys.path:
        sys.path.insert(0, src)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if args.cpu:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by torch when it is imported, here or in a step
    args.out.mkdir(parents=True, exist_ok=True)
    run = Acceptance(args.out, grid, budget_s, separate=args.separate or not args.cpu)
    work = Path(tempfile.mkdtemp(prefix="kvbench-accept."))
    try:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        run.note(f"kvbench acceptance: {grid['model']} on {grid['device']} in {grid['dtype']}, budget {budget_s}s, "
                 f"{now}, commit {commit()}")
        if args.cpu:
            run.logline(f"dry run: {'one process per step' if args.separate else 'every step in this process'}, "
                        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
        missing = missing_flags()
        if missing:
            run.note(f"MISSING kvbench run flags on this checkout: {' '.join(missing)} (the sweep step will fail)")
        (work / "bench").mkdir()
        for step in steps(grid, work):
            rc, secs, tail = run.run_step(step, work)
            run.verdict(step["name"], rc, secs, step.get("skip", lambda rc, tail: "")(rc, tail))
        # The run folders, one archive per step; a step that wrote nothing leaves a note saying so.
        for part in ARCHIVES:
            folder = work / part
            if not folder.is_dir() or not any(folder.iterdir()):
                folder.mkdir(exist_ok=True)
                (folder / "NOTHING-WRITTEN.txt").write_text(f"the {part} step wrote nothing: see log.txt\n")
            with tarfile.open(args.out / f"{part}.tar.gz", "w:gz") as tar:
                tar.add(folder, arcname=part)
        for name, what in (("selfcheck.txt", "the self-check"), ("env.txt", "the env step")):
            if not (args.out / name).is_file():
                (args.out / name).write_text(f"{what} did not run: see log.txt\n")
    finally:
        run.log.close()
        shutil.rmtree(work, ignore_errors=True)
    run.note(f"total {round(time.monotonic() - run.start)}s; "
             f"{'no step failed' if not run.failed else 'SOME STEPS FAILED'} -> {args.out}")
    run.note("--- self-check")
    selfcheck = (args.out / "selfcheck.txt").read_text(encoding="utf-8")
    with open(args.out / "summary.txt", "a", encoding="utf-8") as f:
        f.write(selfcheck)
    print(selfcheck, end="")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
