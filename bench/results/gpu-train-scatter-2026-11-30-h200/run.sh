#!/usr/bin/env bash
# A/B: the scatter kernel with a warp per span of rows (new) against 7acf03c (old).
set -uo pipefail
mkdir -p $OUT
C=bench/configs/llama-3.2-1b.json
python3 - /tmp/tokens.safetensors <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
ids = np.random.default_rng(0).integers(0, 128256, size=8 * 2049 * 8, dtype=np.int64)
save_file({"tokens": ids}, sys.argv[1])
PY
run() { # name binary
  local name=$1 bin=$2
  timeout 150 $bin train $C --device cuda --precision bf16 --data /tmp/tokens.safetensors --batch 8 --seq 2048 \
    --steps 4 --constant-lr --lr 1e-4 --recompute layers --log /tmp/$name.csv > /tmp/$name.log 2>&1
  local rc=$?
  local step=$(python3 -c "import csv,statistics;r=[float(x['seconds']) for x in csv.DictReader(open('/tmp/$name.csv'))];d=[b-a for a,b in zip([0]+r,r)];print(round(16384/statistics.median(d[1:])), 'tok/s steady; steps', [round(x,3) for x in d])")
  echo "== $name rc=$rc $step | $(grep -E 'intermediates' /tmp/$name.log) | $(grep -E 'in use' /tmp/$name.log)" | tee -a $OUT/train-ab.txt
}
for r in 1 2; do
  run old-r$r target/gpu/kiln-7acf03c
  run new-r$r target/gpu/kiln
done
KILN_GPU=1 KILN_REPO=$PWD timeout 300 target/gpu/gpu_cuda --nocapture --test-threads 1 > $OUT/gpu-suite.log 2>&1
echo "== gpu suite rc=$?"; grep -E "test result|FAILED|panicked" $OUT/gpu-suite.log | head
timeout 150 target/gpu/kiln train $C --device cuda --precision bf16 --data /tmp/tokens.safetensors --batch 8 --seq 2048 \
  --steps 2 --constant-lr --lr 1e-4 --recompute layers --profile > /tmp/profile.log 2>&1
sed -n '/train_step:/,$p' /tmp/profile.log > $OUT/new-profile.md; head -22 $OUT/new-profile.md
grep -E "scatter" /tmp/profile.log
