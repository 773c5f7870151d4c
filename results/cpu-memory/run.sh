#!/usr/bin/env bash
# The run behind results/cpu-memory: the allocated peak of generate (torch.profiler allocation events) against the
# planner's estimate, on small configs of several families, on this CPU. Run from the repository root.
set -euo pipefail
OUT=results/cpu-memory/runs
C=results/cpu-memory/configs
KV="kvbench run --device cpu --repeats 1 --warmup 0 --use-cache on --new-tokens 16"
$KV --model tiny --prompt-len 256 --batch-size 4 --cache-implementation dynamic,static --decoding greedy,sample,beam --num-beams 2 --out $OUT/tiny
$KV --model tiny --prompt-len 256 --batch-size 1 --cache-implementation quantized --quant-backend fp8 --out $OUT/tiny-fp8
$KV --model $C/llama-gqa.json --prompt-len 128,2048 --batch-size 1,8 --out $OUT/llama-gqa
$KV --model $C/llama-gqa.json --dtype bfloat16 --prompt-len 1024 --batch-size 2 --cache-implementation dynamic,static --out $OUT/llama-gqa-bf16
$KV --model $C/gpt2-mha.json --prompt-len 512 --batch-size 4 --out $OUT/gpt2-mha
$KV --model $C/mistral-sliding.json --prompt-len 1024 --batch-size 2 --cache-implementation dynamic,static --out $OUT/mistral-sliding
$KV --model $C/gemma2-alternating.json --prompt-len 1024 --batch-size 2 --out $OUT/gemma2-alternating
$KV --model $C/deepseek-v3-mla-moe.json --prompt-len 512 --batch-size 2 --out $OUT/deepseek-v3-mla-moe
$KV --model $C/mixtral-moe.json --prompt-len 512 --batch-size 2 --out $OUT/mixtral-moe
kvbench env > results/cpu-memory/env.txt
kvbench report $OUT/* --out results/cpu-memory/report
