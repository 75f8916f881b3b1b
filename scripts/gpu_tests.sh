#!/usr/bin/env bash
# Builds the GPU test executable on any machine (no GPU or CUDA needed) into target/gpu/, and
# prints the command that runs it on a machine with an sm_90 GPU and the CUDA driver, from a copy
# of this repository (the tests read the fixtures under tests/fixtures/).
set -euo pipefail
cd "$(dirname "$0")/.."
exe=$(cargo test --release --test gpu_cuda --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_cuda":
        print(m["executable"])')
mkdir -p target/gpu
cp "$exe" target/gpu/gpu_cuda
strip target/gpu/gpu_cuda
cat <<MSG
Built target/gpu/gpu_cuda. On the GPU machine, in a copy of this repository with target/gpu/:
  KILN_GPU=1 KILN_REPO=\$PWD target/gpu/gpu_cuda --nocapture --test-threads 1 | tee tests/gpu/results/\$(date +%F)-gpu.log
and under compute-sanitizer (one fixture: prefill and decode steps):
  KILN_GPU=1 KILN_REPO=\$PWD KILN_GPU_CASES=llama compute-sanitizer --error-exitcode 1 target/gpu/gpu_cuda --nocapture --test-threads 1
MSG
