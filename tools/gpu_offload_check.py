"""GPU check of the offloaded caches: phi-3-mini-4k in float16, dynamic / offloaded / static / offloaded_static,
measured bytes by device against the estimate (kvbench.estimate.offload), and the pinned-host peak beside the GPU
peak. Writes a run folder (records.jsonl) and prints PASS / FAIL per scenario; exits 1 on any mismatch.

Usage (on a CUDA machine, from the repository root):
  PYTHONPATH=src python tools/gpu_offload_check.py --out results/gpu-offloaded-phi3 [--model phi-3-mini-4k]
"""

from __future__ import annotations

import argparse
import sys

import torch

from kvbench import Scenario, load_model, run_sweep
from kvbench.results.cache_fields import by_device, by_kind
from kvbench.units import fmt_bytes

IMPLEMENTATIONS = ("dynamic", "offloaded", "static", "offloaded_static")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="phi-3-mini-4k")
    parser.add_argument("--prompt-len", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA: offloaded caches copy layers between the GPU and pinned host memory")
        return 2
    loaded = load_model(args.model, device="cuda", dtype="float16")
    scenarios = [Scenario(p, args.new_tokens, 1, True, impl) for p in args.prompt_len for impl in IMPLEMENTATIONS]
    records = run_sweep(loaded, scenarios, args.out, repeats=args.repeats, warmup=1)
    failed = 0
    for r in records:
        measured, estimated = by_device(r), by_device(r, estimate=True)
        ok = r["status"] == "ok" and measured == estimated and by_kind(r) == by_kind(r, estimate=True)
        failed += not ok
        host = r.get("pinned_host_peak_delta_bytes")
        print(f"{'PASS' if ok else 'FAIL'} {r['scenario_id']:45s} {r.get('cache_class')}: measured "
              f"{ {k: fmt_bytes(v) for k, v in measured.items()} } estimated { {k: fmt_bytes(v) for k, v in estimated.items()} }"
              f" GPU peak +{fmt_bytes(r.get('peak_allocated_delta_bytes'))} pinned host peak +{fmt_bytes(host)}"
              f"{'' if r['status'] == 'ok' else ' ' + str(r.get('error'))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
