//! The float function sequences of `math.rs`, run by the emulator on many inputs and compared
//! with f64 references: each stays within the error its module doc states, and the special
//! values (NaN, ±∞, 0, negative arguments of `log`) come out as the IR defines them. The
//! emulator's `ex2.approx` is correctly rounded, so the bounds checked here are the documented
//! ones less the 2 ulp the hardware's may add where a function goes through it.

use super::emulate::Program;
use super::{math, KernelBuilder, Reg, Ty};

/// A compiled one- or two-argument function.
struct Function {
    program: Program,
    args: Vec<String>,
    result: String,
}

impl Function {
    fn new(arity: usize, f: impl Fn(&mut KernelBuilder, &[Reg]) -> Reg) -> Function {
        let mut b = KernelBuilder::new("f", &[]);
        let args: Vec<Reg> = (0..arity).map(|_| b.reg(Ty::F32)).collect();
        let y = f(&mut b, &args);
        Function {
            program: Program::parse(&b.finish()),
            args: args.iter().map(|r| r.to_string()).collect(),
            result: y.to_string(),
        }
    }

    fn unary(f: fn(&mut KernelBuilder, Reg) -> Reg) -> Function {
        Function::new(1, |b, a| f(b, a[0]))
    }

    fn eval(&self, xs: &[f32]) -> f32 {
        let inputs: Vec<(String, u64)> = self
            .args
            .iter()
            .zip(xs)
            .map(|(r, x)| (r.clone(), x.to_bits() as u64))
            .collect();
        f32::from_bits(self.program.run(&inputs)[&self.result] as u32)
    }
}

/// `|got − want|` in units in the last place of `want` rounded to f32 (0 when both are the
/// same NaN-ness or infinity, ∞ when only one is).
fn ulps(got: f32, want: f64) -> f64 {
    if want.is_nan() || got.is_nan() {
        return if want.is_nan() && got.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    let w = want as f32;
    if w.is_infinite() || got.is_infinite() {
        return if got == w { 0.0 } else { f64::INFINITY };
    }
    let exponent = if w.abs() < f32::MIN_POSITIVE {
        -149
    } else {
        (w.abs().to_bits() >> 23) as i32 - 127 - 23
    };
    (got as f64 - want).abs() / 2f64.powi(exponent)
}

/// `count` values spread evenly over `lo..=hi`, with their negatives when `signed`.
fn spread(lo: f32, hi: f32, count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| lo + (hi - lo) * i as f32 / (count - 1) as f32)
        .collect()
}

/// Positive floats from `lo` to `hi`, evenly in the logarithm.
fn geometric(lo: f32, hi: f32, count: usize) -> Vec<f32> {
    let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
    (0..count)
        .map(|i| (a + (b - a) * i as f64 / (count - 1) as f64).exp() as f32)
        .collect()
}

/// The largest error of `f` against `reference` over `inputs`, failing on a special value.
fn worst(f: &Function, inputs: &[f32], reference: impl Fn(f64) -> f64) -> f64 {
    let mut worst = 0.0f64;
    for &x in inputs {
        let e = ulps(f.eval(&[x]), reference(x as f64));
        assert!(
            e.is_finite(),
            "f({x:e}) = {:e}, want {:e}",
            f.eval(&[x]),
            reference(x as f64)
        );
        worst = worst.max(e);
    }
    worst
}

fn with_negatives(mut xs: Vec<f32>) -> Vec<f32> {
    let negated: Vec<f32> = xs.iter().map(|x| -x).collect();
    xs.extend(negated);
    xs
}

#[test]
fn exp_and_sigmoid_within_their_bounds() {
    let exp = Function::unary(math::exp);
    let xs = spread(-103.0, 88.7, 40_001);
    let e = worst(&exp, &xs, f64::exp);
    assert!(e <= 1.0, "exp: {e} ulp");
    assert_eq!(exp.eval(&[f32::INFINITY]), f32::INFINITY);
    assert_eq!(exp.eval(&[f32::NEG_INFINITY]), 0.0);
    assert_eq!(exp.eval(&[-200.0]), 0.0);
    assert!(exp.eval(&[f32::NAN]).is_nan());
    let sigmoid = Function::unary(math::sigmoid);
    let e = worst(&sigmoid, &spread(-80.0, 80.0, 40_001), |x| {
        1.0 / (1.0 + (-x).exp())
    });
    assert!(e <= 2.0, "sigmoid: {e} ulp");
}

