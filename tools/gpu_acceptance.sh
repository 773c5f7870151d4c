#!/usr/bin/env bash
# kvbench's GPU acceptance run: the first and only thing to run whenever a GPU is at hand.
#
#   OUT=/some/folder tools/gpu_acceptance.sh          # one CUDA GPU (about 8 minutes on an H200)
#   OUT=/tmp/accept-out tools/gpu_acceptance.sh --cpu # the same steps on the tiny preset, CPU, small sizes
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
# Each step is time-boxed (`timeout`), a failing step does not stop the others, and the whole run keeps to a budget
# (BUDGET_S, default 510 s on a GPU, 120 s with --cpu). Exit status: 0 when no step failed.
# PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

CPU=0
for arg in "$@"; do
    case "$arg" in
        --cpu) CPU=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_acceptance.sh: unknown argument $arg (use --cpu or nothing)" >&2; exit 2 ;;
    esac
done
: "${OUT:?set OUT to the folder for the results}"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvbench-accept.XXXXXX")
LOG="$OUT/log.txt" SUMMARY="$OUT/summary.txt"
: > "$LOG"
: > "$SUMMARY"

if [ "$CPU" = 1 ]; then
    MODEL=tiny DEVICE=cpu DTYPE=float32 BUDGET_S=${BUDGET_S:-120}
    STUDY=(--prompt-len 55 --new-tokens 8 --batch-size 1 --repeats 2 --warmup 1)
    SWEEP=(--prompt-len 16,64 --new-tokens 8 --batch-size 1,2 --repeats 1 --warmup 1)
    BENCH=(--kv-prompt-len 16 --kv-new-tokens 8 --kv-batch-size 1 --kv-rounds 1 --kv-warmup-rounds 0)
    LIVE=(--prompt-len 32 --new-tokens 8)
else
    MODEL=phi-3-mini-4k DEVICE=cuda DTYPE=float16 BUDGET_S=${BUDGET_S:-510}
    STUDY=(--prompt-len 55 --new-tokens 100 --batch-size 1 --repeats 5 --warmup 1)
    SWEEP=(--prompt-len 128,1024,3500 --new-tokens 16 --batch-size 1,16 --repeats 2 --warmup 1)
    BENCH=(--kv-prompt-len 64 --kv-rounds 3 --kv-warmup-rounds 1)
    LIVE=(--prompt-len 128 --new-tokens 32)
fi
KV=(--model "$MODEL" --device "$DEVICE" --dtype "$DTYPE")
START=$(date +%s)
FAILED=0

note() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S COMMAND...: run with a time box, append its output to the log, one summary line.
# Sets RC (124 or 137: timed out) for callers that judge the result themselves (see verdict).
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 15 ]; then
        RC=-1 SECS=0
        echo "=== $name: not run, ${left}s left of the ${BUDGET_S}s budget" >> "$LOG"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s): $*" >> "$LOG"
    local t0=$SECONDS
    timeout --kill-after=15 "$limit" "$@" >> "$LOG" 2>&1
    RC=$?
    SECS=$((SECONDS - t0))
    echo "=== $name: exit $RC after ${SECS}s" >> "$LOG"
}

# verdict NAME [SKIP-REASON]: the summary line of the step just run.
verdict() {
    local name=$1 skip=${2:-} status
    case "$RC" in
        0) status=PASS ;;
        -1) status=FAIL skip="not run: the ${BUDGET_S}s budget was spent" ;;
        124|137) status=TIMEOUT ;;
        *) status=FAIL ;;
    esac
    if [ -n "$skip" ] && [ "$status" = FAIL ] && [ "$RC" != -1 ]; then status=SKIP; fi
    [ "$status" = FAIL ] || [ "$status" = TIMEOUT ] && FAILED=1
    note "$(printf '%-9s %-8s %4ss  exit %-4s %s' "$name" "$status" "$SECS" "$RC" "$skip")"
}

note "kvbench acceptance: $MODEL on $DEVICE in $DTYPE, budget ${BUDGET_S}s, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
# The interface this script drives; a flag missing here makes its step fail (loudly, in log.txt), never skip.
missing=""
run_help=$("$PY" -m kvbench run --help 2>&1)
for flag in --compile --profile-steps; do
    grep -q -- "$flag" <<< "$run_help" || missing="$missing $flag"
