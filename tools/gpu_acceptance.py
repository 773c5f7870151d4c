"""kvbench's GPU acceptance run: the steps, their time boxes, the summary and the archives (see gpu_acceptance.sh).

    OUT=/some/folder tools/gpu_acceptance.sh                     # one CUDA GPU: each step in a process of its own
    OUT=/tmp/accept-out tools/gpu_acceptance.sh --cpu --separate # the dry run, the GPU's way: tiny preset, CPU
    OUT=/tmp/accept-out tools/gpu_acceptance.sh --cpu            # the dry run in this one process (quicker)

The steps and their commands are defined once, here, most decisive first: a run cut short has answered the most
important questions. On a GPU each step runs as its own process under `timeout --kill-after=10 LIMIT` (a crash or a
hung CUDA call ends one step, never the run; every step starts with a fresh CUDA context and compile cache), and the
step limits add up to the budget (360 s), so no step starves another. With --cpu alone the same commands run in
this one process, one after the other (kvbench's CLI and the self-check's main called in turn), time-boxed by
SIGALRM; --separate runs the dry run the GPU's way. Nothing is installed, nothing downloaded, and no step needs git.
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
FILES = ["env.txt", "selfcheck.txt", "study.tar.gz", "compile.tar.gz", "sweep.tar.gz", "frontier.tar.gz",
         "log.txt", "summary.txt"]
ARCHIVES = ["study", "compile", "sweep", "frontier"]
# torch's logs of the compile step (kept in compile.tar.gz as compile/compile.log): recompilations and their
# reasons, graph breaks, and why CUDA graphs were skipped (perf_hints) or re-recorded (cudagraphs)
COMPILE_LOGS = "recompiles,graph_breaks,perf_hints,cudagraphs"

GRIDS = {
    "gpu": dict(
        model="phi-3-mini-4k", device="cuda", dtype="float16", budget_s=360,
        live="--prompt-len 1024 --new-tokens 16 --batch-size 8",
        study="--prompt-len 55 --new-tokens 100 --batch-size 1 --repeats 5 --warmup 1",
        compile="--prompt-len 128 --new-tokens 16 --batch-size 1 --repeats 3 --warmup 1",
        sweep="--prompt-len 128,1024 --new-tokens 16 --batch-size 1,8 --repeats 2 --warmup 1",
        frontier="--batch-sizes 1,8 --new-tokens 16 --resolution 256",
        energy="--prompt-len 128 --new-tokens 64 --batch-size 1 --repeats 2 --warmup 1",
        limits=dict(versions=15, env=25, selfcheck=70, study=50, compile=100, sweep=30, frontier=40, energy=15,
                    records=15)),
    "cpu": dict(
        model="tiny", device="cpu", dtype="float32", budget_s=600,
        live="--prompt-len 32 --new-tokens 8 --batch-size 2",
        study="--prompt-len 55 --new-tokens 8 --batch-size 1 --repeats 2 --warmup 1",
        compile="--prompt-len 16 --new-tokens 4 --batch-size 1 --repeats 1 --warmup 1",
        sweep="--prompt-len 16,64 --new-tokens 4 --batch-size 1,2 --repeats 1 --warmup 1",
        frontier="--batch-sizes 1,8 --new-tokens 4 --resolution 256",
        energy="--prompt-len 16 --new-tokens 8 --batch-size 1 --repeats 1 --warmup 0",
        # the dry run's limits only catch a hang: on 2 cores shared with other work a step's imports alone (torch,
        # transformers) can take 30 s; the sizes keep the whole run near 100 s on an idle machine
        limits=dict(versions=60, env=90, selfcheck=90, study=90, compile=90, sweep=90, frontier=60, energy=60,
                    records=60)),
}
STEPS = ["versions", "env", "selfcheck", "study", "compile", "sweep", "frontier", "energy", "records"]


def run_flags() -> str:
    """The source of `kvbench run`'s options (read, not run: no process, no import of torch)."""
    return (ROOT / "src" / "kvbench" / "cli" / "run.py").read_text(encoding="utf-8")


