#!/usr/bin/env python3
"""PyTorch's side of kiln's GPU benchmark: a Llama, eager and under torch.compile.

The model is written here in the style of gpt-fast: built from a Hugging Face `config.json`
(`bench/configs/llama-3.2-1b.json`: the Llama-3.2-1B shape with an untied head) with seeded
random weights; RMSNorm, rotate-half RoPE with the config's theta, grouped-query attention
through `F.scaled_dot_product_attention`, a SwiGLU MLP (q/k/v and gate/up are one matmul
each), and a static KV cache (`[batch, kv_heads, max_seq, head_dim]` buffers written with
`index_copy_` at `input_pos`) so that a decode step has fixed shapes and can be captured as a
CUDA graph.

Each figure is measured in two modes, `eager` and `compile`, on one device:

- decode tokens/s at batch 1 and 16: bf16 weights; a 16-token prompt is prefilled (eagerly in
  both modes), a few steps warm up, then `--decode-steps` greedy steps (argmax on the device,
  the token fed back) are timed; tokens = batch x steps. The compiled step is
  `torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)`: CUDA graphs.
  The cache is attended in full under a causal mask; the query heads that share a KV head
  are stacked along the query axis, so the cache is read in place, never expanded.
- training tokens/s at batch 8 x 2048: f32 master weights under bf16 autocast, forward,
  cross-entropy, backward and a fused `torch.optim.AdamW` step; causal SDPA with
  `enable_gqa=True`. torch.compile (default mode) compiles the forward and the loss (the
  backward follows through AOTAutograd); the optimizer step stays eager. Also the median step
  time and the peak of `torch.cuda.max_memory_allocated`, reset before each mode.
- the first decode step and the first training step including compilation: wall time from
  the model being ready to the first result (for decode that includes the prompt's prefill).
  Dynamo is reset before every measurement and Inductor's on-disk cache starts empty (a fresh
  temporary directory), so the compiled figures include all compilation.
- causal attention forward TFLOP/s: SDPA on bf16 q, k, v of `[8, 32, 2048, 64]`,
  FLOPs = 4*B*H*S^2*D / 2 (the causal half).

Every timing is taken `--repeats` times between `torch.cuda.synchronize()` calls with
`time.perf_counter()`, and the median is reported. A figure that fails (out of memory, a
compiler error) is recorded as an error string and the run goes on. The results go to
`--out` as JSON and are printed as a markdown table. `--quick --device cpu` runs a tiny
model and tiny sizes on the CPU as a smoke test (without the CUDA-graph decode, without
memory figures).
"""

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch._dynamo
import torch._inductor.config
import torch.nn.functional as F
from torch import nn

SEED = 0
MODES = {"eager": "PyTorch eager", "compile": "torch.compile"}


