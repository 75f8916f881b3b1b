//! Float functions of the fused elementwise regions as PTX sequences, on `f32` registers.
//!
//! Error bounds (for finite results, relative to the exact value, in units in the last place
//! of the f32 result; NaN in, NaN out), as `math_tests.rs` checks them on many inputs with an
//! emulator whose `ex2.approx` is exact, plus the 2 ulp `ex2.approx.f32` may add on the GPU:
//! - `sqrt`, `recip`, division: IEEE, correctly rounded (`sqrt.rn`, `rcp.rn`, `div.rn`);
//!   `rsqrt` is `rcp.rn(sqrt.rn(x))`, two roundings: within 1.5 ulp.
//! - `exp`: `x = j·ln2 + r` with `j` an integer and `|r| ≤ ln2/2` (ln2 in two parts, FMA), then
//!   `ex2.approx(r·log2e)` scaled by `2^j` built in the exponent bits as two factors (so
//!   subnormal and overflowing results round once): within 3 ulp; 0 below -104, infinity
//!   above 89.
//! - `sigmoid`: `1 / (1 + exp(-x))`, within 4 ulp.
//! - `log`: `x = m·2^e` with `m ∈ [√½, √2)`, `log m = 2·atanh(s)`, `s = (m−1)/(m+1)`, by its
//!   odd series to `s¹³` (truncation below 1e-9), plus `e·ln2` in two parts: within 2 ulp.
//!   `log 0 = -∞`, `log x = NaN` for `x < 0`, `log ∞ = ∞`.
//! - `tanh`: for `|x| < 0.5` its Taylor series to `x¹⁷` (truncation below 1e-9); otherwise
//!   `sign(x)·(1 − 2/(e^{2|x|} + 1))`: within 4 ulp.
//! - `erf`: for `|x| < 0.5` its Taylor series to `x¹³`, within 3 ulp; otherwise Abramowitz &
//!   Stegun 7.1.26, `1 − t·P(t)·e^{−x²}` (1.5e-7 absolute as a formula), whose f32 evaluation
//!   stays within 4e-7 absolute (relative: 8e-7, as `|erf x| ≥ 0.52` there).
//! - `sin`, `cos`: reduced by `π/2` in f64 (`π/2` in two f64 parts, FMA), the Taylor series on
//!   `|r| ≤ π/4` in f64 to `r¹⁵`/`r¹⁶`, rounded once to f32: within 1 ulp for `|x| < 2³⁰`
//!   (checked to 10⁹); the reduction loses accuracy beyond.
//! - `pow(a, b)`: `exp(b·log|a|)`, signed for negative `a` and integer `b` (NaN for other
//!   negative `a`), 1 when `b = 0` or `a = 1`: within `(5 + 2·|b·ln a|)` ulp.

use super::builder::KernelBuilder;
use super::types::{Cmp, Reg, Ty};

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `j·LN2_HI` is exact for the exponents that occur (16 significant bits).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `c[0] + x·(c[1] + x·(c[2] + …))` by FMA.
fn horner(b: &mut KernelBuilder, x: Reg, coeffs: &[f64]) -> Reg {
    let (last, rest) = coeffs.split_last().expect("a polynomial has a coefficient");
    let c = |v: f64| -> crate::ptx::Operand {
        if x.ty == Ty::F64 {
            v.into()
        } else {
            (v as f32).into()
        }
    };
    let mut acc = b.mov(x.ty, c(*last));
    for &k in rest.iter().rev() {
        acc = b.mad(acc, x, c(k));
    }
    acc
}

/// `2^j` for an `s32` register holding `j ∈ [-126, 127]`.
fn pow2(b: &mut KernelBuilder, j: Reg) -> Reg {
    let biased = b.add(j, 127i64);
    let bits = b.shl(biased, 23);
    b.mov(Ty::F32, bits)
}

pub fn exp(b: &mut KernelBuilder, x: Reg) -> Reg {
    let hi = b.min(x, 89.0f32);
    let xc = b.max(hi, -104.0f32);
    let t = b.mul(xc, LOG2_E);
    let j = b.cvt(Ty::F32, None, t, None, "rni");
    let neg_j = b.neg(j);
    let r = b.mad(neg_j, LN2_HI, xc);
    let r = b.mad(neg_j, LN2_LO, r);
    let r2 = b.mul(r, LOG2_E);
    let p = b.ex2(r2);
    let ji = b.cvt(Ty::S32, None, j, None, "rzi");
    let j1 = b.shr(ji, 1);
    let j2 = b.sub(ji, j1);
    let s1 = pow2(b, j1);
    let s2 = pow2(b, j2);
    let y = b.mul(p, s1);
    b.mul(y, s2)
}

pub fn sigmoid(b: &mut KernelBuilder, x: Reg) -> Reg {
    let n = b.neg(x);
    let e = exp(b, n);
    let d = b.add(e, 1.0f32);
    b.rcp(d)
}

