#!/usr/bin/env bash
# kiln's side of the GPU benchmark on the Llama-3.2-1B shape (bench/configs/llama-3.2-1b.json),
# then PyTorch's (torch_llama.py, eager and torch.compile), then one table of both with ratios.
#
# Run from the repository root on a machine with an sm_90 GPU, the CUDA driver and PyTorch, with
# a kiln binary built for it (`cargo build --release`, or KILN=path/to/kiln):
#   bench/gpu/llama_1b.sh                    # everything
#   PARTS=kiln bench/gpu/llama_1b.sh         # kiln's figures only (PARTS=torch: PyTorch's only;
#                                            # PARTS=compile: kiln's compile times only, no GPU)
#   ONLY=decode bench/gpu/llama_1b.sh        # decode figures only (ONLY=train: training only;
#                                            # ONLY=attention: the attention figure only)
#   PROFILE=1 …                              # also kiln's per-step GPU profile of each decode batch
#   DECODE_PRECISION=bf16-weights …          # kiln's decode with f32 activations (default bf16,
#                                            # as PyTorch's: bf16 weights and activations)
#   TRAIN_PRECISION=f32 …                    # kiln's training at f32 (default bf16, as PyTorch's
#                                            # autocast: bf16 matmuls, f32 master weights)
#   TRAIN_RECOMPUTE=layers …                 # kiln's recomputation (default a budget of 27GiB: the
#                                            # GPU memory in use stays under torch.compile's peak)
# Results: bench/results/gpu-llama-1b-DATE/{kiln-*.json,train.csv,torch.json} and the merged
# bench/results/gpu-llama-1b-DATE.json; the table is printed (bench/gpu/table.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
KILN=${KILN:-target/release/kiln}
TRAIN_RECOMPUTE=${TRAIN_RECOMPUTE:-27GiB}
PARTS=${PARTS:-kiln,torch}
ONLY=${ONLY:-all}
CONFIG=bench/configs/llama-3.2-1b.json
STAMP=${STAMP:-$(date -u +%Y-%m-%dT%H%M)}
OUT=bench/results/gpu-llama-1b-$STAMP
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

seconds() { # seconds COMMAND...: runs it, prints its wall time in seconds
  local start end
  start=$(date +%s.%N)
  "$@" > /dev/null 2>&1
  end=$(date +%s.%N)
  python3 -c "print(round($end - $start, 3))"
}

if [[ $PARTS == *kiln* || $PARTS == *compile* ]]; then
  # The artifacts: decode programs at bf16 (weights and activations), and the training step (bf16 matmuls, f32
  # master weights) recomputing as TRAIN_RECOMPUTE says (keeping every activation of 16 layers at
  # 8 × 2048 tokens would take 57 GiB beside the 18 GiB of weights and optimizer state).
  decode=$(seconds "$KILN" compile "$CONFIG" --target cuda --precision "${DECODE_PRECISION:-bf16}" \
    --programs prefill,decode --max-batch 16 --max-seq 192 -o "$WORK/decode.kiln")
  train=$(seconds "$KILN" compile "$CONFIG" --target cuda --programs train_step \
    --precision "${TRAIN_PRECISION:-bf16}" --max-batch 8 --max-seq 2048 --recompute "$TRAIN_RECOMPUTE" \
    -o "$WORK/train.kiln")
  python3 - "$OUT/kiln-compile.json" "$decode" "$train" <<'PY'
import json, sys, platform, os
json.dump({"host": platform.node(), "cpus": os.cpu_count(),
           "decode_programs_s": float(sys.argv[2]), "train_step_s": float(sys.argv[3])},
          open(sys.argv[1], "w"))
PY
fi

if [[ $PARTS == *kiln* && ($ONLY == all || $ONLY == decode) ]]; then
  # Decode: the same work as torch_llama.py's (16-token prompt, 128 greedy steps).
  for batch in 1 16; do
    "$KILN" bench "$WORK/decode.kiln" --device cuda --batch "$batch" --prompt-tokens 16 \
      --decode-tokens 128 --runs "${RUNS:-5}" --json > "$OUT/kiln-decode-b$batch.json"
    if [[ -n ${PROFILE:-} ]]; then
      "$KILN" bench "$WORK/decode.kiln" --device cuda --batch "$batch" --prompt-tokens 16 \
        --decode-tokens 32 --runs 1 --profile > "$OUT/kiln-profile-b$batch.md"
    fi
  done
fi

if [[ $PARTS == *kiln* && ($ONLY == all || $ONLY == attention) ]]; then
  # Attention: the same causal shape as PyTorch's SDPA figure (8 × 32 heads × 2048 × 64, bf16),
  # timed as the flash_attention steps of a bf16 prefill of 8 × 2048 tokens (GQA: 8 key/value
  # heads, the same work). attention_tflops.py turns the profile into TFLOP/s.
  "$KILN" compile "$CONFIG" --target cuda --precision bf16 --programs prefill,decode \
    --max-batch 8 --max-seq 2112 -o "$WORK/attention.kiln"
  "$KILN" bench "$WORK/attention.kiln" --device cuda --batch 8 --prompt-tokens 2048 \
    --decode-tokens 1 --runs 1 --profile > "$OUT/kiln-attention-profile.md"
  python3 bench/gpu/attention_tflops.py "$OUT/kiln-attention-profile.md" > "$OUT/kiln-attention.json"
fi

if [[ $PARTS == *kiln* && $ONLY != decode && $ONLY != attention ]]; then
  # Training: 8 × 2048 tokens of random ids, as the artifact above, at a constant rate.
  python3 - "$WORK/tokens.safetensors" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
ids = np.random.default_rng(0).integers(0, 128256, size=8 * 2049 * 8, dtype=np.int64)
save_file({"tokens": ids}, sys.argv[1])
PY
  "$KILN" train "$CONFIG" --device cuda --precision "${TRAIN_PRECISION:-bf16}" \
    --data "$WORK/tokens.safetensors" --batch 8 --seq 2048 \
    --steps "${TRAIN_STEPS:-4}" --constant-lr --lr 1e-4 --recompute "$TRAIN_RECOMPUTE" \
    --log "$OUT/train.csv" 2> "$OUT/train.log" || true
fi

if [[ $PARTS == *torch* ]]; then
  python3 bench/gpu/torch_llama.py --config "$CONFIG" --only "$ONLY" --out "$OUT/torch.json"
fi

python3 bench/gpu/table.py "$OUT" | tee "$OUT/table.md"
