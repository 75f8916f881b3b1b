#!/usr/bin/env python3
"""Makes f32 copies of SmolLM2-135M-Instruct's GGUF weights for kiln's CPU benchmark peers.

The benchmark model is a Q4_1/Q8_0 GGUF (scripts/fetch_smollm2.sh). The peers run the SAME
weights, dequantized to f32:

  OUT/smollm2-f32/model.safetensors  Hugging Face tensor names and row order, tied embeddings
                                     (no lm_head), for candle's llama model
  OUT/smollm2-f32/config.json        Hugging Face llama config read from the GGUF metadata
  OUT/smollm2-f32/tokenizer.json     byte-level BPE tokenizer rebuilt from the GGUF vocabulary
                                     (only used to check the conversion, see `encode`/`decode`)
  OUT/smollm2-f32.gguf               every tensor F32, same metadata (general.file_type = ALL_F32)
  OUT/smollm2-f16.gguf               matrices F16, vectors F32 (general.file_type = MOSTLY_F16),
                                     as llama.cpp's own converter writes an F16 model
                                     and llama.cpp's own row order, for llama.cpp

llama.cpp's HF->GGUF converter permutes the rows of attn_q/attn_k (rotary pairs interleaved
per head); the safetensors output undoes that:
  HF w = gguf_w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
with n_head = head_count for q and head_count_kv for k.

Usage (needs `pip install gguf==0.19.0 numpy safetensors tokenizers`):
  bench/peers/convert_smollm2.py convert GGUF [OUT]     # OUT defaults to target/bench
  bench/peers/convert_smollm2.py encode TOKENIZER_JSON TEXT      # prints comma-separated ids
  bench/peers/convert_smollm2.py decode TOKENIZER_JSON ID,ID,..  # prints the text
Outputs that already exist and are newer than the GGUF are kept.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np


def field_value(reader, key):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def hf_config(reader):
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"expected a llama GGUF, got {arch!r}")

    def get(key):
        value = field_value(reader, f"llama.{key}")
        if value is None:
            raise SystemExit(f"GGUF has no llama.{key}")
        return value

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = field_value(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    if int(get("rope.dimension_count")) != hidden // heads:
        raise SystemExit("partial rotary embeddings are not supported")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv")),
        "head_dim": hidden // heads,
        "vocab_size": int(vocab),
        # f32 in the GGUF (9.99999974738e-06); round back to the value in the HF config.
        "rms_norm_eps": round(float(get("attention.layer_norm_rms_epsilon")), 12),
        "rope_theta": float(get("rope.freq_base")),
        "max_position_embeddings": int(get("context_length")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": int(field_value(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field_value(reader, "tokenizer.ggml.eos_token_id")),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
HF_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name):
    if name in HF_NAMES:
        return HF_NAMES[name]
    blk, layer, kind, suffix = name.split(".")
    if blk != "blk" or kind not in HF_BLOCK_NAMES:
        raise SystemExit(f"unexpected tensor {name}")
    return f"model.layers.{layer}.{HF_BLOCK_NAMES[kind]}.{suffix}"


def unpermute(w, n_head):
    """Inverse of llama.cpp's q/k row permutation (HF order from GGUF order)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def dequantized(reader):
    """Yields (gguf name, f32 array in numpy row-major shape) for every tensor."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists the fastest dim first
        if t.tensor_type == GGMLQuantizationType.F32:
            w = np.array(t.data, dtype=np.float32)
        else:
            w = dequantize(t.data, t.tensor_type).astype(np.float32)
        yield t.name, np.ascontiguousarray(w.reshape(shape))


def tokenizer_json(reader):
    """A Hugging Face tokenizer.json equivalent to SmolLM2's (byte-level BPE, digits split)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field_value(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    control = 3  # gguf TokenType.CONTROL
    tok.add_special_tokens(
        [AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == control]
    )
    return tok.to_str()


def write_gguf(reader, path, file_type, half_matrices):
    """Writes every tensor of `reader` dequantized, as F16 for matrices when `half_matrices`
    (vectors stay F32), else all F32, with the reader's metadata and `file_type`."""
    import gguf

    partial = str(path) + ".partial"
    writer = gguf.GGUFWriter(partial, arch=field_value(reader, "general.architecture"))
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(file_type)
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
    for name, w in dequantized(reader):
        if half_matrices and w.ndim == 2:
            writer.add_tensor(name, w.astype(np.float16), raw_dtype=gguf.GGMLQuantizationType.F16)
        else:
            writer.add_tensor(name, w, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, path)


def up_to_date(out, src):
    return out.exists() and out.stat().st_mtime >= src.stat().st_mtime


def convert(gguf_path, out_dir):
    import gguf
    from safetensors.numpy import save_file

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    hf_dir = out_dir / "smollm2-f32"
    st_path = hf_dir / "model.safetensors"
    f32_gguf = out_dir / "smollm2-f32.gguf"
    f16_gguf = out_dir / "smollm2-f16.gguf"
    outputs = [st_path, hf_dir / "config.json", hf_dir / "tokenizer.json", f32_gguf, f16_gguf]
    if all(up_to_date(p, gguf_path) for p in outputs):
        print(f"convert_smollm2.py: {hf_dir} and the GGUFs are up to date", file=sys.stderr)
        return
    hf_dir.mkdir(parents=True, exist_ok=True)

    reader = gguf.GGUFReader(gguf_path)
    config = hf_config(reader)
    n_q, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    # Hugging Face safetensors for candle.
    hf = {}
    for name, w in dequantized(reader):
        if name.endswith("attn_q.weight"):
            w = unpermute(w, n_q)
        elif name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        hf[hf_name(name)] = w
    save_file(hf, str(st_path) + ".partial", metadata={"format": "pt"})
    os.replace(str(st_path) + ".partial", st_path)
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (hf_dir / "tokenizer.json").write_text(tokenizer_json(reader))
    del hf

    # GGUFs for llama.cpp: same metadata and tensor order, llama.cpp's row order.
    write_gguf(reader, f32_gguf, gguf.LlamaFileType.ALL_F32, half_matrices=False)
    write_gguf(reader, f16_gguf, gguf.LlamaFileType.MOSTLY_F16, half_matrices=True)

    total = sum(int(np.prod(t.shape)) for t in reader.tensors)
    print(
        f"convert_smollm2.py: {total / 1e6:.1f}M parameters -> {st_path} "
        f"({st_path.stat().st_size / 1e6:.0f} MB), {f32_gguf} ({f32_gguf.stat().st_size / 1e6:.0f} MB), "
        f"{f16_gguf} ({f16_gguf.stat().st_size / 1e6:.0f} MB)",
        file=sys.stderr,
    )


def main(argv):
    if len(argv) >= 2 and argv[0] == "convert":
        default_out = Path(__file__).resolve().parents[2] / "target" / "bench"
        convert(argv[1], argv[2] if len(argv) > 2 else default_out)
    elif len(argv) == 3 and argv[0] in ("encode", "decode"):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(argv[1])
        if argv[0] == "encode":
            print(",".join(str(i) for i in tok.encode(argv[2], add_special_tokens=False).ids))
        else:
            print(tok.decode([int(i) for i in argv[2].split(",")]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
