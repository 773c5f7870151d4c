"""The GPU acceptance self-check: PASS/FAIL lines over the records a run produced, and live checks on the device.

Live (--live, first, each check apart: one that breaks is a FAIL and the others still run):
  device-time       kvbench's Clock (CUDA events on a GPU) around 8 queued elementwise kernels with no host
                    synchronisation between its marks, against the profiler's summed device time of those kernels:
                    within 10%. (The old check, events against a synchronised wall clock around generate, agreed by
                    construction: transformers synchronises the host at every decode step.)
  kv-bytes-live     one measured, profiled scenario (--prompt-len/--new-tokens/--batch-size) of --model: the KV bytes
                    in its returned cache == kvbench's estimate
  peak-vs-estimate  that scenario's peak allocated bytes above its start against the record's own estimate of it
                    (peak_allocated_delta_bytes_estimate, the planner's model): within 15%
  step-busy-live    that scenario's profiled decode steps: every step's device time > 0, the median no longer than
                    the profiled step
  oom-recovered     (CUDA) a real out-of-memory under torch.cuda.set_per_process_memory_fraction, with a huge
                    batch: the record's status is "oom", allocated and reserved memory are back to their level before
                    it, and the next scenario runs with the same peak as before the OOM

Over records (run folders or records.jsonl files given with --records):
  kv-bytes          every cached ok record: the KV bytes measured in the returned cache == kvbench's estimate
  compile-recorded  every static-cache ok record says whether decode ran compiled (`decode_compiled`), and says what
                    the compile setting implies: "on" compiled, "off" not, "auto" compiled on CUDA only
  step-busy         every profiled record (compiled ones included: CUDA graph replays must be seen), as step-busy-live

--versions prints Python's and the packages' versions, `which` of git and the compilers, and nvidia-smi's reports.
--env prints the environment facts as JSON instead: kvbench's env block, torch's view of the device, NVML's
memory (v2 where it exists), clocks and bus width, and a device-to-device copy bandwidth measured with torch.

INFO lines after the checks summarize the records (the seed scenario's speedup, KV bytes, peak memory, host vs device step).
Exit status 1 when any check fails.

    PYTHONPATH=src python tools/gpu_selfcheck.py --live --model phi-3-mini-4k --device cuda --dtype float16
    PYTHONPATH=src python tools/gpu_selfcheck.py --records RUN...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: gpu_env beside this file
from gpu_env import environment_facts, versions  # noqa: E402

MIB = 2**20
DEVICE_TIME_TOLERANCE = 0.10  # the Clock against the profiler's device time of the same queued work
STEP_TOLERANCE = 0.05  # a profiled step's device time may not exceed the step's own duration by more
PEAK_LOW, PEAK_HIGH = 0.85, 1.15  # peak allocated above the start over its estimate (the memory issue's bound)
GUIDE = "; the guide's T4 (phi-3-mini-4k fp16, one run each): 9.53 s with the cache, 38.8 s without: 4.07x"


def read_records(paths) -> list[dict]:
    """Records of run folders (their records.jsonl) or of records.jsonl files, each tagged with its run."""
    records = []
    for path in map(Path, paths):
        file = path / "records.jsonl" if path.is_dir() else path
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append({"_run": path.name, **json.loads(line)})
    return records


def _name(r: dict) -> str:
    return f"{r.get('_run', '?')}/{r.get('scenario_id', '?')}"


def check_kv_bytes(records: list[dict]) -> tuple[str, str]:
    cached = [r for r in records if r.get("status") == "ok" and r.get("use_cache")]
    if not cached:
        return "FAIL", "no cached ok record to check"
    bad = [f"{_name(r)}: measured {r.get('kv_cache_bytes')}, estimate {r.get('kv_cache_bytes_estimate')}"
           for r in cached if r.get("kv_cache_bytes_estimate") is None
           or r.get("kv_cache_bytes") != r.get("kv_cache_bytes_estimate")]
    if bad:
        return "FAIL", f"{len(bad)} of {len(cached)} cached ok records differ: " + "; ".join(bad[:5])
    return "PASS", f"measured == estimate on all {len(cached)} cached ok records"


def expected_compiled(record: dict) -> bool:
    """What the compile setting implies for a static-cache record: transformers compiles "auto" on CUDA only."""
    mode = record.get("compile", "auto")
    return mode == "on" or (mode == "auto" and str(record.get("device", "")).startswith("cuda"))


def check_compile_recorded(records: list[dict]) -> tuple[str, str]:
    static = [r for r in records if r.get("status") == "ok" and r.get("cache_implementation") == "static"]
    if not static:
        return "FAIL", "no static-cache ok record to check"
    missing = [_name(r) for r in static if "decode_compiled" not in r]
    if missing:
        return "FAIL", (f"{len(missing)} of {len(static)} static records have no decode_compiled field "
                        f"(a kvbench without the compile axis?): " + "; ".join(missing[:3]))
    bad = [f"{_name(r)}: compile={r.get('compile', 'auto')} on {r.get('device')}, decode_compiled="
           f"{r['decode_compiled']}, expected {expected_compiled(r)}"
           for r in static if r["decode_compiled"] is not expected_compiled(r)]
    if bad:
        return "FAIL", f"{len(bad)} of {len(static)} static records: " + "; ".join(bad[:5])
    compiled = sum(r["decode_compiled"] for r in static)
    return "PASS", f"{len(static)} static records as their setting implies ({compiled} compiled, " \
                   f"{len(static) - compiled} eager)"


def compare_device_time(event_s: float, device_s: float, host_s: float,
                        tolerance: float = DEVICE_TIME_TOLERANCE) -> tuple[str, str]:
    """The Clock's interval around queued device work against the profiler's summed device time of that work.

    Nothing synchronises between the marks, so the Clock agrees only where it times the device: marks on another
    stream, a host clock read before the work ran, or a profiler that misses the kernels make them disagree."""
    if not event_s > 0 or not device_s > 0:
        return "FAIL", f"no usable timings (clock {event_s!r} s, profiler device time {device_s!r} s)"
    gap = abs(event_s - device_s) / device_s
    verdict = "PASS" if gap <= tolerance else "FAIL"
    return verdict, (f"clock {event_s * 1e3:.2f} ms vs the profiler's device time {device_s * 1e3:.2f} ms: {gap:.1%} "
                     f"apart (limit {tolerance:.0%}); the host queued the work in {host_s * 1e3:.2f} ms")


def device_work(device, nbytes: int, launches: int = 8):
    """`launches` elementwise kernels over `nbytes` of random half-precision data, queued back to back."""
    import torch

    a = torch.empty(nbytes // 2, dtype=torch.float16, device=device).uniform_(-1, 1)  # never time on zeros
    out = torch.empty_like(a)

    def run():
        for _ in range(launches):
            torch.add(a, 1.0, out=out)

    return run


def live_device_time(device, nbytes: int | None = None, launches: int = 8) -> tuple[str, str]:
    """kvbench's Clock around device work that no host synchronisation interrupts, against the profiler's device
    time of that work (CUDA: the kernels' summed durations; CPU: the operators' time)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from kvbench.measuring.instruments.clock import Clock

    device = torch.device(device)
    cuda = device.type == "cuda"
    nbytes = nbytes or (1 * 2**30 if cuda else 32 * MIB)
    run, clock = device_work(device, nbytes, launches), Clock(device)
    run()  # warm-up
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = clock.mark()
        t0 = perf_counter()
        run()
        host_s = perf_counter() - t0
        end = clock.mark()
        event_s = clock.intervals([start, end])[0]
    adds = [e for e in prof.events() if e.name == "aten::add" and e.device_type == DeviceType.CPU]
    device_us = sum(e.device_time_total if cuda else e.cpu_time_total for e in adds)
    verdict, message = compare_device_time(event_s, device_us / 1e6, host_s)
    what = "CUDA events" if cuda else "perf_counter"
    return verdict, f"{launches} additions over {nbytes / MIB:.0f} MiB on {device} ({what}): {message}"


