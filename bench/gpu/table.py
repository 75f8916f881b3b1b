"""Merges one run of bench/gpu/llama_1b.sh (a results folder) into a table of kiln against
PyTorch eager and torch.compile, printed as markdown, and writes the merged JSON beside the
folder (FOLDER.json).

The last column compares kiln with torch.compile as a speed ratio: kiln's throughput over
torch.compile's, or torch.compile's time over kiln's, so above 1 means kiln is faster. Figures a
part of the run did not produce are shown as "—".
"""

import csv
import json
import re
import statistics
import sys
from pathlib import Path

TRAIN_TOKENS = 8 * 2048


def load_json(path):
    return json.loads(path.read_text()) if path.exists() else None


def kiln_training(folder):
    """Median step time after the first, the first step's time, and the log's figures."""
    out = {}
    log = folder / "train.csv"
    if log.exists():
        seconds = [float(row["seconds"]) for row in csv.DictReader(log.open())]
        steps = [b - a for a, b in zip([0.0] + seconds, seconds)]
        out["step_seconds"] = steps
        if len(steps) > 1:
            out["tokens_per_s"] = TRAIN_TOKENS / statistics.median(steps[1:])
        if steps:
            out["first_step_s"] = steps[0]
    text = (folder / "train.log").read_text() if (folder / "train.log").exists() else ""
    for key, pattern in [
        ("compile_s", r"compiled .* in ([0-9.]+) s"),
        ("load_s", r"loaded on the GPU in ([0-9.]+) s"),
        ("gpu_gib_in_use", r": ([0-9.]+) GiB in use"),
    ]:
        found = re.search(pattern, text)
        if found:
            out[key] = float(found.group(1))
    errors = [line for line in text.splitlines() if line.startswith("error")]
    if errors:
        out["error"] = errors[-1]
    return out


def torch_figure(torch, name, mode, key):
    figure = ((torch or {}).get("figures", {}).get(name) or {}).get(mode) or {}
    return figure.get(key)


def fmt(value, digits):
    return "—" if value is None else f"{value:,.{digits}f}"


def ratio(kiln, compiled, higher_is_better):
    if kiln is None or compiled is None or kiln == 0 or compiled == 0:
        return "—"
    return f"{(kiln / compiled if higher_is_better else compiled / kiln):.3g}×"


def main(folder):
    folder = Path(folder)
    torch = load_json(folder / "torch.json")
    decode = {b: load_json(folder / f"kiln-decode-b{b}.json") for b in (1, 16)}
    compile_times = load_json(folder / "kiln-compile.json") or {}
    train = kiln_training(folder)
    attention = load_json(folder / "kiln-attention.json")
    gib = 1 << 30

    def first_decode():
        d = decode[1]
        if not d or "decode_programs_s" not in compile_times:
            return None
        return compile_times["decode_programs_s"] + d["load_s"] + d["first_step_s"]

    def first_train():
        if not all(k in train for k in ("compile_s", "load_s", "first_step_s")):
            return None
        return train["compile_s"] + train["load_s"] + train["first_step_s"]

    def peak(mode):
        b = torch_figure(torch, "train", mode, "peak_memory_bytes")
        return None if b is None else b / gib

    rows = [
        ("decode, batch 1 (tok/s)", "decode_b1", "tokens_per_s",
         (decode[1] or {}).get("decode_tokens_per_s"), 1, True),
        ("decode, batch 16 (tok/s)", "decode_b16", "tokens_per_s",
         (decode[16] or {}).get("decode_tokens_per_s"), 0, True),
        ("train step, batch 8 × 2048 (tok/s)", "train", "tokens_per_s",
         train.get("tokens_per_s"), 0, True),
        ("training memory (GiB; PyTorch: peak allocated, kiln: GPU memory in use)", None, None,
         train.get("gpu_gib_in_use"), 1, False),
        ("first decode step incl. compilation (s)", "decode_b1", "first_step_s",
         first_decode(), 2, False),
        ("first training step incl. compilation (s)", "train", "first_step_s",
         first_train(), 1, False),
        ("causal attention fwd, 8×32×2048×64 (TFLOP/s)", "attention", "tflops",
         (attention or {}).get("tflops"), 0, True),
    ]
    lines = ["| figure | PyTorch eager | torch.compile | kiln | kiln vs torch.compile |",
             "| --- | ---: | ---: | ---: | ---: |"]
    table = []
    for label, name, key, kiln, digits, higher in rows:
        if name is None:
            eager, compiled = peak("eager"), peak("compile")
        else:
            eager = torch_figure(torch, name, "eager", key)
            compiled = torch_figure(torch, name, "compile", key)
        table.append({"figure": label, "eager": eager, "compile": compiled, "kiln": kiln})
        lines.append(f"| {label} | {fmt(eager, digits)} | {fmt(compiled, digits)} | "
                     f"{fmt(kiln, digits)} | {ratio(kiln, compiled, higher)} |")
    if compile_times:
        lines.append(f"\nkiln compile on {compile_times['host']} ({compile_times['cpus']} CPUs): "
                     f"prefill + decode {compile_times['decode_programs_s']:.2f} s, "
                     f"train_step {compile_times['train_step_s']:.2f} s")
    if "error" in train:
        lines.append(f"\nkiln training: {train['error']}")
    print("\n".join(lines))
    merged = {"torch": torch, "kiln": {"decode": decode, "compile": compile_times,
                                       "train": train, "attention": attention}, "table": table}
    Path(str(folder) + ".json").write_text(json.dumps(merged, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
