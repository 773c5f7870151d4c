"""The GPU acceptance self-check: PASS/FAIL lines over the records a run produced, and live checks on the device.

Over records (run folders or records.jsonl files given with --records):
  kv-bytes          every cached ok record: the KV bytes measured in the returned cache == kvbench's estimate
  compile-recorded  every static-cache ok record says whether decode ran compiled (`decode_compiled`), and says what
                    the compile setting implies: "on" compiled, "off" not, "auto" compiled on CUDA only

Live (--live, the model loaded once on --device):
  events-vs-wall    a generate timed by kvbench's Clock (CUDA events on a GPU) and by torch.cuda.synchronize +
                    perf_counter around it: medians within 2%
  oom-recovered     (CUDA) a real out-of-memory under torch.cuda.set_per_process_memory_fraction, with a huge
                    batch: the record's status is "oom", allocated and reserved memory are back to their level before
                    it, and the next scenario runs with the same peak as before the OOM

--env prints the environment facts as JSON instead: kvbench's env block, torch's view of the device, NVML's
memory (v2 where it exists), clocks and bus width, and a device-to-device copy bandwidth measured with torch.

INFO lines after the checks summarize the records (the seed scenario's speedup, KV bytes, peak memory, host vs device step).
Exit status 1 when any check fails.

    PYTHONPATH=src python tools/gpu_selfcheck.py --records RUN... [--live --model phi-3-mini-4k --device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from time import perf_counter

MIB = 2**20
CLOCK_TOLERANCE = 0.02


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


def compare_clocks(event_s: list[float], wall_s: list[float], tolerance: float = CLOCK_TOLERANCE) -> tuple[str, str]:
    """The median of the Clock's intervals against the median of the synchronized wall clock."""
    if not event_s or len(event_s) != len(wall_s) or min(event_s) <= 0:
        return "FAIL", f"no usable timings (clock {event_s}, wall {wall_s})"
    e, w = statistics.median(event_s), statistics.median(wall_s)
    gap = abs(e - w) / w
    verdict = "PASS" if gap <= tolerance else "FAIL"
    return verdict, f"clock {e * 1e3:.2f} ms vs synchronized wall {w * 1e3:.2f} ms: {gap:.2%} apart " \
                    f"(limit {tolerance:.0%}, medians of {len(event_s)})"


def live_clock(loaded, prompt_len: int, new_tokens: int, repeats: int = 5) -> tuple[str, str]:
    import torch

    from kvbench import Scenario
    from kvbench.measuring.clock import Clock
    from kvbench.measuring.models import synthetic_inputs

    scenario = Scenario(prompt_len, new_tokens)
    inputs = synthetic_inputs(loaded.config, 1, prompt_len, loaded.device)
    kwargs, clock = scenario.generate_kwargs(), Clock(loaded.device)
    cuda = loaded.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(loaded.device)

    events, walls = [], []
    with torch.inference_mode():
        loaded.model.generate(**inputs, **kwargs)  # warm-up
        for _ in range(repeats):
            sync()
            t0 = perf_counter()
            start = clock.mark()
            loaded.model.generate(**inputs, **kwargs)
            end = clock.mark()
            sync()
            walls.append(perf_counter() - t0)
            events.append(clock.intervals([start, end])[0])
    verdict, message = compare_clocks(events, walls)
    return verdict, f"{scenario.id} on {loaded.device} ({'CUDA events' if cuda else 'perf_counter'}): {message}"


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


