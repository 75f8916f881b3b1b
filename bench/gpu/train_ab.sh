#!/usr/bin/env bash
# Alternated A/B of two kiln binaries training the Llama-3.2-1B shape (8 × 2048 random tokens,
# bf16, recomputing as TRAIN_RECOMPUTE says — by default a budget of 27GiB, as llama_1b.sh —
# 4 steps per run), on a machine with an sm_90 GPU. Each run prints the
# median step after the first as tokens/s, every step's seconds, the intermediates and the GPU
# memory in use. Usage, from the repository root:
#   bench/gpu/train_ab.sh OLD_KILN NEW_KILN [ROUNDS] | tee train-ab.txt
set -uo pipefail
cd "$(dirname "$0")/../.."
old=$1 new=$2 rounds=${3:-2}
recompute=${TRAIN_RECOMPUTE:-27GiB}
config=bench/configs/llama-3.2-1b.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/tokens.safetensors" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
ids = np.random.default_rng(0).integers(0, 128256, size=8 * 2049 * 8, dtype=np.int64)
save_file({"tokens": ids}, sys.argv[1])
PY
run() { # name binary
  local name=$1 bin=$2
  timeout 150 "$bin" train "$config" --device cuda --precision bf16 --data "$work/tokens.safetensors" \
    --batch 8 --seq 2048 --steps 4 --constant-lr --lr 1e-4 --recompute "$recompute" \
    --log "$work/$name.csv" > "$work/$name.log" 2>&1
  local rc=$?
  local steps
  steps=$(python3 - "$work/$name.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
ends = [float(row["seconds"]) for row in rows]
steps = [b - a for a, b in zip([0.0] + ends, ends)]
print(round(16384 / statistics.median(steps[1:])), "tok/s steady; steps", [round(s, 3) for s in steps],
      "losses", [round(float(row["loss"]), 4) for row in rows])
PY
)
  echo "== $name rc=$rc $steps | $(grep -E 'intermediates' "$work/$name.log") | $(grep -E 'in use' "$work/$name.log")"
}
for r in $(seq 1 "$rounds"); do
  run "old-r$r" "$old"
  run "new-r$r" "$new"
done
