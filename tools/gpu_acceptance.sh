#!/usr/bin/env bash
# kvbench's GPU acceptance run: the first thing to run on a GPU machine. At most 6 minutes of work.
#
#   OUT=/some/folder PYTHON=python3 tools/gpu_acceptance.sh   # one CUDA GPU, each step a process of its own
#   OUT=/tmp/accept-out tools/gpu_acceptance.sh --cpu --separate
#                          # the dry run, the GPU's way: the same steps on the tiny preset, CPU, small sizes
#   OUT=/tmp/accept-out tools/gpu_acceptance.sh --cpu        # the dry run in one process (quicker)
#
# Runs kvbench from this checkout (PYTHONPATH=src), installs and downloads nothing, needs no git, and writes exactly
# these 8 files to $OUT (the run folders tarred, no deeper than two folders in $OUT):
#   env.txt          versions (Python, torch, transformers, ...), which git/gcc/nvcc, nvidia-smi's reports, then the
#                    environment facts: NVML's memory/clocks/bandwidth, a copy bandwidth measured with torch
#   selfcheck.txt    the live self-check (device time vs the Clock, KV bytes and peak allocated vs their estimates,
#                    profiled steps, a real OOM recovered), then the checks over every record written
#   study.tar.gz     the guide's scenario: phi-3-mini-4k fp16, P=55, N=100, B=1, cache on and off, 5 repeats
#   compile.tar.gz   one compiled shape (static and sliding_window, --compile off,auto, --profile-steps) and
#                    compile/compile.log (TORCH_LOGS: recompiles, graph breaks, CUDA graph hints)
#   sweep.tar.gz     a short dynamic sweep with --profile-steps (and the energy run: joules per token, cached and uncached)
#   frontier.tar.gz  kvbench frontier under a T4-sized cap (--memory-cap 14.75GiB) at B 1 and 8, and its table
#                    against the planner's prediction
#   log.txt          every step's command and output
#   summary.txt      one line per step (PASS / FAIL / TIMEOUT / SKIP, seconds, exit code), then the self-check
# Steps run most decisive first, each time-boxed; a failing step does not stop the others. The step limits add up
# to the budget (BUDGET_S, default 360 s on a GPU, 600 s with --cpu). Exit status: 0 when no step failed. PYTHON
# picks the interpreter (default python3). --steps=compile,records reruns only those steps, their limits
# stretched to fill the budget. The steps, commands and grids are in tools/gpu_acceptance.py.
set -uo pipefail
cd "$(dirname "$0")/.."

ARGS=()
for arg in "$@"; do
    case "$arg" in
        --cpu|--separate|--steps=*) ARGS+=("$arg") ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "gpu_acceptance.sh: unknown argument $arg (use --cpu, --separate, --steps=A,B or nothing)" >&2; exit 2 ;;
    esac
done
: "${OUT:?set OUT to the folder for the results}"
exec "${PYTHON:-python3}" tools/gpu_acceptance.py --out "$OUT" "${ARGS[@]}"