# --------------------------------------------------------------------------------------------
# Model


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rope_theta: float
    norm_eps: float

    @classmethod
    def from_config(cls, path):
        """Reads a Hugging Face Llama `config.json`, refusing what this model does not build."""
        c = json.loads(Path(path).read_text())
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        unsupported = {
            "model_type": c.get("model_type") != "llama",
            "hidden_act": c.get("hidden_act", "silu") != "silu",
            "tie_word_embeddings": c.get("tie_word_embeddings", False),
            "attention_bias": c.get("attention_bias", False),
            "mlp_bias": c.get("mlp_bias", False),
            "rope type": rope.get("rope_type", rope.get("type", "default")) != "default",
        }
        refused = [name for name, bad in unsupported.items() if bad]
        if refused:
            raise ValueError(f"{path}: unsupported {', '.join(refused)} (a plain untied Llama is built)")
        heads = c["num_attention_heads"]
        return cls(
            vocab_size=c["vocab_size"],
            hidden=c["hidden_size"],
            layers=c["num_hidden_layers"],
            heads=heads,
            kv_heads=c.get("num_key_value_heads", heads),
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            intermediate=c["intermediate_size"],
            rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
            norm_eps=c.get("rms_norm_eps", 1e-6),
        )

    def tiny(self):
        """The same kind of model, small enough for a CPU smoke run."""
        heads = 8
        return dataclasses.replace(
            self, vocab_size=512, hidden=256, layers=2, heads=heads,
            kv_heads=max(1, heads * self.kv_heads // self.heads), head_dim=32, intermediate=1024,
        )


def rope_tables(head_dim, theta, max_seq):
    """cos and sin of every position's rotation angles, `[max_seq, head_dim]`, f32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate-half RoPE of `x` `[batch, seq, heads, head_dim]`; `cos`/`sin` `[seq, 1, head_dim]`."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).type_as(x)


class KVCache(nn.Module):
    def __init__(self, batch, kv_heads, max_seq, head_dim, dtype, device):
        super().__init__()
        shape = (batch, kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos, k, v):
        """Writes `k`, `v` `[batch, kv_heads, seq, head_dim]` at `input_pos`; returns the caches."""
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


def cached_attention(q, k_cache, v_cache, mask):
    """Attention of `q` `[batch, heads, seq, head_dim]` over whole caches `[batch, kv_heads,
    max_seq, head_dim]`, `mask` `[seq, max_seq]` hiding the positions after each query's.

    The query heads that share a KV head are stacked along the query axis (heads are grouped
    as in `repeat_interleave`), so SDPA reads each cached head in place."""
    batch, heads, seq, head_dim = q.shape
    groups = heads // k_cache.shape[1]
    stacked = q.reshape(batch, k_cache.shape[1], groups * seq, head_dim)
    y = F.scaled_dot_product_attention(stacked, k_cache, v_cache, attn_mask=mask.repeat(groups, 1))
    return y.reshape(batch, heads, seq, head_dim)


class Attention(nn.Module):
    def __init__(self, s, dtype):
        super().__init__()
        self.s = s
        self.wqkv = nn.Linear(s.hidden, (s.heads + 2 * s.kv_heads) * s.head_dim, bias=False, dtype=dtype)
        self.wo = nn.Linear(s.heads * s.head_dim, s.hidden, bias=False, dtype=dtype)
        self.kv_cache = None

    def forward(self, x, cos, sin, mask, input_pos):
        s = self.s
        batch, seq, _ = x.shape
        q_size, kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(batch, seq, s.heads, s.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(k.view(batch, seq, s.kv_heads, s.head_dim), cos, sin).transpose(1, 2)
        v = v.view(batch, seq, s.kv_heads, s.head_dim).transpose(1, 2)
        if input_pos is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            y = cached_attention(q, *self.kv_cache.update(input_pos, k, v), mask)
        return self.wo(y.transpose(1, 2).reshape(batch, seq, q_size))


class SwiGLU(nn.Module):
    def __init__(self, s, dtype):
        super().__init__()
        self.w13 = nn.Linear(s.hidden, 2 * s.intermediate, bias=False, dtype=dtype)
        self.w2 = nn.Linear(s.intermediate, s.hidden, bias=False, dtype=dtype)

    def forward(self, x):
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, s, dtype):
        super().__init__()
        self.attn_norm = nn.RMSNorm(s.hidden, eps=s.norm_eps, dtype=dtype)
        self.attn = Attention(s, dtype)
        self.mlp_norm = nn.RMSNorm(s.hidden, eps=s.norm_eps, dtype=dtype)
        self.mlp = SwiGLU(s, dtype)

    def forward(self, x, cos, sin, mask, input_pos):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, input_pos)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    """`forward(tokens)` is causal attention over whole sequences from position 0 (training);
    after `setup_kv_cache`, `forward(tokens, input_pos)` writes the cache at `input_pos` and
    attends to it (prefill and decode)."""

    def __init__(self, s, max_seq, dtype):
        super().__init__()
        self.s = s
        self.max_seq = max_seq
        self.embed = nn.Embedding(s.vocab_size, s.hidden, dtype=dtype)
        self.layers = nn.ModuleList(Block(s, dtype) for _ in range(s.layers))
        self.norm = nn.RMSNorm(s.hidden, eps=s.norm_eps, dtype=dtype)
        self.head = nn.Linear(s.hidden, s.vocab_size, bias=False, dtype=dtype)
        cos, sin = rope_tables(s.head_dim, s.rope_theta, max_seq)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("causal", None, persistent=False)

    def setup_kv_cache(self, batch):
        device, dtype = self.head.weight.device, self.head.weight.dtype
        for layer in self.layers:
            layer.attn.kv_cache = KVCache(batch, self.s.kv_heads, self.max_seq, self.s.head_dim, dtype, device)
        self.causal = torch.ones(self.max_seq, self.max_seq, dtype=torch.bool, device=device).tril()

    def forward(self, tokens, input_pos=None):
        if input_pos is None:
            seq = tokens.shape[1]
            cos, sin, mask = self.cos[:seq], self.sin[:seq], None
        else:
            cos, sin, mask = self.cos[input_pos], self.sin[input_pos], self.causal[input_pos]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos)
        return self.head(self.norm(x))


def build_model(shape, max_seq, dtype, device):
    torch.manual_seed(SEED)
    with torch.device(device):
        return Llama(shape, max_seq, dtype)


# --------------------------------------------------------------------------------------------
# Workloads


@dataclasses.dataclass(frozen=True)
class Workload:
    prompt_tokens: int = 16
    decode_batches: tuple = (1, 16)
    decode_steps: int = 128
    decode_warmup: int = 8
    train_batch: int = 8
    train_seq: int = 2048
    train_steps: int = 5
    train_warmup: int = 2
    attention_shape: tuple = (8, 32, 2048, 64)
    attention_iters: int = 20

    @property
    def decode_max_seq(self):
        """Cache length: the prompt and the longest run of steps, rounded up to 64."""
        needed = self.prompt_tokens + max(self.decode_steps, self.decode_warmup + 1)
        return -(-needed // 64) * 64


FULL = Workload()
QUICK = Workload(
    prompt_tokens=8, decode_steps=8, decode_warmup=3, train_batch=2, train_seq=64, train_steps=2,
    train_warmup=1, attention_shape=(2, 4, 128, 64), attention_iters=2,
)


def now(device):
    """`time.perf_counter()` once the device has finished its work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def greedy_step(model, tokens, input_pos):
    """Runs `tokens` at `input_pos` through the model (writing the cache) and returns the
    argmax of the last position's logits, `[batch, 1]`."""
    return model(tokens, input_pos)[:, -1:].argmax(dim=-1)


def decode(step, model, token, pos, steps):
    for _ in range(steps):
        token = step(model, token, pos).clone()  # a CUDA graph's output is overwritten by its next replay
        pos += 1
    return token


@torch.no_grad()
def bench_decode(shape, work, batch, mode, device, repeats):
    if mode == "compile" and device.type != "cuda":
        return {"skipped": "mode reduce-overhead (CUDA graphs) needs a CUDA device"}
    model = build_model(shape, work.decode_max_seq, torch.bfloat16, device)
    model.setup_kv_cache(batch)
    step = greedy_step
    if mode == "compile":
        step = torch.compile(greedy_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
    prompt = torch.randint(shape.vocab_size, (batch, work.prompt_tokens), device=device)
    prompt_pos = torch.arange(work.prompt_tokens, device=device)
    pos = torch.tensor([work.prompt_tokens], device=device)
    skips_before = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]

    start = now(device)
    token = greedy_step(model, prompt, prompt_pos)
    token = step(model, token, pos).clone()
    first_step_s = now(device) - start
    decode(step, model, token, pos + 1, work.decode_warmup)

    samples = []
    for _ in range(repeats):
        pos.fill_(work.prompt_tokens)
        start = now(device)
        decode(step, model, token, pos, work.decode_steps)
        samples.append(batch * work.decode_steps / (now(device) - start))
    result = {
        "tokens_per_s": statistics.median(samples),
        "samples_tokens_per_s": samples,
        "first_step_s": first_step_s,
        "peak_memory_bytes": peak_memory(device),
    }
    if mode == "compile":
        result["cudagraph_skips"] = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] - skips_before
    return result


