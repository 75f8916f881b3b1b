#!/usr/bin/env bash
# Peer benchmark for kiln: llama.cpp on the F32 or F16 GGUF of SmolLM2-135M-Instruct, CPU only.
#
# llama.cpp is the copy vendored in the llama-cpp-python source package on PyPI (fetched with
# pip, version pinned below), built once with cmake into target/bench/llama.cpp/build: Release,
# CPU backend only, no BLAS, -march=native (GGML_NATIVE), static. Later runs reuse the build.
#
#   bench/peers/llamacpp.sh build                 # fetch + build only
#   bench/peers/llamacpp.sh check [GGUF]      # greedy "The capital of France is" -> must say Paris
#   bench/peers/llamacpp.sh [bench] [GGUF]    # build if needed, then benchmark
#
# The benchmark is llama-bench's own: `llama-bench -m GGUF -p 128 -n 128 -t THREADS -r RUNS -o json`
# (pp128: one 128-token batch; tg128: 128 tokens generated one at a time, starting from an
# empty context). It prints one JSON line with the medians of llama-bench's per-repetition
# samples and the peak RSS of the llama-bench process (getrusage of the child):
#   {"peer":"llama.cpp F32 …","prefill_tokens_per_s":…,"decode_tokens_per_s":…,"peak_rss_bytes":…}
# (F32 or F16 after the GGUF's general.file_type). Environment: THREADS (default 2), RUNS
# (default 5). GGUF defaults to target/bench/smollm2-f32.gguf; bench/peers/convert_smollm2.py
# makes it and target/bench/smollm2-f16.gguf.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=$ROOT/target/bench
SRC=$BENCH/llama.cpp
BIN=$SRC/build/bin
THREADS=${THREADS:-2}
RUNS=${RUNS:-5}

cmd=bench
case "${1:-}" in
    build|check|bench) cmd=$1; shift ;;
esac
GGUF=${1:-$BENCH/smollm2-f32.gguf}

build() {
    if [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-simple" ]; then
        return
    fi
    mkdir -p "$BENCH/sdist"
    local sdist=$BENCH/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz
    if [ ! -f "$sdist" ]; then
        # Only this package from source; its build backend's own dependencies may be wheels.
        pip download --quiet --no-deps --no-binary llama-cpp-python -d "$BENCH/sdist" \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
    fi
    if [ ! -f "$SRC/CMakeLists.txt" ]; then
        local tmp
        tmp=$(mktemp -d "$BENCH/llama-cpp-python.XXXXXX")
        tar -xzf "$sdist" -C "$tmp"
        rm -rf "$SRC"
        mv "$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp" "$SRC"
        rm -rf "$tmp"
    fi
    command -v cmake >/dev/null || pip install --quiet cmake >&2
    nice -n 15 cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        >"$SRC/cmake.log" 2>&1 || { tail -30 "$SRC/cmake.log" >&2; exit 1; }
    echo "llamacpp.sh: building llama.cpp (log: $SRC/build.log)" >&2
    nice -n 15 cmake --build "$SRC/build" --config Release -j 1 --target llama-bench llama-simple \
        >"$SRC/build.log" 2>&1 || { tail -30 "$SRC/build.log" >&2; exit 1; }
}

check() {
    local out
    out=$("$BIN/llama-simple" -m "$GGUF" -n 8 "The capital of France is" 2>/dev/null)
    echo "llamacpp.sh: llama.cpp greedy continuation: ${out//$'\n'/ }" >&2
    case "$out" in
        *"The capital of France is Paris"*) ;;
        *) echo "llamacpp.sh: expected ' Paris' after the prompt" >&2; exit 1 ;;
    esac
}

bench() {
    python3 - "$BIN/llama-bench" "$GGUF" "$THREADS" "$RUNS" "$LLAMA_CPP_PYTHON_VERSION" "$SRC" <<'EOF'
import json, os, re, resource, statistics, subprocess, sys
from gguf import GGUFReader

exe, gguf, threads, runs, version, src = sys.argv[1:]
# The sdist has no git history, so llama-bench reports build 0 (unknown); ggml's version is
# the closest identification of the vendored sources.
ggml_cmake = open(os.path.join(src, "ggml", "CMakeLists.txt")).read()
ggml_version = ".".join(
    re.search(rf"set\(GGML_VERSION_{part} (\d+)\)", ggml_cmake).group(1)
    for part in ("MAJOR", "MINOR", "PATCH")
)
# The weights' type, from the file_type the converter wrote (ALL_F32 = 0, MOSTLY_F16 = 1).
file_type = int(GGUFReader(gguf).fields["general.file_type"].parts[-1][0])
weights = {0: "F32", 1: "F16"}.get(file_type, f"file type {file_type}")
cmd = [exe, "-m", gguf, "-p", "128", "-n", "128", "-t", threads, "-r", runs, "-o", "json"]
out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
tests = json.loads(out)
pp = next(t for t in tests if t["n_prompt"] > 0 and t["n_gen"] == 0)
tg = next(t for t in tests if t["n_gen"] > 0 and t["n_prompt"] == 0)
print(json.dumps({
    "peer": f"llama.cpp {weights} (llama-cpp-python {version})",
    "prefill_tokens_per_s": round(statistics.median(pp["samples_ts"]), 2),
    "decode_tokens_per_s": round(statistics.median(tg["samples_ts"]), 2),
    "peak_rss_bytes": peak,
    "threads": int(threads),
    "prompt_tokens": pp["n_prompt"],
    "decode_tokens": tg["n_gen"],
    "runs": len(pp["samples_ts"]),
    "prefill_samples": [round(x, 2) for x in pp["samples_ts"]],
    "decode_samples": [round(x, 2) for x in tg["samples_ts"]],
    "llama_cpp_build": f'{pp.get("build_number", "?")} ({pp.get("build_commit", "unknown")})',
    "ggml_version": ggml_version,
    "cpu_info": pp.get("cpu_info"),
    "command": " ".join(["llama-bench", "-m", os.path.basename(gguf)] + cmd[3:]),
    "note": "decode = llama-bench tg128, generated from an empty context",
}))
EOF
}

build
case $cmd in
    build) ;;
    check) check ;;
    bench) bench ;;
esac
