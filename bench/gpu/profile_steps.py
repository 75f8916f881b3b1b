#!/usr/bin/env python3
"""Reads a step-by-step profile (`kiln bench|train --profile --profile-steps STEPS.csv`) beside
the artifact it ran, and prints where the time goes with the bytes each step touches.

    python3 bench/gpu/profile_steps.py ARTIFACT.kiln STEPS.csv PROGRAM SYMBOLS [--runs N] [--top LABEL]

SYMBOLS are the program's symbol values in the manifest's order, comma-separated (a training
step at batch 8 × 2048: `8,2048`). Times are divided by `--runs` (the calls the profile summed).
For each kind of step (the first word of its label) it prints the milliseconds, the step count
and the bytes of the buffers the steps name over their time: whole buffers, so an upper bound on
the traffic of a step that reads part of one. With `--top LABEL` it then lists the steps of
that kind, their layers merged, largest first.
"""
import argparse
import collections
import csv
import json
import re

SIZES = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "i64": 8, "bool": 1}


def manifest(path):
    data = open(path, "rb").read()
    start = data.find(b'{"kiln_version')
    value, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf8", "ignore"))
    return value


def poly(p, symbols):
    total = 0
    for term in p["terms"]:
        value = term["coeff"]
        for s in term["symbols"]:
            value *= symbols[s]
        total += value
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("steps")
    ap.add_argument("program")
    ap.add_argument("symbols")
    ap.add_argument("--runs", type=float, default=1)
    ap.add_argument("--top")
    args = ap.parse_args()
    symbols = [int(s) for s in args.symbols.split(",")]
    program = next(p for p in manifest(args.artifact)["programs"] if p["name"] == args.program)
    steps = []
    for row in csv.DictReader(open(args.steps)):
        if row["program"] != args.program:
            continue
        step = program["steps"][int(row["step"])]
        if step["label"].replace('"', "'") != row["label"]:
            raise SystemExit(f"step {row['step']} is `{step['label']}` in the artifact, "
                             f"`{row['label']}` in the profile: another artifact?")
        buffers = step.get("launch", {}).get("buffers", [])
        nbytes = sum(poly(program["buffers"][b]["numel"], symbols)
                     * SIZES[program["buffers"][b]["dtype"]] for b in buffers)
        steps.append((float(row["seconds"]) / args.runs, nbytes, row["label"]))
    total = sum(s for s, _, _ in steps)
    print(f"{args.program}: {total * 1e3:.2f} ms per call in {len(steps)} steps")
    print("| kind | ms | steps | GB/s of named buffers |\n| --- | ---: | ---: | ---: |")
    kinds = totals(steps, lambda label: label.split(" ")[0])
    for kind, (seconds, count, nbytes) in kinds:
        print(f"| {kind} | {seconds * 1e3:.2f} | {count} | {rate(nbytes, seconds):.0f} |")
    if args.top:
        print(f"\n| {args.top} steps, layers merged | ms | steps | MB per step | GB/s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        chosen = [s for s in steps if s[2].split(" ")[0] == args.top]
        for label, (seconds, count, nbytes) in totals(chosen, lambda l: re.sub(r"\.\d+\.", ".N.", l)):
            print(f"| {label} | {seconds * 1e3:.2f} | {count} | {nbytes / count / 1e6:.0f} "
                  f"| {rate(nbytes, seconds):.0f} |")


def totals(steps, key):
    """(key, [seconds, steps, bytes]) of `steps` grouped by `key(label)`, largest time first."""
    groups = collections.defaultdict(lambda: [0.0, 0, 0])
    for seconds, nbytes, label in steps:
        g = groups[key(label)]
        g[0] += seconds
        g[1] += 1
        g[2] += nbytes
    return sorted(groups.items(), key=lambda kv: -kv[1][0])


def rate(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds > 0 else 0

if __name__ == "__main__":
    main()
