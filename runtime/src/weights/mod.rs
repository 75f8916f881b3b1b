//! Loading a model's weights in the layout an artifact expects.
//!
//! This module owns the public entry points ([`load_weights`] for a path,
//! [`load_weights_from_bytes`] for a file held in memory), the choice of reader, and the one rule
//! every source obeys: the weights found must be exactly the manifest's weights, by name and
//! shape (see `plan`). The readers (`safetensors`, `gguf`) only list what a file holds under
//! Hugging Face names and decode the tensors they are asked for.
//!
//! Every tensor comes back in Hugging Face's layout (row-major, `[out, in]` for linear layers)
//! and in the type the manifest asks for — `f32`, `bf16` or `f16` — whatever the file stored:
//! each tensor is decoded to f32, then rounded to nearest even into the manifest's type, one
//! tensor at a time, so no f32 copy of a narrow model exists at once. No input makes the loader
//! panic.

mod gguf;
mod plan;
mod safetensors;

use std::fs::File;
use std::path::Path;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{Result, RuntimeError};
use crate::manifest::{ElemType, ModelInfo, TensorDesc};
use crate::tensor::Tensor;

/// Weights in the layout and types an artifact expects: one tensor per `Manifest::weights`
/// entry, same order.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSet {
    pub tensors: Vec<Tensor>,
}

/// Loads the weights `expected` (the manifest's `weights`: names, dtypes and shapes in Hugging
/// Face's layout) of `model` (the manifest's `model`) from `path`, which is one of:
/// - a `.gguf` file (llama or qwen2 architecture, any type kiln-gguf dequantizes);
/// - a `.json` file: a sharded checkpoint's `model.safetensors.index.json`;
/// - a directory holding `model.safetensors` or, failing that, `model.safetensors.index.json`;
/// - any other file: a single safetensors file.
///
/// The file must hold every expected tensor with the expected shape and nothing else, except a
/// `lm_head.weight` that a model with tied embeddings does not expect.
pub fn load_weights(path: &Path, expected: &[TensorDesc], model: &ModelInfo) -> Result<WeightSet> {
    let source = path.display().to_string();
    check_types(&source, expected)?;
    let tensors = if path.extension().is_some_and(|e| e == "gguf") {
        gguf::load(path, expected, model)?
    } else {
        safetensors::load(path, expected, model)?
    };
    Ok(WeightSet { tensors })
}

/// Loads the weights `expected` of `model`, as [`load_weights`] does, from the bytes of one whole
/// weights file held in memory (read by the application, or embedded with `include_bytes!`):
/// - bytes that open with GGUF's magic `GGUF` are a `.gguf` file;
/// - any other bytes are a single safetensors file (a sharded checkpoint needs [`load_weights`]).
///
/// `source` names the bytes in errors, where a path would. The rules and checks are those of
/// [`load_weights`]; the bytes need no particular alignment.
pub fn load_weights_from_bytes(
    bytes: &[u8],
    source: &str,
    expected: &[TensorDesc],
    model: &ModelInfo,
) -> Result<WeightSet> {
    check_types(source, expected)?;
    let tensors = if bytes.starts_with(GGUF_MAGIC) {
        gguf::load_bytes(bytes, source, expected, model)?
    } else {
        safetensors::load_bytes(bytes, source, expected, model)?
    };
    Ok(WeightSet { tensors })
}

/// The first bytes of every GGUF file.
const GGUF_MAGIC: &[u8] = b"GGUF";

/// Refuses a manifest expecting weights in a type the loader does not produce.
fn check_types(source: &str, expected: &[TensorDesc]) -> Result<()> {
    let produced = [ElemType::F32, ElemType::Bf16, ElemType::F16];
    match expected.iter().find(|t| !produced.contains(&t.dtype)) {
        None => Ok(()),
        Some(t) => Err(RuntimeError::tensor(
            source,
            &t.name,
            format!(
                "the artifact expects {}, but the weight loader produces only f32, bf16 and f16",
                t.dtype.name()
            ),
        )),
    }
}

/// The decoded `values` of the tensor `desc` describes, in its type (rounded to nearest even).
pub fn typed(values: Vec<f32>, desc: &TensorDesc) -> Tensor {
    let mut t = Tensor::zeros(desc.dtype, &desc.shape);
    match desc.dtype {
        ElemType::Bf16 => narrow(&values, t.bytes_mut(), |v| bf16::from_f32(v).to_le_bytes()),
        ElemType::F16 => narrow(&values, t.bytes_mut(), |v| f16::from_f32(v).to_le_bytes()),
        _ => t.as_f32_mut().copy_from_slice(&values),
    }
    t
}

fn narrow(values: &[f32], bytes: &mut [u8], round: fn(f32) -> [u8; 2]) {
    for (to, &v) in bytes.chunks_exact_mut(2).zip(values) {
        to.copy_from_slice(&round(v));
    }
}

/// Maps the file at `path` into memory, read-only.
fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| RuntimeError::io(path.display().to_string(), e))?;
    // SAFETY: the mapping is only read, and kiln never writes a weights file while loading it.
    // As with every mmap-based loader, another process truncating the file meanwhile would fault.
    unsafe { Mmap::map(&file) }.map_err(|e| RuntimeError::io(path.display().to_string(), e))
}
