#!/usr/bin/env bash
# Alternated A/B of two kiln binaries decoding the Llama-3.2-1B shape on a machine with an sm_90
# GPU: each binary compiles its own bf16 prefill + decode artifact, then each round runs
# `kiln bench` (16-token prompt, 128 greedy steps, 3 runs, CUDA graphs) at batch 1 and 16 with
# one binary and then the other, and prints the decode tokens/s. Usage, from the repository root:
#   bench/gpu/decode_ab.sh OLD_KILN NEW_KILN [ROUNDS] | tee decode-ab.txt
set -uo pipefail
cd "$(dirname "$0")/../.."
old=$1 new=$2 rounds=${3:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for v in old new; do
  "${!v}" compile bench/configs/llama-3.2-1b.json --target cuda --precision bf16 \
    --programs prefill,decode --max-batch 16 --max-seq 192 -o "$work/$v.kiln" > /dev/null 2>&1
done
for r in $(seq 1 "$rounds"); do for b in 1 16; do for v in old new; do
  "${!v}" bench "$work/$v.kiln" --device cuda --batch "$b" --prompt-tokens 16 \
    --decode-tokens 128 --runs 3 --json > "$work/$v.json" 2> /dev/null
  echo "r$r b$b $v $(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["decode_tokens_per_s"], 1))' "$work/$v.json")"
done; done; done
