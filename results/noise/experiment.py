"""The noise experiment: one small sweep idle and while a bounded busy loop competes for a core, in both orders
(interleaved, grouped), then the four checks of `kvbench compare`. Run from the repository root:

    python results/noise/experiment.py            # -> results/noise/<condition>-<order>/ and results/noise/summary.md
    python results/noise/experiment.py --compare-only   # summary.md again from the run folders here (seconds)

It refuses to start while the machine is busy (1-minute load average >= LOAD_LIMIT), since "idle" must be idle.
What it writes:
- idle-interleaved, idle-interleaved-again (the same run twice, back to back, first: the busy loop leaves this
  virtual machine slower for a while after it), idle-grouped, busy-interleaved, busy-grouped: run folders
  (kvbench run --model tiny --device cpu --prompt-len 16,256 --new-tokens 32 --batch-size 1,4 --repeats 15
  --order ORDER); the busy ones with `python -c 'while True: pass'` running beside them, killed after the run;
- summary.md: each busy speedup against the idle run's interval in the same order, and the compare checks:
  two identical idle runs (no change, exit 0), a slowdown injected into every row (every repeat x1.25: flagged on
  every row, exit 1), a change inside the threshold (x1.02: not flagged), the busy run against the idle one
  (contention recorded, not a regression, exit 0); and three the issue did not name: a speed-up injected into every
  row (x0.8: improvements, exit 0), a slowdown injected into one scenario only (that row alone, exit 1), and the
  second identical run as the base (the order of two runs does not matter).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOAD_LIMIT = 3.0
SWEEP = ["--model", "tiny", "--device", "cpu", "--prompt-len", "16,256", "--new-tokens", "32", "--batch-size", "1,4",
         "--repeats", "15"]
KVBENCH = [sys.executable, "-m", "kvbench"]
ONE = "P256-N32-B1-cache-dynamic-greedy"  # the scenario the one-row slowdown goes into


def run(name: str, order: str, busy: bool) -> Path:
    out = HERE / name
    shutil.rmtree(out, ignore_errors=True)
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        subprocess.run([*KVBENCH, "run", *SWEEP, "--order", order, "--out", str(out)], check=True)
    finally:
        if loop:
            loop.kill()
            loop.wait()
    return out


def scaled(src: Path, factor: float, name: str, only: str | None = None) -> Path:
    """A copy of run `src` with every timing (repeats and medians) multiplied by `factor` (of scenario `only`
    alone, if given): an injected change."""
    out = HERE / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    shutil.copy(src / "run.json", out / "run.json")
    lines = []
    for line in (src / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key in ("total_s", "ttft_s", "decode_step_s") if only in (None, rec["scenario_id"]) else ():
            if rec.get(key) is not None:
                rec[key] *= factor
            if rec.get(f"{key}_repeats"):
                rec[f"{key}_repeats"] = [v * factor if v is not None else None for v in rec[f"{key}_repeats"]]
        lines.append(json.dumps(rec))
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    return out


def compare(base: Path, new: Path) -> tuple[int, dict]:
    proc = subprocess.run([*KVBENCH, "compare", str(base), str(new), "--format", "json"], capture_output=True,
                          text=True)
    return proc.returncode, json.loads(proc.stdout)


def speedups(path: Path):
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    from kvbench.results.frame import speedups as table
    from kvbench.results.store import load_results

    return table(load_results(path)).set_index("scenario_id")


def main() -> int:
    load = os.getloadavg()[0]
    if "--compare-only" in sys.argv:  # the summary again from the run folders already here
        return summarise({(cond, order): HERE / f"{cond}-{order}" for cond in ("idle", "busy")
                          for order in ("interleaved", "grouped")}, HERE / "idle-interleaved-again", None)
    if load >= LOAD_LIMIT and "--force" not in sys.argv:
        print(f"the machine is busy (1-minute load average {load:.1f} >= {LOAD_LIMIT}): not an idle baseline; "
              "rerun later (or --force)")
        return 2
    runs = {("idle", "interleaved"): run("idle-interleaved", "interleaved", False)}
    again = run("idle-interleaved-again", "interleaved", False)
    runs |= {(cond, order): run(f"{cond}-{order}", order, cond == "busy")
             for cond, order in (("idle", "grouped"), ("busy", "interleaved"), ("busy", "grouped"))}
    return summarise(runs, again, load)


def summarise(runs: dict, again: Path, load: float | None) -> int:
    """summary.md from the run folders: the speedups side by side and the compare checks."""
    start = f"load average at start {load:.2f}" if load is not None else \
        ("summary remade from the run folders with --compare-only; the run's own output, with the load average at "
         "its start, is experiment.log")
    lines = ["# Noise experiment", "", f"Command: `python results/noise/experiment.py` ({start}). Sweep: "
             f"`kvbench run {' '.join(SWEEP)} --order ORDER`.", ""]
    for order in ("interleaved", "grouped"):
        idle, busy = speedups(runs[("idle", order)]), speedups(runs[("busy", order)])
        lines += [f"## {order}: busy speedup against the idle one's 95% interval", "",
                  "| scenario | idle speedup [95%] | busy speedup [95%] | busy / idle | busy within idle interval "
                  "| idle within busy interval | busy contention |",
                  "|---|---|---|---|---|---|---|"]
        inside = covered = 0
        for sid, row in idle.iterrows():
            b = busy.loc[sid]
            ok = row["speedup_ci_low"] <= b["speedup"] <= row["speedup_ci_high"]
            cover = b["speedup_ci_low"] <= row["speedup"] <= b["speedup_ci_high"]
            inside, covered = inside + ok, covered + cover
            lines.append(f"| {sid} | {row['speedup']:.2f}x [{row['speedup_ci_low']:.2f}-{row['speedup_ci_high']:.2f}] "
                         f"| {b['speedup']:.2f}x [{b['speedup_ci_low']:.2f}-{b['speedup_ci_high']:.2f}] | "
                         f"{b['speedup'] / row['speedup']:.2f} | {'yes' if ok else 'no'} | {'yes' if cover else 'no'} | "
                         f"{b.get('contention_reason') or b.get('contention')} |")
        lines += ["", f"{inside} of {len(idle)} busy speedups within the idle interval, {covered} of {len(idle)} idle "
                  f"speedups within the busy interval ({order}).", ""]
    idle = runs[("idle", "interleaved")]
    # (situation, base, new, what is expected in words, the total_s verdict expected of a scenario)
    checks = [("two identical idle runs", idle, again, "no change, exit 0", lambda sid: "no change"),
              ("slowdown x1.25 injected into every row", idle, scaled(idle, 1.25, "injected-slowdown"),
               "flagged on every row, exit 1", lambda sid: "regression"),
              ("change x1.02 inside the 5% threshold", idle, scaled(idle, 1.02, "injected-2pc"),
               "not flagged, exit 0", lambda sid: "no change"),
              ("busy run against the idle one", idle, runs[("busy", "interleaved")],
               "contention recorded, not a regression, exit 0", lambda sid: "can't tell"),
              ("speed-up x0.8 injected into every row", idle, scaled(idle, 0.8, "injected-speedup"),
               "improvement on every row, exit 0", lambda sid: "improvement"),
              (f"slowdown x1.25 injected into {ONE} only", idle, scaled(idle, 1.25, "injected-one", ONE),
               "that row alone flagged, exit 1", lambda sid: "regression" if sid == ONE else "no change"),
              ("the two identical idle runs, the other way round", again, idle, "no change, exit 0",
               lambda sid: "no change")]
    lines += ["## kvbench compare", "", "| situation | expected | exit | total_s verdicts | machine (new / base) |",
              "|---|---|---|---|---|"]
    unexpected = []
    for name, base, new, expected, verdict_of in checks:
        code, doc = compare(base, new)
        verdicts = [r["metrics"]["total_s"]["verdict"] for r in doc["rows"]]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
        flagged = [r["scenario"] for r in doc["rows"] if r["metrics"]["total_s"]["verdict"] in
                   ("regression", "improvement")]
        if 0 < len(flagged) < len(verdicts):
            counts += f" ({', '.join(flagged)})"
        lines.append(f"| {name} | {expected} | {code} | {counts} | {doc['rows'][0]['machine_scale']:.2f}x |")
        for row in doc["rows"]:
            total = row["metrics"]["total_s"]
            if total["verdict"] != verdict_of(row["scenario"]):
                unexpected.append(f"- {name}, {row['scenario']}: {total['verdict']}, ratio {total['ratio']:.3f}, "
                                  f"p = {total['p']:.2g}: {total['reason']}")
    lines += ["", "Rows whose verdict is not the one expected, with compare's reason:", "", *(unexpected or ["none"])]
    (HERE / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
