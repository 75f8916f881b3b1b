//! Q4_K: super-blocks of 256 elements in 144 bytes: an f16 scale `d`, an f16 scale `dmin`,
//! 12 bytes packing eight 6-bit scales and eight 6-bit mins, then 128 bytes of 4-bit quants.
//!
//! The 256 elements are eight sub-blocks of 32. Sub-block `j` has scale `d * sc[j]` and offset
//! `dmin * mn[j]`; an element is `d * sc[j] * nibble - dmin * mn[j]`. Quant bytes come in four
//! runs of 32: run `r`'s low nibbles are sub-block `2r`, its high nibbles sub-block `2r + 1`.
//!
//! The 12 scale bytes `s`: for `j < 4`, `sc[j] = s[j] & 63` and `mn[j] = s[j + 4] & 63`; for
//! `j >= 4`, the low four bits come from `s[j + 4]` (low nibble for `sc`, high for `mn`) and the
//! top two from the spare high bits of `s[j - 4]` (for `sc`) and `s[j]` (for `mn`).

use super::f16_at;

pub(super) fn decode(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(256)) {
        let d = f16_at(block, 0);
        let dmin = f16_at(block, 2);
        let scales = &block[4..16];
        let quants = &block[16..];
        for (r, (run, y)) in quants
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (lo, hi) = y.split_at_mut(32);
            let (sc0, mn0) = scale_min(scales, 2 * r);
            let (sc1, mn1) = scale_min(scales, 2 * r + 1);
            let (d0, m0) = (d * f32::from(sc0), dmin * f32::from(mn0));
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(mn1));
            for ((a, b), &q) in lo.iter_mut().zip(hi).zip(run) {
                *a = d0 * f32::from(q & 0x0F) - m0;
                *b = d1 * f32::from(q >> 4) - m1;
            }
        }
    }
}

/// Sub-block `j`'s 6-bit scale and min, unpacked from the 12 scale bytes `s`.
fn scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}
