#!/usr/bin/env bash
# kvbench's GPU acceptance run: the first and only thing to run whenever a GPU is at hand.
#
#   OUT=/some/folder tools/gpu_acceptance.sh          # one CUDA GPU (about 8 minutes on an H200)
#   OUT=/tmp/accept-out tools/gpu_acceptance.sh --cpu # the dry run: the same steps on the tiny preset, CPU, small
#                                                     # sizes, in one process (about 40 s on 2 shared cores)
#   add --separate to the dry run to run each step in a process of its own, as on a GPU
#
# Runs kvbench from this checkout (PYTHONPATH=src), downloads nothing, and writes exactly these 8 files to $OUT:
#   env.txt          (a) nvidia-smi, GPU, driver, NVML memory/clocks/bandwidth, a copy bandwidth measured with torch,
#                        kvbench's env block
#   study.tar.gz     (b) the original study: phi-3-mini-4k fp16, P=55, N=100, B=1, cache on/off, 5 repeats
#   sweep.tar.gz     (c) P 128/1024/3500 x B 1/16 x dynamic/static, --compile auto, --profile-steps; and static with
#                        --compile off (compiled vs eager side by side)
#   frontier.tar.gz  (d) kvbench frontier under a T4-sized cap (--memory-cap 14.75GiB)
#   bench.tar.gz     (e) pytest bench --benchmark-only on the device (bench.json)
#   selfcheck.txt    (f) tools/gpu_selfcheck.py: PASS/FAIL for KV bytes, events vs wall clock, OOM recovery, compile
#   log.txt          every step's command and output
#   summary.txt      one line per step (PASS / FAIL / TIMEOUT / SKIP, seconds, exit code), then the self-check
# Each step is time-boxed, a failing step does not stop the others, and the whole run keeps to a budget (BUDGET_S,
# default 510 s on a GPU, 120 s with --cpu). Exit status: 0 when no step failed. PYTHON picks the interpreter
# (default python3). The steps, their commands and grids are in tools/gpu_acceptance.py, which this script runs.
set -uo pipefail
cd "$(dirname "$0")/.."

ARGS=()
for arg in "$@"; do
    case "$arg" in
        --cpu|--separate) ARGS+=("$arg") ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "gpu_acceptance.sh: unknown argument $arg (use --cpu, --cpu --separate or nothing)" >&2; exit 2 ;;
    esac
done
: "${OUT:?set OUT to the folder for the results}"
exec "${PYTHON:-python3}" tools/gpu_acceptance.py --out "$OUT" "${ARGS[@]}"