def steps(grid: dict, work: Path, flags: str | None = None) -> list[dict]:
    """Every step, most decisive first: name, time limit, what runs (kvbench or the self-check, its arguments),
    where its output goes (`stdout`: a file in $OUT), and when a failure is a SKIP."""
    flags = run_flags() if flags is None else flags
    kv = ["--model", grid["model"], "--device", grid["device"], "--dtype", grid["dtype"]]
    study, compiled, sweep, frontier, energy, live = (
        grid[k].split() for k in ("study", "compile", "sweep", "frontier", "energy", "live"))
    cpu, limit = grid["device"] == "cpu", grid["limits"]
    return [
        # versions, tools (git, gcc) and nvidia-smi; then the environment facts: NVML, a copy bandwidth
        dict(name="versions", limit=limit["versions"], kind="selfcheck", args=["--versions"], stdout="env.txt"),
        dict(name="env", limit=limit["env"], kind="selfcheck", args=["--env", "--device", grid["device"]],
             stdout="env.txt"),
        # the live self-check: the Clock against the profiler's device time, KV bytes and peak allocated bytes
        # against their estimates, the profiled steps, a real out-of-memory recovered
        dict(name="selfcheck", limit=limit["selfcheck"], kind="selfcheck", args=["--live", *kv, *live],
             stdout="selfcheck.txt"),
        # the guide's scenario, cache on and off (the guide's T4: 9.53 s vs 38.8 s, 4.07x)
        dict(name="study", limit=limit["study"], kind="kvbench",
             args=["run", *kv, *study, "--use-cache", "both", "--out", str(work / "study")]),
        # one compiled shape, eager beside it: phi-3 is a sliding-window model (2047 on every layer), so its static
        # cache is the sliding-window row the compile fix is checked by (the deprecated `sliding_window` cache name
        # builds that same StaticCache, and kvbench measures it as "static")
        dict(name="compile", limit=limit["compile"], kind="kvbench", env={"TORCH_LOGS": COMPILE_LOGS},
             keep_output=work / "compile" / "compile.log",
             args=["run", *kv, *compiled, "--use-cache", "on", "--cache-implementation", "static",
                   "--compile", "off,auto", "--profile-steps", "--out", str(work / "compile" / "run")]),
        # a short dynamic sweep, its decode steps profiled
        dict(name="sweep", limit=limit["sweep"], kind="kvbench",
             args=["run", *kv, *sweep, "--use-cache", "on", "--cache-implementation", "dynamic", "--profile-steps",
                   "--out", str(work / "sweep" / "dynamic")]),
        # the out-of-memory frontier under a T4-sized cap (CUDA only: on the CPU the command refuses, and says why);
        # the records step puts the planner's prediction beside it
        dict(name="frontier", limit=limit["frontier"], kind="kvbench",
             args=["frontier", "--model", grid["model"], "--dtype", grid["dtype"], "--memory-cap", "14.75GiB",
                   *frontier, "--out", str(work / "frontier" / "run")],
             skip=(lambda rc, tail: "needs CUDA (kvbench frontier refuses on the CPU: see log.txt)"
                   if cpu and rc == 2 and "CUDA GPU" in tail else "")),
        # energy per token (every record carries it: NVML's energy counter on CUDA, RAPL or null with the reason on
        # the CPU), with the clocks and throttle reasons of the load instrument, cached and uncached
        dict(name="energy", limit=limit["energy"], kind="kvbench",
             args=["run", *kv, *energy, "--use-cache", "both", "--out", str(work / "sweep" / "energy")], unless=""),
        # the self-check over every record written, and the frontier measured against predicted
        records_step(limit["records"], work, ["study", "compile", "sweep", "energy"]),
    ]


RECORDS = {"study": "study", "compile": "compile/run", "sweep": "sweep/dynamic", "energy": "sweep/energy"}


def records_step(limit: int, work: Path, names: list[str]) -> dict:
    """The self-check over the records of the steps `names`, and the frontier against the planner."""
    return dict(name="records", limit=limit, kind="selfcheck", stdout="selfcheck.txt",
                args=["--records", *(str(work / RECORDS[name]) for name in names if name in RECORDS),
                      "--frontier", str(work / "frontier" / "run"),
                      "--frontier-table", str(work / "frontier" / "predicted-vs-measured.txt")])


