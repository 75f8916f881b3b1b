//! GGUF checkpoints (llama.cpp's format) of the `llama` and `qwen2` architectures.
//!
//! This module owns the map from llama.cpp's tensor names to Hugging Face's, decoding through
//! kiln-gguf (every type it dequantizes), and undoing the row permutation llama.cpp's converter
//! applies to the q and k projections of `llama` models (its RoPE rotates adjacent pairs, Hugging
//! Face's rotates halves). GGUF lists dims innermost first, so a tensor of dims `[in, out]` is
//! Hugging Face's `[out, in]` with the same bytes. A tensor with no Hugging Face name (such as
//! `rope_freqs.weight`) is an error.

use std::path::Path;

use kiln_gguf::{GgufError, GgufFile, TensorInfo};

use super::plan::{plan, Stored};
use super::{map_file, typed};
use crate::error::{Result, RuntimeError};
use crate::manifest::{ModelInfo, TensorDesc};
use crate::tensor::Tensor;

const ARCHITECTURE_KEY: &str = "general.architecture";

/// llama.cpp's names of the tensors outside the layers, with Hugging Face's.
const GLOBAL: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// llama.cpp's names of a layer's modules (after `blk.N.`), with Hugging Face's (after
/// `model.layers.N.`). Each module has a `weight` and may have a `bias`.
const LAYER: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The expected tensors of the GGUF file at `path`, in order, in Hugging Face's layout.
pub(super) fn load(path: &Path, expected: &[TensorDesc], model: &ModelInfo) -> Result<Vec<Tensor>> {
    let file = kiln_gguf::read_path(path).map_err(from_gguf)?;
    let bytes = map_file(path)?;
    decode(&file, &bytes, &path.display().to_string(), expected, model)
}

/// The expected tensors of the GGUF file held in `bytes`, in order, in Hugging Face's layout;
/// `source` names it in errors.
pub(super) fn load_bytes(
    bytes: &[u8],
    source: &str,
    expected: &[TensorDesc],
    model: &ModelInfo,
) -> Result<Vec<Tensor>> {
    let file = kiln_gguf::parse(bytes, source).map_err(from_gguf)?;
    decode(&file, bytes, source, expected, model)
}

/// The expected tensors of `file`, whose whole content is `bytes`.
fn decode(
    file: &GgufFile,
    bytes: &[u8],
    source: &str,
    expected: &[TensorDesc],
    model: &ModelInfo,
) -> Result<Vec<Tensor>> {
    let permuted = match file.get_str(ARCHITECTURE_KEY).map_err(from_gguf)? {
        "llama" => true,
        "qwen2" => false,
        other => {
            return Err(RuntimeError::new(
                source,
                Some(ARCHITECTURE_KEY),
                format!("unsupported architecture `{other}` (expected llama or qwen2)"),
            ))
        }
    };
    let stored = file
        .tensors
        .iter()
        .map(|info| {
            let name = hf_name(&info.name).ok_or_else(|| {
                RuntimeError::tensor(source, &info.name, "no Hugging Face name for this tensor")
            })?;
            Ok(Stored {
                name,
                shape: info.shape(),
                file: source.to_string(),
                data: info,
            })
        })
        .collect::<Result<Vec<Stored<&TensorInfo>>>>()?;
    let order = plan(&stored, expected, model, source)?;
    order
        .into_iter()
        .zip(expected)
        .map(|(i, desc)| {
            let tensor = &stored[i];
            let data = kiln_gguf::tensor_data(file, bytes, tensor.data).map_err(from_gguf)?;
            let values =
                kiln_gguf::dequantize_tensor(file, tensor.data, data).map_err(from_gguf)?;
            let values = match permuted_heads(&tensor.name, model).filter(|_| permuted) {
                None => values,
                Some(heads) => unpermute_rows(&values, &tensor.shape, heads).ok_or_else(|| {
                    RuntimeError::tensor(
                        source,
                        &tensor.name,
                        format!(
                            "shape {:?}: the rows are not a whole number of pairs for each of \
                             {heads} heads, so llama.cpp's q/k row order cannot be undone",
                            tensor.shape
                        ),
                    )
                })?,
            };
            Ok(typed(values, desc))
        })
        .collect()
}

