#!/usr/bin/env bash
# Training throughput and memory of kiln on the CPU, under the four recomputation policies.
#
# Model: bench/configs/llama-8x128.json (Llama layout: 8 layers, hidden 128, 4 heads / 2 KV
# heads, FFN 384, byte vocabulary of 256; 1.7 M parameters), random weights, trained with AdamW
# on the embedded text in batches of 8 × 256 tokens. For each policy (`save-all`, `selective`,
# `layers`, and a budget between them) it runs `kiln train` RUNS times for STEPS steps and
# records tokens/s (median), the runtime's arena of intermediates, and peak resident memory. Every
# policy computes the same bits (tests/cpu_training.rs checks it), so the losses must agree.
#
#   bench/cpu_training.sh            # writes bench/results/cpu-training-YYYY-MM-DDTHHMM.json
#   STEPS=10 RUNS=1 bench/cpu_training.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-20}
RUNS=${RUNS:-3}
BUDGET=${BUDGET:-160MiB}
CONFIG=bench/configs/llama-8x128.json
cargo build --release --quiet
KILN=target/release/kiln
STAMP=$(date -u +%Y-%m-%dT%H%M)
OUT=bench/results/cpu-training-$STAMP.json
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

for policy in save-all selective layers "$BUDGET"; do
  for run in $(seq "$RUNS"); do
    flag=(--recompute "$policy")
    [[ $policy == *iB ]] && flag=(--memory-budget "$policy")
    /usr/bin/time -f '%M' -o "$TMP/rss" "$KILN" train "$CONFIG" --steps "$STEPS" --batch 8 --seq 256 \
      --threads 2 "${flag[@]}" 2> "$TMP/err" > /dev/null
    summary=$(grep ' steps in ' "$TMP/err")
    echo "$policy,$run,$(cat "$TMP/rss"),$summary" >> "$TMP/rows.csv"
    echo "$policy run $run: $summary (peak RSS $(( $(cat "$TMP/rss") / 1024 )) MiB)"
  done
done

python3 - "$TMP/rows.csv" "$OUT" "$STEPS" <<'PY'
import json, platform, re, statistics, subprocess, sys, datetime
rows_path, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = {}
for line in open(rows_path):
    policy, run, rss_kb, summary = line.rstrip("\n").split(",", 3)
    m = re.search(r"([\d.]+) s \((\d+) tokens/s\); loss ([\d.]+) → ([\d.]+); intermediates ([\d.]+) MiB", summary)
    seconds, tps, first, last, arena = m.groups()
    runs.setdefault(policy, []).append(dict(tokens_per_s=int(tps), seconds=float(seconds),
        loss_first=float(first), loss_last=float(last), arena_mib=float(arena), peak_rss_mib=int(rss_kb) / 1024))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
result = dict(
    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
    machine=dict(cpu=cpu, threads=2, kernel=platform.release()), commit=commit,
    config="bench/configs/llama-8x128.json", batch=8, seq=256, steps=steps,
    policies={p: dict(tokens_per_s_median=statistics.median(r["tokens_per_s"] for r in rs),
                      arena_mib=rs[0]["arena_mib"], peak_rss_mib=max(r["peak_rss_mib"] for r in rs),
                      loss_last=rs[0]["loss_last"], runs=rs) for p, rs in runs.items()})
json.dump(result, open(out, "w"), indent=2)
base = result["policies"]["save-all"]
print(f"\n| policy | tokens/s (median) | vs save-all | intermediates (MiB) | peak RSS (MiB) | loss after {steps} steps |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for p, r in result["policies"].items():
    print(f"| {p} | {r['tokens_per_s_median']:.0f} | {r['tokens_per_s_median'] / base['tokens_per_s_median']:.2f}× "
          f"| {r['arena_mib']:.1f} | {r['peak_rss_mib']:.0f} | {r['loss_last']:.4f} |")
print(f"\nwrote {out}")
PY