def check_step_busy(records: list[dict]) -> tuple[str, str]:
    """Every profiled record: each decode step's device time is > 0 (the profiler saw its kernels: CUDA graph
    replays included) and the median is no longer than the profiled step itself (transformers waits for the device
    at every step, so a step's kernels end inside it)."""
    profiled = [r for r in records if r.get("status") == "ok" and r.get("decode_step_profiled_s")]
    if not profiled:
        return "SKIP", "no profiled record (--profile-steps)"
    bad = []
    for r in profiled:
        steps, device, wall = r.get("decode_steps_device_s") or [], r.get("decode_step_device_s"), \
            r["decode_step_profiled_s"]
        if not steps or min(steps) <= 0:
            bad.append(f"{_name(r)}: a decode step with no device time ({len(steps)} steps, min "
                       f"{min(steps, default=None)}): the profiler missed its kernels")
        elif device > wall * (1 + STEP_TOLERANCE) + 20e-6:
            bad.append(f"{_name(r)}: device {device * 1e3:.3f} ms > profiled step {wall * 1e3:.3f} ms")
    if bad:
        return "FAIL", f"{len(bad)} of {len(profiled)} profiled records: " + "; ".join(bad[:4])
    fractions = [r["decode_step_device_s"] / r["decode_step_profiled_s"] for r in profiled]
    return "PASS", (f"{len(profiled)} profiled records: every decode step busy > 0, device time "
                    f"{min(fractions):.0%} to {max(fractions):.0%} of the profiled step")