pub fn rsqrt(b: &mut KernelBuilder, x: Reg) -> Reg {
    let s = b.sqrt(x);
    b.rcp(s)
}

pub fn log(b: &mut KernelBuilder, x: Reg) -> Reg {
    // Subnormals are scaled into the normal range first.
    let tiny = b.setp(Cmp::Lt, x, f32::MIN_POSITIVE);
    let scaled = b.mul(x, 8_388_608.0f32);
    let xs = b.selp(scaled, x, tiny, Ty::F32);
    let adjust = b.selp(-23i64, 0i64, tiny, Ty::S32);
    let bits = b.mov(Ty::S32, xs);
    let exp_bits = b.shr(bits, 23);
    let e = b.sub(exp_bits, 127i64);
    let e = b.add(e, adjust);
    let mant = b.and(bits, 0x007f_ffffi64);
    let mant = b.or(mant, 0x3f80_0000i64);
    let m = b.mov(Ty::F32, mant);
    let big = b.setp(Cmp::Gt, m, std::f32::consts::SQRT_2);
    let half = b.mul(m, 0.5f32);
    let m = b.selp(half, m, big, Ty::F32);
    let one_more = b.add(e, 1i64);
    let e = b.selp(one_more, e, big, Ty::S32);
    let f = b.sub(m, 1.0f32);
    let d = b.add(f, 2.0f32);
    let s = b.div(f, d);
    let z = b.mul(s, s);
    // 2·atanh(s) = 2s + s·(2z/3 + 2z²/5 + …).
    let series = horner(
        b,
        z,
        &[
            0.0,
            2.0 / 3.0,
            2.0 / 5.0,
            2.0 / 7.0,
            2.0 / 9.0,
            2.0 / 11.0,
            2.0 / 13.0,
        ],
    );
    let two_s = b.add(s, s);
    let log_m = b.mad(s, series, two_s);
    let ef = b.cvt(Ty::F32, None, e, None, "rn");
    let low = b.mad(ef, LN2_LO, log_m);
    let y = b.mad(ef, LN2_HI, low);
    // log 0 = -inf; negative or NaN → NaN; log inf = inf.
    let zero = b.setp(Cmp::Eq, x, 0.0f32);
    let y = b.selp(f32::NEG_INFINITY, y, zero, Ty::F32);
    let inf = b.setp(Cmp::Eq, x, f32::INFINITY);
    let y = b.selp(f32::INFINITY, y, inf, Ty::F32);
    let nan = b.setp(Cmp::Nan, x, x);
    let negative = b.setp(Cmp::Lt, x, 0.0f32);
    let invalid = b.or(nan, negative);
    b.selp(f32::NAN, y, invalid, Ty::F32)
}

/// `sign(x)·|value|`.
fn copysign(b: &mut KernelBuilder, value: Reg, x: Reg) -> Reg {
    let magnitude = b.abs(value);
    let negative = b.neg(magnitude);
    let is_neg = b.setp(Cmp::Lt, x, 0.0f32);
    b.selp(negative, magnitude, is_neg, Ty::F32)
}

/// `x + x³·P(x²)` for odd Taylor coefficients `[c₁, c₃, c₅, …]`.
fn odd_series(b: &mut KernelBuilder, x: Reg, coeffs: &[f64]) -> Reg {
    let x2 = b.mul(x, x);
    let p = horner(b, x2, &coeffs[1..]);
    let x3 = b.mul(x2, x);
    let c1 = b.mul(x, coeffs[0] as f32);
    b.mad(x3, p, c1)
}

pub fn tanh(b: &mut KernelBuilder, x: Reg) -> Reg {
    const TAYLOR: [f64; 9] = [
        1.0,
        -1.0 / 3.0,
        2.0 / 15.0,
        -17.0 / 315.0,
        62.0 / 2835.0,
        -1382.0 / 155_925.0,
        21844.0 / 6_081_075.0,
        -929_569.0 / 638_512_875.0,
        6_404_582.0 / 10_854_718_875.0,
    ];
    let small = odd_series(b, x, &TAYLOR);
    let ax = b.abs(x);
    let two = b.add(ax, ax);
    let e = exp(b, two);
    let d = b.add(e, 1.0f32);
    let two_c = b.mov(Ty::F32, 2.0f32);
    let q = b.div(two_c, d);
    let one = b_one(b);
    let large = b.sub(one, q);
    let large = copysign(b, large, x);
    let is_small = b.setp(Cmp::Lt, ax, 0.5f32);
    b.selp(small, large, is_small, Ty::F32)
}

fn b_one(b: &mut KernelBuilder) -> Reg {
    b.mov(Ty::F32, 1.0f32)
}

