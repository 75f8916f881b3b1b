//! Q8_0: blocks of 32 elements in 34 bytes, an f16 scale `d` then 32 signed 8-bit quants `q`;
//! element `i` is `q[i] * d`.

use super::f16_at;

pub(super) fn decode(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(block, 0);
        for (x, &q) in y.iter_mut().zip(&block[2..]) {
            *x = f32::from(q as i8) * d;
        }
    }
}
