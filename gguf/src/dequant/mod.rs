//! Dequantization: a tensor's raw bytes, of one [`GgmlType`], to `f32` values.
//!
//! This module owns the public entry points, the length checks and the dispatch on the type;
//! each format's block decoder lives in its own file and is only ever handed whole blocks with
//! an output of exactly the matching length. Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
//! Q6_K; any other type is an [`ErrorKind::DequantUnsupported`] error. The results match
//! gguf-py's `gguf.quants.dequantize` (0.19.0) bit for bit; the tests check it against a fixture
//! that `tools/fixtures/make_dequant_fixtures.py` writes.

mod float;
mod q4_0;
mod q4_1;
mod q4_k;
mod q6_k;
mod q8_0;

use half::f16;

use crate::error::{ErrorKind, GgufError};
use crate::file::GgufFile;
use crate::ggml_type::GgmlType;
use crate::tensor::TensorInfo;

/// The types [`dequantize`] decodes.
pub const DEQUANT_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// The file name errors of [`dequantize`] carry: it sees bytes, not a file.
const NO_FILE: &str = "<tensor data>";

/// Decodes `bytes`, data of type `ty`, into `out`; `out.len()` is the element count. `bytes`
/// must be exactly the size of that many elements, and that a whole number of blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    let decode =
        checked(ty, out.len() as u64, bytes.len()).map_err(|k| GgufError::new(NO_FILE, k))?;
    decode(bytes, out);
    Ok(())
}

/// Decodes the data of `info`, a tensor of `file`; `data` is its bytes, as [`crate::tensor_data`]
/// returns them. Errors name the file and the tensor.
pub fn dequantize_tensor(
    file: &GgufFile,
    info: &TensorInfo,
    data: &[u8],
) -> Result<Vec<f32>, GgufError> {
    let fail =
        |kind| GgufError::new(&file.source, kind).reading(|| format!("tensor `{}`", info.name));
    let overflow = || {
        fail(ErrorKind::SizeOverflow {
            dims: info.dims.clone(),
        })
    };
    let numel = info.numel().ok_or_else(overflow)?;
    // Checked before allocating, so the output is bounded by the data given.
    let decode = checked(info.ggml_type, numel, data.len()).map_err(fail)?;
    let mut out = vec![0.0; usize::try_from(numel).map_err(|_| overflow())?];
    decode(data, &mut out);
    Ok(out)
}

/// The decoder for `ty`, once `len` bytes are checked to be exactly `numel` elements of it.
fn checked(ty: GgmlType, numel: u64, len: usize) -> Result<Decoder, ErrorKind> {
    let decode: Decoder = match ty {
        GgmlType::F32 => float::decode_f32,
        GgmlType::F16 => float::decode_f16,
        GgmlType::BF16 => float::decode_bf16,
        GgmlType::Q8_0 => q8_0::decode,
        GgmlType::Q4_0 => q4_0::decode,
        GgmlType::Q4_1 => q4_1::decode,
        GgmlType::Q4_K => q4_k::decode,
        GgmlType::Q6_K => q6_k::decode,
        _ => return Err(ErrorKind::DequantUnsupported { ggml_type: ty }),
    };
    if !numel.is_multiple_of(ty.block_size()) {
        return Err(ErrorKind::PartialBlock {
            numel,
            ggml_type: ty,
        });
    }
    let expected = ty
        .tensor_bytes(numel)
        .ok_or(ErrorKind::SizeOverflow { dims: vec![numel] })?;
    if expected != len as u64 {
        return Err(ErrorKind::DataLength {
            ggml_type: ty,
            numel,
            expected,
            found: len as u64,
        });
    }
    Ok(decode)
}

/// A block decoder: `bytes` is whole blocks and `out` exactly their elements.
type Decoder = fn(&[u8], &mut [f32]);

/// The f16 stored little-endian at `block[at..at + 2]`, as f32.
fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}
