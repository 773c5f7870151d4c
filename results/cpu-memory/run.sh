#!/usr/bin/env bash
# The run behind results/cpu-memory: the allocated peak of generate (torch.profiler allocation events) against the
# planner's estimate, on small configs of several families, on this CPU (2 cores shared with other work: the
# timings of this run mean nothing, the bytes are deterministic). Run from the repository root.
set -euo pipefail
OUT=results/cpu-memory/runs
C=results/cpu-memory/configs
KV="kvbench run --device cpu --repeats 1 --warmup 0 --use-cache on --new-tokens 8"
$KV --model tiny --prompt-len 256 --batch-size 2 --cache-implementation dynamic,static --decoding greedy,beam --num-beams 2 --out $OUT/tiny
$KV --model tiny --prompt-len 128 --batch-size 1 --cache-implementation quantized --quant-backend fp8 --out $OUT/tiny-fp8
$KV --model $C/llama-gqa.json --prompt-len 2048 --batch-size 1 --out $OUT/llama-gqa-p2048
$KV --model $C/llama-gqa.json --prompt-len 128 --batch-size 8 --out $OUT/llama-gqa-b8
$KV --model $C/llama-gqa.json --dtype bfloat16 --prompt-len 512 --batch-size 2 --cache-implementation dynamic,static --decoding sample --out $OUT/llama-gqa-bf16
$KV --model $C/gpt2-mha.json --prompt-len 256 --batch-size 2 --out $OUT/gpt2-mha
$KV --model $C/mistral-sliding.json --prompt-len 768 --batch-size 1 --out $OUT/mistral-sliding
$KV --model $C/gemma2-alternating.json --prompt-len 768 --batch-size 1 --out $OUT/gemma2-alternating
$KV --model $C/deepseek-v3-mla-moe.json --prompt-len 256 --batch-size 2 --out $OUT/deepseek-v3-mla-moe
$KV --model $C/mixtral-moe.json --prompt-len 256 --batch-size 2 --out $OUT/mixtral-moe
kvbench env > results/cpu-memory/env.txt
kvbench report $OUT/* --out results/cpu-memory/report
