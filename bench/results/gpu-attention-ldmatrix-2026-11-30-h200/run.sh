#!/usr/bin/env bash
# A/B of ldmatrix staging (new) against 79efc4c (old): training, attention figure, GPU suite.
set -uo pipefail
mkdir -p $OUT
C=bench/configs/llama-3.2-1b.json
python3 - /tmp/tokens.safetensors <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
ids = np.random.default_rng(0).integers(0, 128256, size=8 * 2049 * 8, dtype=np.int64)
save_file({"tokens": ids}, sys.argv[1])
PY
run() { # name binary extra...
  local name=$1 bin=$2; shift 2
  timeout 150 $bin train $C --device cuda --precision bf16 --data /tmp/tokens.safetensors --batch 8 --seq 2048 \
    --steps 3 --constant-lr --lr 1e-4 --recompute layers "$@" > /tmp/$name.log 2>&1
  echo "== $name rc=$? $(grep -E 'tokens/s' /tmp/$name.log)" | tee -a $OUT/train-ab.txt
}
for r in 1 2; do
  run old-r$r target/gpu/kiln-79efc4c --fused-attention
  run new-r$r target/gpu/kiln
done
run new-profile target/gpu/kiln --profile
sed -n '/train_step:/,$p' /tmp/new-profile.log > $OUT/new-profile.md; cat $OUT/new-profile.md | head -24
for v in old new; do
  bin=target/gpu/kiln; [ $v = old ] && bin=target/gpu/kiln-79efc4c
  STAMP=att-$v KILN=$bin ONLY=attention PARTS=kiln bash bench/gpu/llama_1b.sh > /tmp/att-$v.txt 2>&1
  echo "== attention $v: $(cat bench/results/gpu-llama-1b-att-$v/kiln-attention.json)" | tee -a $OUT/attention-ab.txt
done
cp bench/results/gpu-llama-1b-att-new/kiln-attention-profile.md $OUT/attention-profile-new.md
KILN_GPU=1 KILN_REPO=$PWD timeout 240 target/gpu/gpu_cuda --nocapture --test-threads 1 > $OUT/gpu-suite.log 2>&1
echo "== gpu suite rc=$?"; grep -E "test result|FAILED|panicked|within 2\^-8" $OUT/gpu-suite.log | head -30
