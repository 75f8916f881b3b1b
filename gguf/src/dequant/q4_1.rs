//! Q4_1: blocks of 32 elements in 20 bytes, an f16 scale `d`, an f16 minimum `m`, then 16
//! bytes of 4-bit quants. Byte `j`'s low nibble is element `j`, its high nibble element
//! `j + 16`; an element is `nibble * d + m`.

use super::f16_at;

pub(super) fn decode(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(block, 0);
        let m = f16_at(block, 2);
        let (lo, hi) = y.split_at_mut(16);
        for ((a, b), &q) in lo.iter_mut().zip(hi).zip(&block[4..]) {
            *a = d * f32::from(q & 0x0F) + m;
            *b = d * f32::from(q >> 4) + m;
        }
    }
}
