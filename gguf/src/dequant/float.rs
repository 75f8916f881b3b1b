//! The plain float types: F32, F16 and BF16, little-endian, one element per block.
//!
//! F16 and BF16 widen exactly to f32 (the `half` crate), keeping infinities, signed zeros and
//! subnormals.

use half::{bf16, f16};

pub(super) fn decode_f32(bytes: &[u8], out: &mut [f32]) {
    for (x, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

pub(super) fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    for (x, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *x = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

pub(super) fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
    for (x, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *x = bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}