def select(all_steps: list[dict], names: list[str] | None, work: Path, budget_s: int | None = None) -> list[dict]:
    """The steps named (--steps, for a rerun of a few), in the run's order, their limits stretched to fill the budget
    (at most 570 s each: a lent machine's command ends at 600); the records step, where named, judges only the
    records of the steps named with it."""
    if not names:
        return all_steps
    unknown = sorted(set(names) - {s["name"] for s in all_steps})
    if unknown:
        raise SystemExit(f"gpu_acceptance: no step {', '.join(unknown)} (the steps: "
                         f"{', '.join(s['name'] for s in all_steps)})")
    chosen = [s for s in all_steps if s["name"] in names]
    ran = [s["name"] for s in chosen if not s.get("unless")]
    chosen = [records_step(s["limit"], work, ran) if s["name"] == "records" else s for s in chosen]
    total = sum(s["limit"] for s in chosen if not s.get("unless"))
    stretch = max(1.0, (budget_s or total) / total) if total else 1.0
    return [{**s, "limit": min(570, int(s["limit"] * stretch))} for s in chosen]


COMMANDS = {"kvbench": ["-m", "kvbench"], "selfcheck": ["tools/gpu_selfcheck.py"]}


def command_line(kind: str, args: list[str]) -> list[str]:
    return [sys.executable, *COMMANDS[kind], *args]


class StepTimeout(KeyboardInterrupt):
    """Raised by SIGALRM in an in-process step: kvbench run stops as on a Ctrl-C, keeping what finished."""


def run_separately(kind: str, args: list[str], limit: int, stdout, stderr, env: dict | None = None) -> int:
    """One process under `timeout` (124: timed out; 137: killed 10 s later)."""
    return subprocess.run(["timeout", "--kill-after=10", str(limit), *command_line(kind, args)], cwd=ROOT,
                          stdout=stdout, stderr=stderr, env={**os.environ, **(env or {})}).returncode