def copy_bandwidth(device, nbytes: int, repeats: int = 20) -> dict:
    """A copy of `nbytes` random bytes into another buffer, timed (CUDA events on a GPU): bytes read + written / s."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()  # never time on zeros
    dst = torch.empty_like(src)
    cuda = device.type == "cuda"
    times = []
    for i in range(repeats + 3):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = perf_counter()
            dst.copy_(src)
            seconds = perf_counter() - t0
        if i >= 3:  # three warm-ups
            times.append(seconds)
    assert torch.equal(dst[:4096], src[:4096]) and torch.equal(dst[-4096:], src[-4096:])
    median = statistics.median(times)
    return {"copy_bytes": nbytes, "copy_repeats": repeats, "copy_median_s": median,
            "copy_bandwidth_gbps": 2 * nbytes / median / 1e9, "copy_timer": "CUDA events" if cuda else "perf_counter"}


def _fields(info, names) -> dict:
    return {name: int(getattr(info, name)) for name in names}


def nvml_facts(device) -> dict:
    """NVML's own figures for the device (matched by UUID, GPU- or MIG-), each read on its own."""
    import torch

    uuid = str(torch.cuda.get_device_properties(device).uuid)
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver
        return {"nvml": f"unavailable: {type(exc).__name__}: {exc}"}
    handle = None
    for candidate in ([uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]):
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(candidate)
            break
        except pynvml.NVMLError:
            continue
    if handle is None:
        return {"nvml": f"no NVML device with UUID {uuid}"}
    reads = {
        "nvml_driver": lambda: pynvml.nvmlSystemGetDriverVersion(),
        "nvml_name": lambda: pynvml.nvmlDeviceGetName(handle),
        "nvml_memory_v1": lambda: _fields(pynvml.nvmlDeviceGetMemoryInfo(handle), ("total", "used", "free")),
        "nvml_memory_v2": lambda: _fields(pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2),
                                          ("total", "reserved", "used", "free")),
        "nvml_max_memory_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "nvml_memory_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "nvml_max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "nvml_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "nvml_bus_width_bits": lambda: pynvml.nvmlDeviceGetMemoryBusWidth(handle),
        "nvml_power_limit_w": lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1e3,
    }
    out = {}
    for key, read in reads.items():
        try:
            value = read()
            out[key] = value.decode() if isinstance(value, bytes) else value
        except Exception as exc:  # NVMLError, or an nvidia-ml-py without the v2 call
            out[key] = f"unavailable: {type(exc).__name__}"
    clock, width = out.get("nvml_max_memory_clock_mhz"), out.get("nvml_bus_width_bits")
    if isinstance(clock, int) and isinstance(width, int):
        out["nvml_bandwidth_gbps"] = 2 * clock * 1e6 * width / 8 / 1e9
    return out


def environment_facts(device_name: str) -> dict:
    import platform

    import torch

    from kvbench.measuring.environment import environment
    from kvbench.measuring.models import resolve_device

    device = resolve_device(device_name)
    facts = {"python": platform.python_version(), "torch": str(torch.__version__), **environment(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        try:
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            bf16 = f"{torch.cuda.is_bf16_supported()} (emulation counted: no including_emulation argument)"
        free, total = torch.cuda.mem_get_info(device)
        facts.update(torch_device_name=props.name, torch_total_memory_bytes=props.total_memory,
                     torch_free_bytes=free, torch_mem_get_info_total_bytes=total,
                     compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                     bf16_native=bf16, cuda=torch.version.cuda, device_count=torch.cuda.device_count(),
                     **nvml_facts(device))
    facts.update(copy_bandwidth(device, 2 * 2**30 if device.type == "cuda" else 256 * MIB))
    return facts


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
                         f"start {c.get('peak_memory_delta_bytes')} / {n.get('peak_memory_delta_bytes')} bytes "
                         f"({c.get('peak_memory_source')})")
    for r in ok:
        if r.get("use_cache") and r.get("decode_step_s") is not None and "frontier_probe" not in r:
            lines.append(f"INFO {_name(r)}: compiled={r.get('decode_compiled', '?')} compile_s="
                         f"{_fmt(r.get('compile_s'), 1, ' s')} step host {_fmt(r['decode_step_s'], 1e3, ' ms')}"
                         f" device {_fmt(r.get('decode_step_device_s'), 1e3, ' ms')} busy "
                         f"{_fmt(r.get('decode_device_busy_fraction'), 100, '%', 0)}; peak reserved "
                         f"{r.get('peak_reserved_bytes', '-')}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", nargs="*", default=[], help="run folders or records.jsonl files")
    parser.add_argument("--live", action="store_true", help="also run the live checks on --model")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-len", type=int, default=128, help="the clock check's prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="the clock check's new tokens")
    parser.add_argument("--env", action="store_true", help="print the environment facts of --device as JSON")
    args = parser.parse_args(argv)
    if args.env:
        print(json.dumps(environment_facts(args.device), indent=1, default=str))
        return 0

    results = []
    missing = [p for p in args.records if not (Path(p) / "records.jsonl").exists() and not Path(p).is_file()]
    for path in missing:
        results.append(("records", "FAIL", f"{path}: no records.jsonl (its step failed?)"))
    records = read_records([p for p in args.records if p not in missing])
    results.append(("kv-bytes", *check_kv_bytes(records)))
    results.append(("compile-recorded", *check_compile_recorded(records)))
    if args.live:
        from kvbench.measuring.models import load_model

        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        for name, check in (("events-vs-wall", lambda: live_clock(loaded, args.prompt_len, args.new_tokens)),
                            ("oom-recovered", lambda: live_oom(loaded))):
            try:
                results.append((name, *check()))
            except Exception as exc:  # a check that breaks is a failed check, and the others still run
                results.append((name, "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    for name, verdict, message in results:
        print(f"{verdict} {name}: {message}", flush=True)
    for line in info_lines(records):
        print(line)
    return 1 if any(verdict == "FAIL" for _, verdict, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