def compare_peak(measured: int | None, estimate: int | None, low: float = PEAK_LOW, high: float = PEAK_HIGH):
    if measured is None or estimate is None:
        return "SKIP", f"no allocator peak or no estimate (measured {measured}, estimate {estimate} bytes)"
    ratio = measured / estimate if estimate else float("inf")
    verdict = "PASS" if low <= ratio <= high else "FAIL"
    return verdict, (f"peak allocated above the start {measured} bytes, estimate {estimate} bytes: {ratio:.2f}x "
                     f"(limits {low}x to {high}x)")


def live_scenario(loaded, prompt_len: int, new_tokens: int, batch_size: int) -> list[tuple[str, str, str]]:
    """One measured, profiled scenario: its KV bytes against the estimate, its peak allocated bytes against the
    planner's, and its decode steps' device time."""
    import kvbench

    scenario = kvbench.Scenario(prompt_len, new_tokens, batch_size=batch_size)
    record = {"_run": "live", **kvbench.measure(loaded, scenario, repeats=1, warmup=1, profile_steps=True)}
    if record.get("status") != "ok":
        line = f"{scenario.id}: status {record.get('status')!r}: {record.get('error')}"
        return [("kv-bytes-live", "FAIL", line), ("peak-vs-estimate", "FAIL", line), ("step-busy-live", "FAIL", line)]
    return [("kv-bytes-live", *check_kv_bytes([record])),
            ("peak-vs-estimate", *compare_peak(record.get("peak_allocated_delta_bytes"),
                                               record.get("peak_allocated_delta_bytes_estimate"))),
            ("step-busy-live", *check_step_busy([record]))]