pub fn erf(b: &mut KernelBuilder, x: Reg) -> Reg {
    // erf x = 2/√π · Σ (-1)ⁿ x^{2n+1} / (n!·(2n+1)).
    let taylor: Vec<f64> = (0..7)
        .map(|n| std::f64::consts::FRAC_2_SQRT_PI * sign(n) / (factorial(n) * f64::from(2 * n + 1)))
        .collect();
    // Abramowitz & Stegun 7.1.26.
    const P: f32 = 0.327_591_1;
    const A: [f64; 6] = [
        0.0,
        0.254_829_592,
        -0.284_496_736,
        1.421_413_741,
        -1.453_152_027,
        1.061_405_429,
    ];
    let small = odd_series(b, x, &taylor);
    let ax = b.abs(x);
    let d = b.mad(ax, P, 1.0f32);
    let t = b.rcp(d);
    let poly = horner(b, t, &A);
    let x2 = b.mul(ax, ax);
    let nx2 = b.neg(x2);
    let e = exp(b, nx2);
    let tail = b.mul(poly, e);
    let one = b_one(b);
    let large = b.sub(one, tail);
    let large = copysign(b, large, x);
    let is_small = b.setp(Cmp::Lt, ax, 0.5f32);
    b.selp(small, large, is_small, Ty::F32)
}

/// `sin x` (`cosine` false) or `cos x` (true); see the module doc.
fn sin_cos(b: &mut KernelBuilder, x: Reg, cosine: bool) -> Reg {
    const TWO_OVER_PI: f64 = std::f64::consts::FRAC_2_PI;
    const PIO2_HI: f64 = std::f64::consts::FRAC_PI_2;
    const PIO2_LO: f64 = 6.123_233_995_736_766e-17;
    let sin_taylor: Vec<f64> = (0..8).map(|n| sign(n) / factorial(2 * n + 1)).collect();
    let cos_taylor: Vec<f64> = (0..9).map(|n| sign(n) / factorial(2 * n)).collect();
    let xd = b.cvt(Ty::F64, None, x, None, "");
    let t = b.mul(xd, TWO_OVER_PI);
    let k = b.cvt(Ty::F64, None, t, None, "rni");
    let nk = b.neg(k);
    let r = b.mad(nk, PIO2_HI, xd);
    let r = b.mad(nk, PIO2_LO, r);
    let r2 = b.mul(r, r);
    let s_poly = horner(b, r2, &sin_taylor);
    let s = b.mul(s_poly, r);
    let c = horner(b, r2, &cos_taylor);
    // The quadrant: k mod 4 (two's complement keeps it right for negative k).
    let ki = b.cvt(Ty::S64, None, k, None, "rzi");
    let ki = if cosine { b.add(ki, 1i64) } else { ki };
    let q = b.and(ki, 3i64);
    let odd = b.and(q, 1i64);
    let use_cos = b.setp(Cmp::Ne, odd, 0i64);
    let v = b.selp(c, s, use_cos, Ty::F64);
    let high = b.and(q, 2i64);
    let flip = b.setp(Cmp::Ne, high, 0i64);
    let nv = b.neg(v);
    let v = b.selp(nv, v, flip, Ty::F64);
    b.cvt(Ty::F32, None, v, None, "rn")
}

fn sign(n: u32) -> f64 {
    if n.is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

fn factorial(n: u32) -> f64 {
    (1..=n).map(f64::from).product()
}

pub fn sin(b: &mut KernelBuilder, x: Reg) -> Reg {
    sin_cos(b, x, false)
}

/// `cos x = sin(x + π/2)`: the same reduction, one quadrant on.
pub fn cos(b: &mut KernelBuilder, x: Reg) -> Reg {
    sin_cos(b, x, true)
}

pub fn pow(b: &mut KernelBuilder, a: Reg, e: Reg) -> Reg {
    let abs_a = b.abs(a);
    let la = log(b, abs_a);
    let t = b.mul(e, la);
    let magnitude = exp(b, t);
    // Negative bases: integer exponents give a signed result, others NaN.
    let whole = b.cvt(Ty::F32, None, e, None, "rzi");
    let integer = b.setp(Cmp::Eq, whole, e);
    let wi = b.cvt(Ty::S64, None, e, None, "rzi");
    let low = b.and(wi, 1i64);
    let odd = b.setp(Cmp::Ne, low, 0i64);
    let negated = b.neg(magnitude);
    let signed = b.selp(negated, magnitude, odd, Ty::F32);
    let for_negative = b.selp(signed, f32::NAN, integer, Ty::F32);
    let negative = b.setp(Cmp::Lt, a, 0.0f32);
    let y = b.selp(for_negative, magnitude, negative, Ty::F32);
    let zero_exp = b.setp(Cmp::Eq, e, 0.0f32);
    let unit = b.setp(Cmp::Eq, a, 1.0f32);
    let one = b.or(zero_exp, unit);
    b.selp(1.0f32, y, one, Ty::F32)
}