def lm_loss(model, inputs, targets):
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
        logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def bench_train(shape, work, mode, device, repeats):
    model = build_model(shape, work.train_seq, torch.float32, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    loss_of = torch.compile(lm_loss) if mode == "compile" else lm_loss
    inputs, targets = torch.randint(shape.vocab_size, (2, work.train_batch, work.train_seq), device=device)

    def train_step():
        loss = loss_of(model, inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    start = now(device)
    first_loss = train_step().item()
    first_step_s = now(device) - start
    for _ in range(work.train_warmup):
        train_step()

    samples = []
    for _ in range(repeats):
        start = now(device)
        for _ in range(work.train_steps):
            loss = train_step()
        samples.append((now(device) - start) / work.train_steps)
    step_s = statistics.median(samples)
    return {
        "tokens_per_s": work.train_batch * work.train_seq / step_s,
        "step_ms": step_s * 1e3,
        "samples_step_ms": [s * 1e3 for s in samples],
        "first_step_s": first_step_s,
        "peak_memory_bytes": peak_memory(device),
        "loss_first": first_loss,
        "loss_last": loss.item(),
    }


def causal_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@torch.no_grad()
def bench_attention(shape, work, mode, device, repeats):
    batch, heads, seq, head_dim = work.attention_shape
    torch.manual_seed(SEED)
    q, k, v = torch.randn(3, batch, heads, seq, head_dim, dtype=torch.bfloat16, device=device)
    attend = torch.compile(causal_attention) if mode == "compile" else causal_attention
    for _ in range(3):
        attend(q, k, v)
    flops = 4 * batch * heads * seq * seq * head_dim / 2
    samples = []
    for _ in range(repeats):
        start = now(device)
        for _ in range(work.attention_iters):
            attend(q, k, v)
        samples.append(flops * work.attention_iters / (now(device) - start) / 1e12)
    return {"tflops": statistics.median(samples), "samples_tflops": samples, "flops_per_call": flops}


# --------------------------------------------------------------------------------------------
# Running and reporting


def release(device):
    """Frees what the last measurement left: compiled code, CUDA graphs, cached blocks."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(bench, *args):
    """One figure in one mode; an exception becomes `{"error": ...}` and the run goes on."""
    try:
        return bench(*args)
    except Exception as e:
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:4000]}


def figures_to_run(only, work):
    """(name, bench, extra arguments) of each figure `--only` selects."""
    plan = []
    if only in ("decode", "all"):
        plan += [(f"decode_b{b}", bench_decode, (b,)) for b in work.decode_batches]
    if only in ("train", "all"):
        plan.append(("train", bench_train, ()))
    if only in ("attention", "all"):
        plan.append(("attention", bench_attention, ()))
    return plan


def summary(result):
    for key in ("error", "skipped", "tokens_per_s", "tflops"):
        if key in result:
            value = result[key]
            return f"{key} {value:.1f}" if isinstance(value, float) else f"{key}: {value.splitlines()[0]}"
    return ""


def cell(result, key, fmt):
    if result is None:
        return "—"
    if "error" in result:
        return "error"
    if "skipped" in result:
        return "skipped"
    value = result.get(key)
    return "—" if value is None else fmt(value)


def table(figures, work):
    rows = []
    for b in work.decode_batches:
        rows.append((f"decode, batch {b} (tokens/s)", f"decode_b{b}", "tokens_per_s", "{:.1f}"))
    b0 = work.decode_batches[0]
    rows.append((f"first decode step incl. prefill and compilation, batch {b0} (s)", f"decode_b{b0}", "first_step_s", "{:.2f}"))
    train = f"training {work.train_batch}×{work.train_seq}"
    rows += [
        (f"{train} (tokens/s)", "train", "tokens_per_s", "{:.0f}"),
        (f"{train}, step (ms)", "train", "step_ms", "{:.1f}"),
        (f"{train}, peak memory (GiB)", "train", "peak_memory_bytes", lambda v: f"{v / 2**30:.1f}"),
        ("first training step incl. compilation (s)", "train", "first_step_s", "{:.2f}"),
        ("causal attention forward {}×{}×{}×{} (TFLOP/s)".format(*work.attention_shape), "attention", "tflops", "{:.1f}"),
    ]
    lines = ["| figure | " + " | ".join(MODES.values()) + " |", "| --- |" + " ---: |" * len(MODES)]
    for label, name, key, fmt in rows:
        if name not in figures:
            continue
        fmt = fmt.format if isinstance(fmt, str) else fmt
        cells = [cell(figures[name].get(mode), key, fmt) for mode in MODES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(device):
    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_bytes=props.total_memory,
            gpu_capability=f"{props.major}.{props.minor}",
        )
    return info


def settings(args, work, modes):
    return {
        "device": args.device,
        "modes": modes,
        "repeats": args.repeats,
        "quick": args.quick,
        "decode": {
            "dtype": "bfloat16",
            "batches": list(work.decode_batches),
            "prompt_tokens": work.prompt_tokens,
            "steps": work.decode_steps,
            "warmup_steps": work.decode_warmup,
            "kv_cache_max_seq": work.decode_max_seq,
            "sampling": "greedy argmax on the device, token fed back",
            "compile": 'torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False) of one step; prefill eager',
        },
        "train": {
            "batch": work.train_batch,
            "seq": work.train_seq,
            "steps_per_repeat": work.train_steps,
            "warmup_steps": work.train_warmup,
            "precision": "f32 master weights, torch.autocast bf16",
            "optimizer": "torch.optim.AdamW(lr=3e-4, fused=True)",
            "compile": "torch.compile (default mode) of forward + loss; backward via AOTAutograd; optimizer step eager",
        },
        "attention": {
            "shape": list(work.attention_shape),
            "dtype": "bfloat16",
            "is_causal": True,
            "iters_per_repeat": work.attention_iters,
        },
        "inductor": {
            "coordinate_descent_tuning": True,
            "triton.unique_kernel_names": True,
            "cache": "a fresh temporary directory per run",
        },
    }


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="Hugging Face config.json of a Llama")
    p.add_argument("--out", help="JSON file to write the results to")
    p.add_argument("--repeats", type=int, default=5, help="timings per figure; the median is reported")
    p.add_argument("--only", choices=("decode", "train", "attention", "all"), default="all")
    p.add_argument("--modes", default="eager,compile", help="comma-separated: eager, compile")
    p.add_argument("--decode-steps", type=int, help="timed decode steps per repeat (default 128; 8 with --quick)")
    p.add_argument("--train-steps", type=int, help="timed training steps per repeat (default 5; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny model and sizes, for a smoke run")
    p.add_argument("--device", default="cuda", help="cuda (the one visible GPU) or cpu")
    args = p.parse_args()
    modes = args.modes.split(",")
    if any(m not in MODES for m in modes):
        p.error(f"--modes takes a comma-separated list of {', '.join(MODES)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args, modes


def main():
    args, modes = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device is visible (use --device cpu --quick for a smoke run)")
    shape = LlamaShape.from_config(args.config)
    work = QUICK if args.quick else FULL
    if args.quick:
        shape = shape.tiny()
    overrides = {"decode_steps": args.decode_steps, "train_steps": args.train_steps}
    work = dataclasses.replace(work, **{k: v for k, v in overrides.items() if v is not None})

    cache_dir = tempfile.mkdtemp(prefix="torch-llama-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    torch._inductor.config.coordinate_descent_tuning = True
    torch._inductor.config.triton.unique_kernel_names = True

    figures = {}
    report = {
        "benchmark": "torch_llama",
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "config": args.config,
        "model": dict(dataclasses.asdict(shape), parameters=sum(
            p.numel() for p in build_model(shape, 1, torch.bfloat16, "meta").parameters())),
        "settings": settings(args, work, modes),
        "figures": figures,
    }
    try:
        for name, bench, extra in figures_to_run(args.only, work):
            figures[name] = {}
            for mode in modes:
                release(device)
                result = measure(bench, shape, work, *extra, mode, device, args.repeats)
                figures[name][mode] = result
                print(f"{name} {mode}: {summary(result)}", file=sys.stderr, flush=True)
                if args.out:  # after every figure, so that an interrupted run keeps what it measured
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    print(table(figures, work))


if __name__ == "__main__":
    main()