def in_process_main(kind: str):
    if kind == "kvbench":
        from kvbench.cli.app import main
        return main
    spec = importlib.util.spec_from_file_location("gpu_selfcheck", ROOT / "tools" / "gpu_selfcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_in_process(kind: str, args: list[str], limit: int, stdout, stderr, env: dict | None = None) -> int:
    """The command's main called here, its file descriptors 1 and 2 sent where a process's would go; SIGALRM after
    `limit` seconds stops it (124, as `timeout` says). `env` is set around the call (read by what the call itself
    reads; TORCH_LOGS is read once, when torch is imported, so it takes effect only in --separate's processes)."""
    timed_out = []

    def on_alarm(signum, frame):
        timed_out.append(True)
        raise StepTimeout(f"time limit of {limit}s")

    sys.stdout.flush(), sys.stderr.flush()
    saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    os.dup2(stdout.fileno(), 1)
    os.dup2(stderr.fileno(), 2)
    sys.stdout, sys.stderr = stdout, stderr  # Python's writes, where sys.stdout is not file descriptor 1
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
        for key, value in saved_env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return 124 if timed_out else rc


def appending(path: Path, fresh: bool = True):
    """A file opened for appending (emptied first where `fresh`): what this process and a step (in it or not)
    write lands in order."""
    if fresh or not path.exists():
        path.write_text("")
    return open(path, "a", encoding="utf-8", buffering=1)


class Acceptance:
    def __init__(self, out: Path, grid: dict, budget_s: int, separate: bool):
        self.out, self.grid, self.budget_s = out, grid, budget_s
        self.execute = run_separately if separate else run_in_process
        self.start = time.monotonic()
        self.failed = False
        self.written: set[str] = set()  # the files of $OUT a step wrote to (the next step appends)
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
        """Seconds left of the budget for a step, or None (and a log line) where fewer than 10 are left."""
        left = int(self.budget_s - (time.monotonic() - self.start))
        if left < 10:
            self.logline(f"=== {name}: not run, {left}s left of the {self.budget_s}s budget")
            return None
        return left

    def run_step(self, step: dict, work: Path) -> tuple[int, int, str]:
        """Run one step in its time box; its output goes to the log (stdout to `step["stdout"]` in $OUT where
        named, and then to the log too; all of it to `step["keep_output"]` where named). Returns the exit code
        (-1: not run), seconds, and the output's last lines."""
        name = step["name"]
        left = self.budget_left(name)
        if left is None:
            return -1, 0, ""
        limit = min(step["limit"], left)
        env = step.get("env") or {}
        prefix = " ".join(f"{k}={v}" for k, v in env.items())
        self.logline(f"=== {name} (limit {limit}s): {prefix + ' ' if prefix else ''}"
                     + " ".join(command_line(step["kind"], step["args"])))
        t0 = time.monotonic()
        output = work / f"{name}.out"
        with appending(output) as err:
            if "stdout" in step:
                target = self.out / step["stdout"]
                fresh = step["stdout"] not in self.written
                self.written.add(step["stdout"])
                with appending(target, fresh) as out:
                    if not fresh:
                        out.write(f"\n--- {name}\n")
                    size = out.tell()
                    rc = self.execute(step["kind"], step["args"], limit, out, err, env)
                with open(target, encoding="utf-8", errors="replace") as f:
                    f.seek(size)
                    err.write(f.read())
            else:
                rc = self.execute(step["kind"], step["args"], limit, err, err, env)
        secs = round(time.monotonic() - t0)
        text = output.read_text(encoding="utf-8", errors="replace")
        if step.get("keep_output"):
            step["keep_output"].parent.mkdir(parents=True, exist_ok=True)
            step["keep_output"].write_text(f"# {prefix} (step {name}, exit {rc})\n" + text, encoding="utf-8")
        self.log.write(text)
        self.logline(f"=== {name}: exit {rc} after {secs}s")
        return rc, secs, "\n".join(text.splitlines()[-5:])

    def verdict(self, name: str, rc: int | None, secs: int, skip: str = "") -> None:
        """One summary line; rc None: not run, by design (`skip` says why)."""
        status = {0: "PASS", -1: "FAIL", 124: "TIMEOUT", 137: "TIMEOUT", None: "SKIP"}.get(rc, "FAIL")
        if rc == -1:
            skip = f"not run: the {self.budget_s}s budget was spent"
        elif skip and status == "FAIL":
            status = "SKIP"
        self.failed |= status in ("FAIL", "TIMEOUT")
        self.note(f"{name:<9} {status:<8} {secs:>4}s  exit {'-' if rc is None else rc!s:<4} {skip}")


def commit() -> str:
    """The checkout's commit, or why it is unknown: the GPU machine may have no git, and the tree may travel
    without its .git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)

    try:
        done = git("rev-parse", "--short", "HEAD")
        if done.returncode:
            return "unknown (not a git checkout)"
        return done.stdout.strip() + ("" if git("diff", "--quiet", "HEAD").returncode == 0 else "-dirty")
    except (OSError, subprocess.SubprocessError):  # no git on PATH, or it hung
        return "unknown (no git on this machine)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder for the 8 files")
    parser.add_argument("--cpu", action="store_true", help="the dry run: tiny preset on the CPU")
    parser.add_argument("--separate", action="store_true", help="one process per step (always so on a GPU)")
    parser.add_argument("--steps", help="run only these steps, comma-separated (a rerun), e.g. compile,records")
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
    separate = args.separate or not args.cpu
    run = Acceptance(args.out, grid, budget_s, separate=separate)
    work = Path(tempfile.mkdtemp(prefix="kvbench-accept."))
    try:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        run.note(f"kvbench acceptance: {grid['model']} on {grid['device']} in {grid['dtype']}, budget {budget_s}s, "
                 f"{now}, commit {commit()}, {'one process per step' if separate else 'every step in this process'}")
        if args.cpu:
            run.logline(f"dry run: {'one process per step' if separate else 'every step in this process'}, "
                        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
        flags = run_flags()
        missing = [flag for flag in ("--compile", "--profile-steps") if f'"{flag}"' not in flags]
        if missing:
            run.note(f"MISSING kvbench run flags on this checkout: {' '.join(missing)} (their steps will fail)")
        chosen = select(steps(grid, work, flags), args.steps.split(",") if args.steps else None, work, budget_s)
        for step in chosen:
            if step.get("unless"):
                run.logline(f"=== {step['name']}: not run: {step['unless']}")
                run.verdict(step["name"], None, 0, step["unless"])
                continue
            rc, secs, tail = run.run_step(step, work)
            run.verdict(step["name"], rc, secs, step.get("skip", lambda rc, tail: "")(rc, tail))
        # The run folders, one archive each; a step that wrote nothing leaves a note saying so.
        for part in ARCHIVES:
            folder = work / part
            if not folder.is_dir() or not any(folder.iterdir()):
                folder.mkdir(exist_ok=True)
                (folder / "NOTHING-WRITTEN.txt").write_text(f"the {part} step wrote nothing: see log.txt\n")
            with tarfile.open(args.out / f"{part}.tar.gz", "w:gz") as tar:
                tar.add(folder, arcname=part)
        for name, what in (("selfcheck.txt", "the self-check"), ("env.txt", "the versions and env steps")):
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
