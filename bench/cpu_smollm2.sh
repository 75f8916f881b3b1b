#!/usr/bin/env bash
# kiln's CPU benchmark: SmolLM2-135M-Instruct, THREADS threads (default 2), prefill of a
# 128-token prompt and 128 greedy decode steps, tokens/s (median of RUNS runs, default 5) and
# peak memory, for kiln and two peers on the same weights:
#   kiln             each of KILN_VARIANTS (default: f32 weights with the standard pipeline, f32
#                    without the fusion passes, bf16 weights with the standard pipeline)
#   candle 0.11      candle_transformers' llama on an f32 safetensors copy (bench/peers/candle)
#   llama.cpp        llama-bench on an F32 and on an F16 GGUF copy (bench/peers/llamacpp.sh)
# plus this machine's memory bandwidth (bench/peers/bandwidth.c), the ceiling for decode, which
# reads all weights (~540 MB in f32, ~270 MB in 16 bits) once per token.
#
#   bench/cpu_smollm2.sh              # everything
#   bench/cpu_smollm2.sh --peers-only # skip kiln
#
# Steps (downloads and builds are cached under target/, so reruns only measure):
#   1. scripts/fetch_smollm2.sh fetches the Q4_1/Q8_0 GGUF into target/models
#   2. bench/peers/convert_smollm2.py dequantizes it to target/bench/smollm2-f32/ (safetensors),
#      target/bench/smollm2-f32.gguf and target/bench/smollm2-f16.gguf
#   3. builds the bandwidth probe, candle peer and llama.cpp; checks that the peers continue
#      "The capital of France is" with " Paris"
#   4. runs bandwidth, candle, llama.cpp F32 and F16, then for each kiln variant NAME:FLAGS
#      (FLAGS joined by `+`):
#        target/release/kiln compile GGUF --target cpu -o target/bench/smollm2-NAME.kiln FLAGS \
#            --programs prefill,decode
#        target/release/kiln bench target/bench/smollm2-NAME.kiln --weights GGUF \
#            --prompt-tokens 128 --decode-tokens 128 --runs RUNS --threads THREADS --json
#      (a failing kiln step is recorded as an error row; the others are still reported)
#   5. writes bench/results/cpu-smollm2-YYYY-MM-DDTHHMM.json (machine, versions, bandwidth, rows) and
#      prints a markdown table with kiln's ratios to each peer and to the bandwidth limit.
# With 2 threads on 2 cores any other work preempts the benchmark's threads, and llama.cpp's
# spinning thread barriers then collapse (10x slower decode was seen beside a parallel build).
# So each measurement first waits (up to WAIT_IDLE_S seconds in all, default 1800) until other
# processes use at most IDLE_BUSY_PCT percent (default 10) of the CPUs over 2 s, and is taken
# again (up to ATTEMPTS times, default 3) while other processes used more than that during it
# (all CPU time spent minus the measured command's own). The share of the CPUs that other
# processes took during the kept measurement is recorded with its row (cpu_other_pct).
# Environment: THREADS, RUNS, WAIT_IDLE_S, IDLE_BUSY_PCT, ATTEMPTS, KILN_WEIGHTS (GGUF that kiln
# compiles and loads; default the fetched Q4_1 GGUF, which kiln dequantizes at load),
# KILN_VARIANTS (space-separated NAME:FLAGS). Builds run under `nice -n 15` with one job.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH=$ROOT/target/bench
ROWS=$BENCH/rows
THREADS=${THREADS:-2}
RUNS=${RUNS:-5}
PEERS_ONLY=0
[ "${1:-}" = "--peers-only" ] && PEERS_ONLY=1
mkdir -p "$BENCH" "$ROWS"
rm -f "$ROWS"/*
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

WAIT_IDLE_S=${WAIT_IDLE_S:-1800}
IDLE_BUSY_PCT=${IDLE_BUSY_PCT:-10}
ATTEMPTS=${ATTEMPTS:-3}
IDLE_DEADLINE=$((SECONDS + WAIT_IDLE_S))

log() { echo "cpu_smollm2.sh: $*" >&2; }

# Percent of all CPUs' time spent busy (not idle or waiting for I/O) over 2 seconds.
cpu_busy_pct() {
    local a b total=0 idle i
    read -ra a < <(head -1 /proc/stat)
    sleep 2
    read -ra b < <(head -1 /proc/stat)
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}

# Waits until the machine is idle enough to measure NAME, or until the waiting time is spent.
wait_idle() {
    local name=$1 busy
    while :; do
        busy=$(cpu_busy_pct)
        [ "$busy" -le "$IDLE_BUSY_PCT" ] && return
        if [ "$SECONDS" -ge "$IDLE_DEADLINE" ]; then
            log "warning: other work uses ${busy}% of the CPUs; measuring $name anyway"
            return
        fi
        log "other work uses ${busy}% of the CPUs; waiting to measure $name"
        sleep 20
    done
}

# Runs CMD with its stdout to OUT and prints the percent of all CPUs' time that other processes
# used meanwhile: CPU time spent on the machine (/proc/stat) minus CMD's own (its rusage).
OTHER_CPU_PY='
import os, resource, subprocess, sys, time
def busy_s():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
out, cmd = sys.argv[1], sys.argv[2:]
b0, t0 = busy_s(), time.monotonic()
with open(out, "w") as f:
    rc = subprocess.run(cmd, stdout=f).returncode
b1, t1 = busy_s(), time.monotonic()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
other = max(0.0, (b1 - b0) - ru.ru_utime - ru.ru_stime) / ((t1 - t0) * os.cpu_count())
print(round(100 * other))
sys.exit(rc)
'

# measure NAME CMD...: waits for an idle machine, runs CMD, and takes it again while other
# processes took more than IDLE_BUSY_PCT% of the CPUs during it. Leaves CMD's output in
# $ROWS/NAME.out and that share in $ROWS/NAME.other. Fails when CMD fails.
measure() {
    local name=$1 attempt other
    shift
    for attempt in $(seq 1 "$ATTEMPTS"); do
        wait_idle "$name"
        other=$(python3 -c "$OTHER_CPU_PY" "$ROWS/$name.out" "$@") || return 1
        echo "$other" >"$ROWS/$name.other"
        [ "$other" -le "$IDLE_BUSY_PCT" ] && return
        log "other processes took ${other}% of the CPUs during $name (attempt $attempt of $ATTEMPTS)"
    done
}

# 1-2. Model and f32 copies.
GGUF=$(scripts/fetch_smollm2.sh)
KILN_WEIGHTS=${KILN_WEIGHTS:-$GGUF}
KILN_VARIANTS=${KILN_VARIANTS:-"f32: f32-unfused:--skip-passes+attention-fusion,elementwise-fusion bf16-weights:--precision+bf16-weights"}
python3 -c 'import gguf, numpy, safetensors, tokenizers' 2>/dev/null ||
    pip install --quiet gguf==0.19.0 numpy safetensors tokenizers >&2
nice -n 15 python3 bench/peers/convert_smollm2.py convert "$GGUF" "$BENCH"
HF_DIR=$BENCH/smollm2-f32
F32_GGUF=$BENCH/smollm2-f32.gguf

# 3. Builds and correctness checks.
log "building peers"
nice -n 15 gcc -O3 -march=native -fopenmp -o "$BENCH/bandwidth" bench/peers/bandwidth.c
CANDLE_BIN=$BENCH/candle-target/release/candle-bench
(cd bench/peers/candle &&
    CARGO_TARGET_DIR=$BENCH/candle-target nice -n 15 cargo build --release --locked -j 1 --quiet)
bench/peers/llamacpp.sh build

TOKENIZER=$HF_DIR/tokenizer.json
PROMPT_IDS=$(python3 bench/peers/convert_smollm2.py encode "$TOKENIZER" "The capital of France is")
CANDLE_OUT=$("$CANDLE_BIN" --model-dir "$HF_DIR" --prompt-ids "$PROMPT_IDS" --generate 8)
CANDLE_TEXT=$(python3 bench/peers/convert_smollm2.py decode "$TOKENIZER" "$CANDLE_OUT")
log "candle greedy continuation: The capital of France is$CANDLE_TEXT"
case "$CANDLE_TEXT" in
    " Paris"*) ;;
    *) log "candle's continuation does not start with ' Paris': the f32 safetensors are wrong"; exit 1 ;;
esac
bench/peers/llamacpp.sh check "$F32_GGUF"
bench/peers/llamacpp.sh check "$BENCH/smollm2-f16.gguf"

# 4. Measurements.
# The VM's memory bandwidth varies with its neighbours (23-33 GB/s seen within an hour), so it
# is measured before and after the other measurements, and the higher one is the limit.
log "memory bandwidth"
measure bandwidth-before "$BENCH/bandwidth" "$THREADS"
cat "$ROWS/bandwidth-before.out"
log "candle ($RUNS runs)"
measure 1-candle "$CANDLE_BIN" --model-dir "$HF_DIR" --prompt-tokens 128 --decode-tokens 128 \
    --runs "$RUNS" --threads "$THREADS"
cp "$ROWS/1-candle.out" "$ROWS/1-candle.json"
cat "$ROWS/1-candle.json"
for weights in f32 f16; do
    log "llama.cpp $weights ($RUNS runs)"
    measure "2-llamacpp-$weights" env THREADS="$THREADS" RUNS="$RUNS" bench/peers/llamacpp.sh \
        bench "$BENCH/smollm2-$weights.gguf"
    cp "$ROWS/2-llamacpp-$weights.out" "$ROWS/2-llamacpp-$weights.json"
    cat "$ROWS/2-llamacpp-$weights.json"
done

# The first "error:" line of a log, else its last line.
first_error() { grep -m1 'error:' "$1" || tail -1 "$1"; }
kiln_error() {
    python3 -c 'import json, sys; print(json.dumps({"peer": sys.argv[1], "error": sys.argv[2]}))' \
        "kiln $1" "$2" >"$ROWS/0-kiln-$1.json"
    log "kiln $1: $2"
}
if [ "$PEERS_ONLY" = 0 ]; then
    if ! nice -n 15 cargo build --release -j 1 --quiet --bin kiln 2>"$BENCH/kiln-build.log"; then
        for variant in $KILN_VARIANTS; do
            kiln_error "${variant%%:*}" "cargo build --release failed (target/bench/kiln-build.log)"
        done
        KILN_VARIANTS=
    fi
    for variant in $KILN_VARIANTS; do
        name=${variant%%:*}
        flags=${variant#*:}
        log "kiln $name ($RUNS runs; compile flags: ${flags//+/ })"
        ARTIFACT=$BENCH/smollm2-$name.kiln
        # shellcheck disable=SC2086 # the flags are words
        if ! target/release/kiln compile "$KILN_WEIGHTS" --target cpu -o "$ARTIFACT" ${flags//+/ } \
                --programs prefill,decode >"$BENCH/kiln-compile-$name.log" 2>&1; then
            kiln_error "$name" "kiln compile failed: $(first_error "$BENCH/kiln-compile-$name.log")"
        elif ! measure "0-kiln-$name" target/release/kiln bench "$ARTIFACT" --weights "$KILN_WEIGHTS" \
                --prompt-tokens 128 --decode-tokens 128 --runs "$RUNS" --threads "$THREADS" --json \
                2>"$BENCH/kiln-bench-$name.log"; then
            kiln_error "$name" "kiln bench failed: $(first_error "$BENCH/kiln-bench-$name.log")"
        else
            # The last JSON object line is the result.
            line=$(grep '^{' "$ROWS/0-kiln-$name.out" | tail -1 || true)
            if ! echo "$line" | python3 -c 'import json, sys; r = json.load(sys.stdin)
r["peer"] = "kiln " + sys.argv[1]; r["compile_flags"] = sys.argv[2]
for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes"): r[k] + 0
print(json.dumps(r))' "$name" "${flags//+/ }" >"$ROWS/0-kiln-$name.json" 2>/dev/null; then
                kiln_error "$name" "kiln bench printed no JSON row with the expected fields"
            fi
            cat "$ROWS/0-kiln-$name.json"
        fi
    done
fi

log "memory bandwidth again"
measure bandwidth-after "$BENCH/bandwidth" "$THREADS"
cat "$ROWS/bandwidth-after.out"

# 5. Results file and table.
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$ROOT" "$BENCH" "$F32_GGUF" "$THREADS" "$RUNS" "$LOAD_BEFORE" "$LOAD_AFTER" <<'EOF'
import datetime, glob, json, os, platform, re, subprocess, sys

root, bench, f32_gguf, threads, runs, load_before, load_after = sys.argv[1:]

def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=root).stdout.strip()
    except OSError:
        return None

cpuinfo = open("/proc/cpuinfo").read()
field = lambda k: (re.search(rf"^{k}\s*:\s*(.*)$", cpuinfo, re.M) or [None, None])[1]
flags = (field("flags") or "").split()
meminfo = open("/proc/meminfo").read()
mem_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
lock = open(os.path.join(root, "bench/peers/candle/Cargo.lock")).read()
candle_version = re.search(r'name = "candle-core"\nversion = "([^"]+)"', lock).group(1)

import gguf
weight_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(f32_gguf).tensors)
half_gguf = f32_gguf.replace("-f32.gguf", "-f16.gguf")
half_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(half_gguf).tensors)

def row_weight_bytes(row):
    """Bytes of weights one decode step reads: the 16-bit copies for bf16 / F16 rows."""
    return half_bytes if ("bf16" in row["peer"] or "F16" in row["peer"]) else weight_bytes
def other_cpu(name):
    try:
        return int(open(os.path.join(bench, "rows", name + ".other")).read())
    except (OSError, ValueError):
        return None

def bandwidth_run(name):
    b = json.load(open(os.path.join(bench, "rows", name + ".out")))
    b["cpu_other_pct"] = other_cpu(name)
    return b

before, after = bandwidth_run("bandwidth-before"), bandwidth_run("bandwidth-after")
bandwidth = {
    "bandwidth_gb_s": max(before["bandwidth_gb_s"], after["bandwidth_gb_s"]),
    "lowest_gb_s": min(before["bandwidth_gb_s"], after["bandwidth_gb_s"]),
    "method": "bench/peers/bandwidth.c: best of 10 reads of a 1 GiB buffer, 4 sequential "
              "streams per thread, on huge and on 4 KiB pages (read), and of 10 STREAM triads "
              "over 3 x 256 MiB (triad), THREADS OpenMP threads; measured before and after the "
              "other measurements; the higher read figure is the limit, the lower one is "
              "given too because this VM's bandwidth drifts with its neighbours",
    "before": before,
    "after": after,
}
rows = []
for p in sorted(glob.glob(os.path.join(bench, "rows", "*.json"))):
    row = json.load(open(p))
    row["cpu_other_pct"] = other_cpu(os.path.basename(p)[: -len(".json")])
    rows.append(row)
llama_row = next((r for r in rows if r["peer"].startswith("llama.cpp")), {})
limit = bandwidth["bandwidth_gb_s"] * 1e9 / weight_bytes
limit_low = bandwidth["lowest_gb_s"] * 1e9 / weight_bytes

today = datetime.datetime.now(datetime.timezone.utc)
result = {
    "benchmark": "SmolLM2-135M-Instruct, f32 and 16-bit weights, CPU: prefill of a 128-token "
                 "prompt, 128 greedy decode steps",
    "date": today.strftime("%Y-%m-%d"),
    "time_utc": today.strftime("%H:%M"),
    "threads": int(threads),
    "runs": int(runs),
    "machine": {
        "cpu": field("model name"),
        "cpu_family_model": f'{field("cpu family")}/{field("model")}',
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni") if f in flags],
        "cores": os.cpu_count(),
        "memory_bytes": mem_kib * 1024,
        "kernel": platform.release(),
        "load_average_before": load_before,
        "load_average_after": load_after,
    },
    "versions": {
        "kiln": sh("git", "rev-parse", "--short", "HEAD"),
        "rustc": sh("rustc", "--version"),
        "gcc": (sh("gcc", "--version") or "").split("\n")[0],
        "candle": candle_version,
        "llama.cpp": (re.search(r"\((.*)\)", llama_row.get("peer", "")) or [None, ""])[1]
                     + (f', ggml {llama_row["ggml_version"]}' if "ggml_version" in llama_row else ""),
    },
    "weights_f32_bytes": weight_bytes,
    "weights_16bit_bytes": half_bytes,
    "bandwidth": bandwidth,
    "bandwidth_limit_decode_tokens_per_s": round(limit, 2),
    "bandwidth_limit_decode_tokens_per_s_at_lowest": round(limit_low, 2),
    "rows": rows,
}
os.makedirs(os.path.join(root, "bench/results"), exist_ok=True)
path = os.path.join(root, f'bench/results/cpu-smollm2-{today.strftime("%Y-%m-%dT%H%M")}.json')
with open(path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
print(f"cpu_smollm2.sh: wrote {os.path.relpath(path, root)}", file=sys.stderr)

ok = [r for r in rows if "error" not in r]
print(f'\nSmolLM2-135M, {threads} threads, {field("model name")}, {result["date"]}; '
      f'bandwidth {bandwidth["lowest_gb_s"]}-{bandwidth["bandwidth_gb_s"]} GB/s (read, before/after) '
      f'-> decode limit {limit_low:.1f}-{limit:.1f} tok/s for {weight_bytes / 1e6:.0f} MB of f32 '
      f'weights, twice that for {half_bytes / 1e6:.0f} MB of 16-bit ones\n')
def share(row):
    scale = weight_bytes / row_weight_bytes(row)
    high = row["decode_tokens_per_s"] / (limit * scale)
    low = row["decode_tokens_per_s"] / (limit_low * scale)
    return f"{high:.0%}" if f"{high:.0%}" == f"{low:.0%}" else f"{high:.0%}-{low:.0%}"

print("| | prefill tok/s | decode tok/s | peak RSS MiB | decode / bandwidth limit | other CPU use |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    other = "—" if r["cpu_other_pct"] is None else f'{r["cpu_other_pct"]}%'
    if "error" in r:
        print(f'| {r["peer"]} | — | — | — | {r["error"]} | {other} |')
    else:
        print(f'| {r["peer"]} | {r["prefill_tokens_per_s"]:.1f} | {r["decode_tokens_per_s"]:.1f} | '
              f'{r["peak_rss_bytes"] / 2**20:.0f} | {share(r)} | {other} |')
kilns = [r for r in ok if r["peer"].startswith("kiln")]
peers = [r for r in ok if not r["peer"].startswith("kiln")]
if kilns and peers:
    print("\n| ratio | vs | prefill | decode | peak RSS |")
    print("|---|---|---:|---:|---:|")
    for k in kilns:
        for r in peers:
            print(f'| {k["peer"]} | {r["peer"]} | '
                  f'{k["prefill_tokens_per_s"] / r["prefill_tokens_per_s"]:.2f}x | '
                  f'{k["decode_tokens_per_s"] / r["decode_tokens_per_s"]:.2f}x | '
                  f'{k["peak_rss_bytes"] / r["peak_rss_bytes"]:.2f}x |')
EOF
