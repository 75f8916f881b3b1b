#!/usr/bin/env bash
# A/B: the recomputed forward attention writes its log-sum-exp (new) against 11370f1 (old).
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
  run old-r$r target/gpu/kiln-11370f1
  run new-r$r target/gpu/kiln
done
KILN_GPU=1 KILN_REPO=$PWD timeout 300 target/gpu/gpu_cuda --nocapture --test-threads 1 > $OUT/gpu-suite.log 2>&1
echo "== gpu suite rc=$?"; grep -E "test result|FAILED|panicked" $OUT/gpu-suite.log | head
S=2026-11-30-h200-train-lse; STAMP=$S KILN=target/gpu/kiln ONLY=train PARTS=kiln,torch timeout 300 bash bench/gpu/llama_1b.sh 2>&1 | tail -12
cp -r bench/results/gpu-llama-1b-$S $OUT/
