"""Where a program's GPU time goes, from Nsight Compute: matches the kernels of one run, as
`ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum` lists
them in launch order, to the steps of the program in the `.kiln` artifact that ran, and prints
the time, share and DRAM bandwidth by kind of kernel and by step (layers merged), largest first.

A step offered to the GEMM library (`gemm` in the manifest) runs cuBLASLt's kernels, one or more
(a split-K reduction after the product): they are the kernels up to the next one of kiln's own.
Kernels before the program's first step (another program's) are skipped.

    ncu --clock-control none --csv \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
        kiln train … --steps 1 --profile > ncu.csv
    python3 bench/gpu/ncu_steps.py ncu.csv train.kiln [PROGRAM] [ROWS]

The artifact must be the one the run compiled (same binary and options: `kiln compile` with the
training command's precision, batch, sequence and recomputation).
"""

import collections
import csv
import json
import re
import struct
import sys

UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6,
         "Gbyte": 1e9}


def manifest(path):
    """The manifest of a `.kiln` file (layout in runtime/src/artifact.rs)."""
    raw = open(path, "rb").read()
    if raw[:8] != b"KILNART\0":
        sys.exit(f"{path}: not a kiln artifact")
    at = 8 + 4 + 4 + 32
    (length,) = struct.unpack_from("<Q", raw, at)
    return json.loads(raw[at + 8:at + 8 + length])


def kernels(path):
    """Each profiled kernel, in launch order: its name and metrics (seconds, bytes)."""
    rows = csv.DictReader(line for line in open(path) if line.startswith('"'))
    by_id = collections.OrderedDict()
    for row in rows:
        entry = by_id.setdefault(row["ID"], {"name": row["Kernel Name"]})
        value = row["Metric Value"].replace(",", "")
        try:
            entry[row["Metric Name"]] = float(value) * UNITS.get(row["Metric Unit"], 1.0)
        except ValueError:
            pass
    return list(by_id.values())


def matched(steps, profiled):
    """Each step with the profiled kernels it ran."""
    own = {s["kernel"] for s in steps if not s.get("gemm")}
    first = next(s["kernel"] for s in steps if not s.get("gemm"))
    j = next(i for i, k in enumerate(profiled) if k["name"] == first)
    if steps[0].get("gemm"):
        j = max(j - 1, 0)
    out = []
    for step in steps:
        group = []
        if step.get("gemm"):
            while j < len(profiled) and profiled[j]["name"] not in own:
                group.append(profiled[j])
                j += 1
        else:
            while profiled[j]["name"] != step["kernel"]:
                j += 1
            group.append(profiled[j])
            j += 1
        out.append((step, group))
    return out


def seconds(group):
    return sum(k.get("gpu__time_duration.sum", 0.0) for k in group)


def dram(group):
    """DRAM bytes read and written."""
    return sum(k.get("dram__bytes_read.sum", 0.0) + k.get("dram__bytes_write.sum", 0.0)
               for k in group)


def main(csv_path, artifact_path, program=None, rows=40):
    programs = manifest(artifact_path)["programs"]
    desc = next(p for p in programs if program in (None, p["name"]))
    pairs = matched(desc["steps"], kernels(csv_path))
    total = sum(seconds(g) for _, g in pairs)
    by_kind = collections.defaultdict(lambda: [0, 0.0, 0.0])
    by_step = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for step, group in pairs:
        kind = "gemm" if step.get("gemm") else re.sub(r"_\d+$", "", step["kernel"])
        label = re.sub(r"\.\d+\.", ".N.", step["label"])
        key = (step["kernel"] if not step.get("gemm") else "gemm", label)
        for acc in (by_kind[kind], by_step[key]):
            acc[0] += 1
            acc[1] += seconds(group)
            acc[2] += dram(group)

    def table(title, items, name):
        print(f"\n| {title} | steps | ms | share | TB/s |\n| --- | ---: | ---: | ---: | ---: |")
        for key, (n, s, b) in sorted(items, key=lambda kv: -kv[1][1])[:rows]:
            print(f"| {name(key)} | {n} | {s * 1e3:.2f} | {100 * s / total:.1f}% | "
                  f"{b / max(s, 1e-12) / 1e12:.2f} |")

    print(f"{desc['name']}: {len(pairs)} steps, {total * 1e3:.1f} ms of kernels")
    table("kind", by_kind.items(), lambda k: k)
    table("step (kernel, label)", by_step.items(), lambda k: f"`{k[0]}` {k[1]}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None,
         int(sys.argv[4]) if len(sys.argv) > 4 else 40)