/// Hugging Face's name of the llama.cpp tensor `name`, if it has one.
fn hf_name(name: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL.iter().find(|(gguf, _)| *gguf == name) {
        return Some(hf.to_string());
    }
    let (layer, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (module, param) = rest.split_once('.')?;
    let (_, hf) = LAYER.iter().find(|(gguf, _)| *gguf == module)?;
    matches!(param, "weight" | "bias").then(|| format!("model.layers.{layer}.{hf}.{param}"))
}

/// The head count whose rows llama.cpp permutes in the tensor Hugging Face calls `name`:
/// attention heads for the q projection, key/value heads for the k projection.
fn permuted_heads(name: &str, model: &ModelInfo) -> Option<usize> {
    let (_, projection) = name.rsplit_once(".self_attn.")?;
    match projection.split_once('.')? {
        ("q_proj", "weight" | "bias") => Some(model.heads),
        ("k_proj", "weight" | "bias") => Some(model.kv_heads),
        _ => None,
    }
}

/// Hugging Face's row order of a q or k projection (weight or bias) of `shape` that llama.cpp
/// stored as `w.reshape(heads, 2, rows / heads / 2, ...).swapaxes(1, 2)`: within each head of
/// `2 * half` rows, stored row `2 * i + j` is Hugging Face's row `j * half + i`. `None` when the
/// rows are not a multiple of `2 * heads`.
fn unpermute_rows(values: &[f32], shape: &[usize], heads: usize) -> Option<Vec<f32>> {
    let &rows = shape.first()?;
    if heads == 0 || !rows.is_multiple_of(2 * heads) || !values.len().is_multiple_of(rows) {
        return None;
    }
    if values.is_empty() {
        return Some(Vec::new());
    }
    let width = values.len() / rows;
    let half = rows / heads / 2;
    let mut out = vec![0.0; values.len()];
    for (stored, row) in values.chunks_exact(width).enumerate() {
        let (head, k) = (stored / (2 * half), stored % (2 * half));
        let hf = head * 2 * half + (k % 2) * half + k / 2;
        out[hf * width..(hf + 1) * width].copy_from_slice(row);
    }
    Some(out)
}

/// A kiln-gguf error as a runtime error, naming the same file once.
fn from_gguf(e: GgufError) -> RuntimeError {
    let text = e.to_string();
    let message = text
        .strip_prefix(e.file())
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(&text);
    RuntimeError::new(e.file(), None, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        let cases = [
            ("token_embd.weight", Some("model.embed_tokens.weight")),
            ("output.weight", Some("lm_head.weight")),
            (
                "blk.3.ffn_norm.weight",
                Some("model.layers.3.post_attention_layernorm.weight"),
            ),
            (
                "blk.12.attn_k.bias",
                Some("model.layers.12.self_attn.k_proj.bias"),
            ),
            (
                "blk.0.attn_output.weight",
                Some("model.layers.0.self_attn.o_proj.weight"),
            ),
            (
                "blk.0.ffn_down.weight",
                Some("model.layers.0.mlp.down_proj.weight"),
            ),
            ("rope_freqs.weight", None),
            ("blk.x.attn_q.weight", None),
            ("blk.0.attn_q.scale", None),
            ("blk.0.attn_q.weight.extra", None),
        ];
        for (gguf, hf) in cases {
            assert_eq!(hf_name(gguf).as_deref(), hf, "{gguf}");
        }
    }

    /// llama.cpp's converter, spelled as its reshape/swapaxes: stored[h][i][j] = hf[h][j][i].
    fn permute(hf: &[f32], rows: usize, heads: usize) -> Vec<f32> {
        let (half, width) = (rows / heads / 2, hf.len() / rows);
        let mut stored = Vec::new();
        for h in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let row = h * 2 * half + j * half + i;
                    stored.extend_from_slice(&hf[row * width..(row + 1) * width]);
                }
            }
        }
        stored
    }

    #[test]
    fn one_head_of_four_rows_pairs_row_i_with_row_i_plus_two() {
        // Hugging Face rotates (a, c) and (b, d); llama.cpp stores the pairs adjacent.
        assert_eq!(
            unpermute_rows(&[0.0, 2.0, 1.0, 3.0], &[4], 1),
            Some(vec![0.0, 1.0, 2.0, 3.0])
        );
    }

    #[test]
    fn unpermute_undoes_the_converter_for_weights_and_biases() {
        for (shape, heads) in [
            (vec![12, 3], 3),
            (vec![16, 5], 2),
            (vec![8], 4),
            (vec![8], 1),
        ] {
            let hf: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|v| v as f32)
                .collect();
            let stored = permute(&hf, shape[0], heads);
            assert_eq!(
                unpermute_rows(&stored, &shape, heads),
                Some(hf),
                "{shape:?}"
            );
        }
    }

    #[test]
    fn rows_that_do_not_split_into_pairs_per_head_are_refused() {
        assert_eq!(unpermute_rows(&[0.0; 6], &[6], 2), None);
        assert_eq!(unpermute_rows(&[0.0; 4], &[4], 0), None);
        assert_eq!(unpermute_rows(&[], &[], 1), None);
    }
}
