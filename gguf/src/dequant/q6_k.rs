//! Q6_K: super-blocks of 256 elements in 210 bytes: 128 bytes `ql` of low 4 bits, 64 bytes
//! `qh` of high 2 bits, 16 signed 8-bit scales `sc`, then an f16 scale `d`.
//!
//! Element `i` is `d * sc[i / 16] * (q - 32)`, with `q` a 6-bit quant. The super-block is two
//! halves of 128; in half `h`, element `e` (`0..128`) has its low bits in `ql[64h + e % 64]`
//! (the low nibble for `e < 64`, else the high one) and its high bits in
//! `qh[32h + e % 32]` at bit `2 * (e / 32)`.

use super::f16_at;

pub(super) fn decode(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
        let (ql, rest) = block.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (sc, rest) = rest.split_at(16);
        let d = f16_at(rest, 0);
        for (i, x) in y.iter_mut().enumerate() {
            let (h, e) = (i / 128, i % 128);
            let low = ql[64 * h + e % 64] >> (4 * (e / 64)) & 0x0F;
            let high = qh[32 * h + e % 32] >> (2 * (e / 32)) & 0x03;
            let q = (low | high << 4) as i8 - 32;
            *x = d * f32::from(sc[i / 16] as i8) * f32::from(q);
        }
    }
}
