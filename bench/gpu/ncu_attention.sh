#!/usr/bin/env bash
# Nsight Compute's full report of kiln's attention kernels on the Llama-3.2-1B shape, on a
# machine with an sm_90 GPU and the CUDA toolkit: the causal forward of a bf16 prefill of
# 8 × 2048 tokens (one warm launch), and a bf16 training step's attention kernels (the
# recomputed forward and the backward's, one launch each). Usage, from the repository root:
#   KILN=path/to/kiln bench/gpu/ncu_attention.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1
kiln=${KILN:-target/release/kiln}
config=bench/configs/llama-3.2-1b.json
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$kiln" compile "$config" --target cuda --precision bf16 --programs prefill,decode \
  --max-batch 8 --max-seq 2112 -o "$work/prefill.kiln" > /dev/null 2>&1
# The bench's warm-up run launches the 16 layers' attention first: skip it.
ncu --set full --kernel-name regex:attention_mma --launch-skip 16 --launch-count 1 \
  --import-source no -o "$out/forward" -f \
  "$kiln" bench "$work/prefill.kiln" --device cuda --batch 8 --prompt-tokens 2048 \
  --decode-tokens 1 --runs 1 > /dev/null
ncu -i "$out/forward.ncu-rep" --page details > "$out/forward.txt"
python3 - "$work/tokens.safetensors" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
ids = np.random.default_rng(0).integers(0, 128256, size=8 * 2049 * 2, dtype=np.int64)
save_file({"tokens": ids}, sys.argv[1])
PY
# A step's attention kernels in order: 16 forward, then per layer from the last the
# recomputed forward, the keys' and values' gradient, the queries'.
ncu --set full --kernel-name regex:attention --launch-skip 16 --launch-count 3 \
  --import-source no -o "$out/train" -f \
  "$kiln" train "$config" --device cuda --precision bf16 --data "$work/tokens.safetensors" \
  --batch 8 --seq 2048 --steps 1 --constant-lr --lr 1e-4 --recompute layers > /dev/null
ncu -i "$out/train.ncu-rep" --page details > "$out/train.txt"