done
[ -n "$missing" ] && note "MISSING kvbench run flags on this checkout:$missing (the sweep step will fail)"

# (a) environment facts
step env 90 bash -c '
    { if command -v nvidia-smi >/dev/null; then nvidia-smi && nvidia-smi -q -d MEMORY,CLOCK,POWER,PERFORMANCE,COMPUTE
      else echo "nvidia-smi: not on this machine"; [ "$0" = cpu ]; fi; } > "$1/env.txt" 2>&1 || exit 1
    printf "\n--- tools/gpu_selfcheck.py --env --device %s\n" "$0" >> "$1/env.txt"
    "$2" tools/gpu_selfcheck.py --env --device "$0" >> "$1/env.txt" 2>&1' "$DEVICE" "$OUT" "$PY"
verdict env

# (b) the original study's scenario, cache on and off
step study 150 "$PY" -m kvbench run "${KV[@]}" "${STUDY[@]}" --use-cache both --out "$WORK/study"
verdict study

# (c) the sweep: dynamic and static with transformers' own compile choice, and static eager beside it
step sweep 240 "$PY" -m kvbench run "${KV[@]}" "${SWEEP[@]}" --use-cache on --cache-implementation dynamic,static \
    --compile auto --profile-steps --out "$WORK/sweep/auto"
verdict sweep
step sweep-off 100 "$PY" -m kvbench run "${KV[@]}" "${SWEEP[@]}" --use-cache on --cache-implementation static \
    --compile off --profile-steps --out "$WORK/sweep/static-off"
verdict sweep-off

# (d) the out-of-memory frontier under a T4-sized cap (CUDA only: on the CPU the command refuses, and says why)
step frontier 120 "$PY" -m kvbench frontier --model "$MODEL" --dtype "$DTYPE" --memory-cap 14.75GiB \
    --out "$WORK/frontier"
if [ "$CPU" = 1 ] && [ "$RC" = 2 ] && tail -n 5 "$LOG" | grep -q "CUDA GPU"; then
    verdict frontier "needs CUDA (kvbench frontier refuses on the CPU: see log.txt)"
else
    verdict frontier
fi

# (f) the self-check over the records so far, and its live checks on the device
# (the frontier's records only where it can run: on the CPU it refuses by design, reported above as SKIP)
if [ "$CPU" = 1 ]; then export FRONTIER_RECORDS=""; else export FRONTIER_RECORDS="$WORK/frontier"; fi
step selfcheck 120 bash -c 'set -o pipefail; "$0" tools/gpu_selfcheck.py --records "$1/study" "$1/sweep/auto" "$1/sweep/static-off" \
    ${FRONTIER_RECORDS:+"$FRONTIER_RECORDS"} --live "${@:3}" | tee "$2/selfcheck.txt"' "$PY" "$WORK" "$OUT" "${KV[@]}" "${LIVE[@]}"
verdict selfcheck

# (e) the benchmark suites on the device
mkdir -p "$WORK/bench"
step bench 180 "$PY" -m pytest bench --benchmark-only -q -p no:cacheprovider --kv-device "$DEVICE" \
    --kv-model "$MODEL" --kv-dtype "$DTYPE" "${BENCH[@]}" --benchmark-json "$WORK/bench/bench.json"
verdict bench

# The run folders, one archive per step; a step that wrote nothing leaves a note saying so.
for part in study sweep frontier bench; do
    if [ ! -d "$WORK/$part" ] || [ -z "$(ls -A "$WORK/$part")" ]; then
        mkdir -p "$WORK/$part"
        echo "the $part step wrote nothing: see log.txt" > "$WORK/$part/NOTHING-WRITTEN.txt"
    fi
    tar -czf "$OUT/$part.tar.gz" -C "$WORK" "$part"
done
[ -f "$OUT/selfcheck.txt" ] || echo "the self-check did not run: see log.txt" > "$OUT/selfcheck.txt"
[ -f "$OUT/env.txt" ] || echo "the env step did not run: see log.txt" > "$OUT/env.txt"
rm -rf "$WORK"

note "total $((SECONDS))s; $( [ "$FAILED" = 0 ] && echo 'no step failed' || echo 'SOME STEPS FAILED') -> $OUT"
note "--- self-check"
cat "$OUT/selfcheck.txt" >> "$SUMMARY"
cat "$OUT/selfcheck.txt"
exit "$FAILED"
