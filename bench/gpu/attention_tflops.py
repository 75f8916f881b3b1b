"""Reads the table `kiln bench --profile` printed for a bf16 prefill of 8 × 2048 tokens of the
Llama-3.2-1B shape and prints, as JSON, the time of one flash_attention step (the median layer
is not available from the table: the mean of the layers' steps and of the timed runs the
profile's header names) and its rate in TFLOP/s, counted as PyTorch's SDPA figure counts causal
attention: 4·B·H·S²·D / 2.
"""

import json
import re
import sys

BATCH, HEADS, SEQ, HEAD_DIM = 8, 32, 2048, 64
FLOPS = 4 * BATCH * HEADS * SEQ * SEQ * HEAD_DIM / 2


def main(path):
    text = open(path).read()
    prefill = text[text.index("\nprefill:"):]
    runs = re.search(r"summed over (\d+) runs?", prefill.splitlines()[1])
    runs = int(runs.group(1)) if runs else 1
    for line in prefill.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.search(r"self_attn\.attention", cells[0]):
            steps, seconds = int(cells[1]), float(cells[2])
            per_call = seconds / steps / runs
            print(json.dumps({"step": cells[0], "steps": steps, "seconds_per_call": per_call,
                              "flops_per_call": FLOPS, "tflops": FLOPS / per_call / 1e12}))
            return
    sys.exit(f"{path}: no flash_attention step in the prefill profile")


if __name__ == "__main__":
    main(sys.argv[1])