def live_oom(loaded) -> tuple[str, str]:
    """A real OOM under a memory cap, then the same small scenario as before it."""
    import torch

    import kvbench

    device = loaded.device
    if device.type != "cuda":
        return "SKIP", f"needs CUDA (torch.cuda.set_per_process_memory_fraction); model on {device}"
    small = kvbench.Scenario(128, 8)
    before = kvbench.measure(loaded, small, repeats=1, warmup=1)
    allocated0, reserved0 = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    total = torch.cuda.get_device_properties(device).total_memory
    cap = allocated0 + 2 * 2**30  # the weights and 2 GiB
    context = min(2048, (loaded.context_len or 2048) - 8)
    huge = kvbench.Scenario(context, 8, batch_size=256)  # a prefill of 256 x context tokens: far past 2 GiB
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        oom = kvbench.measure(loaded, huge, repeats=1, warmup=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    allocated1, reserved1 = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    after = kvbench.measure(loaded, small, repeats=1, warmup=1)
    peak0, peak1 = before.get("peak_allocated_delta_bytes"), after.get("peak_allocated_delta_bytes")
    problems = []
    if oom["status"] != "oom":
        problems.append(f"{huge.id} under a cap of {cap / 2**30:.1f} GiB gave status {oom['status']!r}, not 'oom'")
    if abs(allocated1 - allocated0) > MIB:
        problems.append(f"allocated {allocated0} before the OOM, {allocated1} after")
    if reserved1 > reserved0 + 64 * MIB:
        problems.append(f"reserved {reserved0} before the OOM, {reserved1} after (not handed back)")
    if after["status"] != "ok":
        problems.append(f"the next scenario's status is {after['status']!r}: {after.get('error')}")
    elif peak0 is None or peak1 is None or abs(peak1 - peak0) > MIB:
        problems.append(f"the next scenario peaked {peak1} bytes above its start, {peak0} before the OOM")
    summary = (f"{huge.id} under a {cap / 2**30:.1f} GiB cap: {oom['status']} ({(oom.get('error') or '')[:80]}); "
               f"allocated {allocated0} -> {allocated1}, reserved {reserved0} -> {reserved1}; next {small.id}: "
               f"{after['status']}, peak {peak1} (was {peak0})")
    return ("FAIL", "; ".join(problems) + f" [{summary}]") if problems else ("PASS", summary)


def _fmt(value, scale=1.0, unit="", digits=2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}{unit}"


def info_lines(records: list[dict]) -> list[str]:
    """What the lead's note needs, read from the records: speedups, KV bytes, peaks, host vs device steps."""
    lines = []
    ok = [r for r in records if r.get("status") == "ok"]
    from kvbench.inputs.axes import pair_id  # what a cached scenario shares with its uncached twin

    by_key = {}
    for r in ok:
        by_key.setdefault((r.get("_run"), pair_id(r)), {})["cache" if r.get("use_cache") else "nocache"] = r
    for key, pair in by_key.items():
        c, n = pair.get("cache"), pair.get("nocache")
        if c and n and c.get("total_s") and n.get("total_s"):
            lines.append(f"INFO {key[0]} {key[1]}: {_fmt(c['total_s'], 1, ' s', 3)} with the "
                         f"cache, {_fmt(n['total_s'], 1, ' s', 3)} without: {n['total_s'] / c['total_s']:.2f}x; KV "
                         f"{c.get('kv_cache_bytes')} bytes (estimate {c.get('kv_cache_bytes_estimate')}); peak above "
                         f"start {c.get('peak_allocated_delta_bytes')} (estimate "
                         f"{c.get('peak_allocated_delta_bytes_estimate')}) / {n.get('peak_allocated_delta_bytes')} "
                         f"bytes ({c.get('peak_allocated_source')})"
                         + (GUIDE if (c.get("prompt_len"), c.get("new_tokens"), c.get("batch_size")) == (55, 100, 1)
                            else ""))
    for r in ok:
        if r.get("use_cache") and r.get("decode_step_s") is not None and "frontier_probe" not in r:
            lines.append(f"INFO {_name(r)}: compiled={r.get('decode_compiled', '?')} compile_s="
                         f"{_fmt(r.get('compile_s'), 1, ' s')} step host {_fmt(r['decode_step_s'], 1e3, ' ms')}"
                         f" device {_fmt(r.get('decode_step_device_s'), 1e3, ' ms')} busy "
                         f"{_fmt(r.get('decode_device_busy_fraction'), 100, '%', 0)}; peak reserved "
                         f"{r.get('peak_reserved_bytes', '-')}")
    for r in ok:  # the energy meter's fields, where a kvbench with one wrote them
        energy = {k: v for k, v in r.items() if "energy" in k and v is not None}
        if energy:
            lines.append(f"INFO {_name(r)}: " + " ".join(f"{k}={v}" for k, v in sorted(energy.items())))
    return lines


def frontier_lines(run: Path, table_file: Path | None) -> list[str]:
    """The measured frontier beside the planner's prediction (`kvbench plan --compare-frontier`'s table), as INFO
    lines, and in full in `table_file`."""
    if not (run / "records.jsonl").is_file():
        return [f"INFO frontier: no frontier records in {run} (its step failed or was refused: see log.txt)"]
    from kvbench.plan.frontier import compare_frontier
    from kvbench.results.store import load_results

    table = compare_frontier(load_results(run))
    if table_file is not None:
        table_file.parent.mkdir(parents=True, exist_ok=True)
        table_file.write_text(table.to_string() + "\n", encoding="utf-8")
    return [f"INFO frontier B{r['batch_size']} under {r['memory_cap_bytes']} bytes: longest ran "
            f"{r['longest_ok_context']}, shortest OOM {r['shortest_oom_context']}, predicted "
            f"{r['predicted_longest_context']} (error {_fmt(r['prediction_error'], 100, '%', 1)}, within the bracket: "
            f"{r['prediction_within_bracket']})" for r in table.to_dict("records")]


LIVE_CHECKS = ("device-time", "kv-bytes-live", "peak-vs-estimate", "step-busy-live", "oom-recovered")


def live_checks(args) -> list[tuple[str, str, str]]:
    """The live checks on --model, loaded once; a check that breaks is a failed check, and the others still run."""
    from kvbench.measuring.loading.models import load_model

    def broken(exc):
        return "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    results = []
    try:
        results.append(("device-time", *live_device_time(args.device)))
    except Exception as exc:
        results.append(("device-time", *broken(exc)))
    try:
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    except Exception as exc:
        return results + [(name, *broken(exc)) for name in LIVE_CHECKS[1:]]
    try:
        results += live_scenario(loaded, args.prompt_len, args.new_tokens, args.batch_size)
    except Exception as exc:
        results += [(name, *broken(exc)) for name in LIVE_CHECKS[1:4]]
    try:
        results.append(("oom-recovered", *live_oom(loaded)))
    except Exception as exc:
        results.append(("oom-recovered", *broken(exc)))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", nargs="*", default=[], help="run folders or records.jsonl files")
    parser.add_argument("--live", action="store_true", help="also run the live checks on --model")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-len", type=int, default=1024, help="the live scenario's prompt")
    parser.add_argument("--new-tokens", type=int, default=16, help="the live scenario's new tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="the live scenario's batch")
    parser.add_argument("--env", action="store_true", help="print the environment facts of --device as JSON")
    parser.add_argument("--versions", action="store_true", help="print versions, tools and nvidia-smi's reports")
    parser.add_argument("--frontier", type=Path, help="a kvbench frontier run: measured against predicted (INFO)")
    parser.add_argument("--frontier-table", type=Path, help="write that comparison's full table here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.versions:
        print(versions(), flush=True)
        return 0
    if args.env:
        print(json.dumps(environment_facts(args.device), indent=1, default=str))
        return 0

    results = []
    if args.live:
        results += live_checks(args)
    missing = [p for p in args.records if not (Path(p) / "records.jsonl").exists() and not Path(p).is_file()]
    for path in missing:
        results.append(("records", "FAIL", f"{path}: no records.jsonl (its step failed?)"))
    records = read_records([p for p in args.records if p not in missing])
    if args.records:
        results.append(("kv-bytes", *check_kv_bytes(records)))
        results.append(("compile-recorded", *check_compile_recorded(records)))
        results.append(("step-busy", *check_step_busy(records)))
    for name, verdict, message in results:
        print(f"{verdict} {name}: {message}", flush=True)
    for line in info_lines(records):
        print(line)
    if args.frontier is not None:
        try:
            lines = frontier_lines(args.frontier, args.frontier_table)
        except Exception as exc:  # the comparison is information: its failure is said, and fails nothing
            lines = [f"INFO frontier: comparison failed: {type(exc).__name__}: {exc}"]
        print("\n".join(lines))
    return 1 if any(verdict == "FAIL" for _, verdict, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
