#!/usr/bin/env bash
# Training A/B on the Llama-3.2-1B shape: old binary, new binary, new binary with fused attention.
set -uo pipefail
mkdir -p $OUT
C=bench/configs/llama-3.2-1b.json
python3 - /tmp/tokens.safetensors <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
ids = np.random.default_rng(0).integers(0, 128256, size=8 * 2049 * 8, dtype=np.int64)
save_file({"tokens": ids}, sys.argv[1])
PY
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/machine.txt
run() { # name binary extra...
  local name=$1 bin=$2; shift 2
  timeout 150 $bin train $C --device cuda --precision bf16 --data /tmp/tokens.safetensors --batch 8 --seq 2048 \
    --steps 3 --constant-lr --lr 1e-4 --recompute layers "$@" > $OUT/$name.log 2>&1
  echo "== $name rc=$?"; grep -iE "tok|memory|step|loss" $OUT/$name.log | tail -6
}
for r in 1 2; do
  run old-r$r target/gpu/kiln-old
  run new-r$r target/gpu/kiln
  run fused-r$r target/gpu/kiln --fused-attention
done
run fused-profile target/gpu/kiln --fused-attention --profile
grep -iE "attention|total|matmul" $OUT/fused-profile.log | head -30
KILN_GPU=1 KILN_REPO=$PWD timeout 240 target/gpu/gpu_cuda --nocapture --test-threads 1 > $OUT/gpu-suite.log 2>&1
echo "== gpu suite rc=$?"; grep -E "test result|FAILED|panicked" $OUT/gpu-suite.log | head