#[test]
fn log_within_its_bound_and_special_values() {
    let log = Function::unary(math::log);
    let mut xs = geometric(1e-44, 3e38, 40_001);
    xs.extend(spread(0.5, 2.0, 20_001));
    let e = worst(&log, &xs, f64::ln);
    assert!(e <= 2.0, "log: {e} ulp");
    assert_eq!(log.eval(&[0.0]), f32::NEG_INFINITY);
    assert_eq!(log.eval(&[f32::INFINITY]), f32::INFINITY);
    assert!(log.eval(&[-1.0]).is_nan() && log.eval(&[f32::NAN]).is_nan());
}

#[test]
fn tanh_and_erf_within_their_bounds() {
    let tanh = Function::unary(math::tanh);
    let mut xs = with_negatives(geometric(1e-30, 20.0, 40_001));
    xs.push(0.0);
    let e = worst(&tanh, &xs, f64::tanh);
    assert!(e <= 2.0, "tanh: {e} ulp");
    assert_eq!(tanh.eval(&[f32::INFINITY]), 1.0);
    let erf = Function::unary(math::erf);
    let xs = with_negatives(geometric(1e-30, 10.0, 40_001));
    let mut abs = 0.0f64;
    let mut small = 0.0f64;
    for &x in &xs {
        let (got, want) = (erf.eval(&[x]) as f64, erf_reference(x as f64));
        if x.abs() < 0.5 {
            small = small.max(ulps(got as f32, want));
        } else {
            abs = abs.max((got - want).abs());
        }
    }
    assert!(small <= 3.0, "erf below 0.5: {small} ulp");
    assert!(abs <= 3.5e-7, "erf from 0.5: absolute error {abs:e}");
}

/// `erf` in f64: its Taylor series below 4 (terms alternate; cancellation costs at most 8 of
/// the 16 digits there), 1 beyond (`erfc 4` is below half an f32 ulp of 1).
fn erf_reference(x: f64) -> f64 {
    if x.abs() >= 4.0 {
        return x.signum();
    }
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-30 {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
    }
    sum * std::f64::consts::FRAC_2_SQRT_PI
}

#[test]
fn sin_and_cos_within_one_ulp() {
    let sin = Function::unary(math::sin);
    let cos = Function::unary(math::cos);
    let mut xs = with_negatives(spread(0.0, 100_000.0, 40_001));
    xs.extend(with_negatives(geometric(1e-30, 1e9, 20_001)));
    let e = worst(&sin, &xs, f64::sin);
    assert!(e <= 1.0, "sin: {e} ulp");
    let e = worst(&cos, &xs, f64::cos);
    assert!(e <= 1.0, "cos: {e} ulp");
    assert!(sin.eval(&[f32::INFINITY]).is_nan() && cos.eval(&[f32::NAN]).is_nan());
}

#[test]
fn pow_rsqrt_and_signs() {
    let pow = Function::new(2, |b, a| math::pow(b, a[0], a[1]));
    let mut worst_excess = 0.0f64;
    for &a in &geometric(0.1, 10.0, 201) {
        for &e in &spread(-4.0, 4.0, 201) {
            let want = (a as f64).powf(e as f64);
            let err = ulps(pow.eval(&[a, e]), want);
            // The bound of the module doc, (5 + 2·|e·ln a|) ulp, less ex2.approx's 2.
            let t = (e as f64 * (a as f64).ln()).abs();
            worst_excess = worst_excess.max(err - (3.0 + 2.0 * t));
        }
    }
    assert!(
        worst_excess <= 0.0,
        "pow exceeds its bound by {worst_excess} ulp"
    );
    assert_eq!(pow.eval(&[-2.0, 3.0]), -8.0);
    assert_eq!(pow.eval(&[-2.0, 2.0]), 4.0);
    assert!(pow.eval(&[-2.0, 0.5]).is_nan());
    assert_eq!(pow.eval(&[f32::NAN, 0.0]), 1.0);
    assert_eq!(pow.eval(&[0.0, 2.0]), 0.0);
    let rsqrt = Function::unary(math::rsqrt);
    let e = worst(&rsqrt, &geometric(1e-38, 1e38, 20_001), |x| 1.0 / x.sqrt());
    assert!(e <= 1.5, "rsqrt: {e} ulp");
}
