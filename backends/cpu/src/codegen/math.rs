//! Element operations: one IR unary / binary / select / cast on scalars, or on `f32x4` lanes for
//! the float ops that have a vector form.
//!
//! `exp` (and `sigmoid` through it) is kiln's own polynomial, vectorized: range reduction by
//! `ln 2` in two parts, a degree-6 polynomial on `[-ln2/2, ln2/2]`, and `2ⁿ` built in the
//! float's bits (as two factors, so subnormal and near-overflow results are right); relative
//! error below 2e-7 on the normal range, infinity above it, 0 below `-104`.
//! `log`, `sin`, `cos`, `tanh`, `erf` and `pow` call the runtime's scalar functions
//! (`RUNTIME_FUNCTIONS`), so expressions holding them are not vectorized.

use super::builder::{scalar_type, KernelFn, PTR};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, Signature, Type, Value};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::DType;
use kiln_runtime::manifest::RUNTIME_FUNCTIONS;

/// Whether `op` on f32 has a vector form here.
pub fn unary_vectorizes(op: UnaryOp) -> bool {
    matches!(
        op,
        UnaryOp::Neg
            | UnaryOp::Abs
            | UnaryOp::Exp
            | UnaryOp::Sqrt
            | UnaryOp::Rsqrt
            | UnaryOp::Recip
            | UnaryOp::Sigmoid
    )
}

pub fn binary_vectorizes(op: BinaryOp) -> bool {
    matches!(
        op,
        BinaryOp::Add
            | BinaryOp::Sub
            | BinaryOp::Mul
            | BinaryOp::Div
            | BinaryOp::Max
            | BinaryOp::Min
    )
}

/// A constant of `dtype` (as `f32x4` lanes when `vector`).
pub fn constant(f: &mut KernelFn, value: f64, dtype: DType, vector: bool) -> Value {
    let scalar = match dtype {
        DType::F32 => f.b.ins().f32const(value as f32),
        DType::Bool => f.b.ins().iconst(types::I8, (value != 0.0) as i64),
        other => f.b.ins().iconst(scalar_type(other), value as i64),
    };
    if vector {
        f.b.ins().splat(types::F32X4, scalar)
    } else {
        scalar
    }
}

fn f32_const(f: &mut KernelFn, v: f32, ty: Type) -> Value {
    let s = f.b.ins().f32const(v);
    if ty.is_vector() {
        f.b.ins().splat(ty, s)
    } else {
        s
    }
}

fn runtime_call(f: &mut KernelFn, name: &str, args: &[Value]) -> Value {
    let index = RUNTIME_FUNCTIONS.iter().position(|n| *n == name).unwrap();
    let mut sig = Signature::new(f.call_conv);
    for _ in args {
        sig.params.push(AbiParam::new(types::F32));
    }
    sig.returns.push(AbiParam::new(types::F32));
    let sig = f.b.import_signature(sig);
    let callee = f.b.ins().load(
        PTR,
        MemFlagsData::new().with_notrap(),
        f.fns,
        (index * 8) as i32,
    );
    let call = f.b.ins().call_indirect(sig, callee, args);
    f.b.inst_results(call)[0]
}

/// `e^x` for `f32` or `f32x4`.
pub fn exp(f: &mut KernelFn, x: Value) -> Value {
    let ty = f.b.func.dfg.value_type(x);
    let (int_ty, lanes) = if ty.is_vector() {
        (types::I32X4, true)
    } else {
        (types::I32, false)
    };
    // Below `lo` e^x rounds to 0 in f32; above `hi` the result overflows to infinity.
    let lo = f32_const(f, -104.0, ty);
    let hi = f32_const(f, 89.0, ty);
    let clamped = f.b.ins().fmax(x, lo);
    let clamped = f.b.ins().fmin(clamped, hi);
    let log2e = f32_const(f, std::f32::consts::LOG2_E, ty);
    let scaled = f.b.ins().fmul(clamped, log2e);
    let n = f.b.ins().nearest(scaled);
    let ln2_hi = f32_const(f, -0.693_359_4, ty);
    let ln2_lo = f32_const(f, 2.121_944_4e-4, ty);
    let r = f.b.ins().fma(n, ln2_hi, clamped);
    let r = f.b.ins().fma(n, ln2_lo, r);
    let coeffs = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    let mut p = f32_const(f, coeffs[0], ty);
    for &c in &coeffs[1..] {
        let c = f32_const(f, c, ty);
        p = f.b.ins().fma(p, r, c);
    }
    let r2 = f.b.ins().fmul(r, r);
    let one = f32_const(f, 1.0, ty);
    let r1 = f.b.ins().fadd(r, one);
    let y = f.b.ins().fma(p, r2, r1);
    let ni = f.b.ins().fcvt_to_sint_sat(int_ty, n);
    let little = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    // 2ⁿ as 2^(n>>1)·2^(n−(n>>1)): for n in [-150, 128] each factor is a normal float, so
    // results next to overflow and in the subnormal range come out right.
    let half = f.b.ins().sshr_imm_s(ni, 1);
    let rest = f.b.ins().isub(ni, half);
    let mut result = y;
    for e in [half, rest] {
        let biased = if lanes {
            let bias = f.b.ins().iconst(types::I32, 127);
            let bias = f.b.ins().splat(types::I32X4, bias);
            f.b.ins().iadd(e, bias)
        } else {
            f.b.ins().iadd_imm_s(e, 127)
        };
        let bits = f.b.ins().ishl_imm_s(biased, 23);
        let scale = f.b.ins().bitcast(ty, little, bits);
        result = f.b.ins().fmul(result, scale);
    }
    // Below `lo` (and at -inf) the result is 0.
    let zero = f32_const(f, 0.0, ty);
    let small = f.b.ins().fcmp(FloatCC::LessThan, x, lo);
    if lanes {
        let mask = f.b.ins().bitcast(ty, little, small);
        f.b.ins().bitselect(mask, zero, result)
    } else {
        f.b.ins().select(small, zero, result)
    }
}

/// A unary op on a value of `dtype` (`f32x4` lanes when the value is a vector).
pub fn unary(f: &mut KernelFn, op: UnaryOp, dtype: DType, x: Value) -> Value {
    let ty = f.b.func.dfg.value_type(x);
    let float = dtype == DType::F32;
    match op {
        UnaryOp::Neg if float => f.b.ins().fneg(x),
        UnaryOp::Neg => f.b.ins().ineg(x),
        UnaryOp::Abs if float => f.b.ins().fabs(x),
        UnaryOp::Abs => f.b.ins().iabs(x),
        UnaryOp::Not => f.b.ins().bxor_imm_s(x, 1),
        UnaryOp::Exp => exp(f, x),
        UnaryOp::Sqrt => f.b.ins().sqrt(x),
        UnaryOp::Rsqrt => {
            let s = f.b.ins().sqrt(x);
            let one = f32_const(f, 1.0, ty);
            f.b.ins().fdiv(one, s)
        }
        UnaryOp::Recip => {
            let one = f32_const(f, 1.0, ty);
            f.b.ins().fdiv(one, x)
        }
        UnaryOp::Sigmoid => {
            let neg = f.b.ins().fneg(x);
            let e = exp(f, neg);
            let one = f32_const(f, 1.0, ty);
            let d = f.b.ins().fadd(one, e);
            f.b.ins().fdiv(one, d)
        }
        UnaryOp::Log => runtime_call(f, "logf", &[x]),
        UnaryOp::Tanh => runtime_call(f, "tanhf", &[x]),
        UnaryOp::Erf => runtime_call(f, "erff", &[x]),
        UnaryOp::Sin => runtime_call(f, "sinf", &[x]),
        UnaryOp::Cos => runtime_call(f, "cosf", &[x]),
    }
}

fn float_cc(op: BinaryOp) -> FloatCC {
    match op {
        BinaryOp::Eq => FloatCC::Equal,
        BinaryOp::Ne => FloatCC::NotEqual,
        BinaryOp::Lt => FloatCC::LessThan,
        BinaryOp::Le => FloatCC::LessThanOrEqual,
        BinaryOp::Gt => FloatCC::GreaterThan,
        _ => FloatCC::GreaterThanOrEqual,
    }
}

fn int_cc(op: BinaryOp) -> IntCC {
    match op {
        BinaryOp::Eq => IntCC::Equal,
        BinaryOp::Ne => IntCC::NotEqual,
        BinaryOp::Lt => IntCC::SignedLessThan,
        BinaryOp::Le => IntCC::SignedLessThanOrEqual,
        BinaryOp::Gt => IntCC::SignedGreaterThan,
        _ => IntCC::SignedGreaterThanOrEqual,
    }
}

/// A binary op whose operands are of `dtype`.
pub fn binary(f: &mut KernelFn, op: BinaryOp, dtype: DType, a: Value, b: Value) -> Value {
    let float = dtype == DType::F32;
    if op.is_compare() {
        return if float {
            f.b.ins().fcmp(float_cc(op), a, b)
        } else {
            f.b.ins().icmp(int_cc(op), a, b)
        };
    }
    match (op, float) {
        (BinaryOp::Add, true) => f.b.ins().fadd(a, b),
        (BinaryOp::Sub, true) => f.b.ins().fsub(a, b),
        (BinaryOp::Mul, true) => f.b.ins().fmul(a, b),
        (BinaryOp::Div, true) => f.b.ins().fdiv(a, b),
        (BinaryOp::Max, true) => f.b.ins().fmax(a, b),
        (BinaryOp::Min, true) => f.b.ins().fmin(a, b),
        (BinaryOp::Pow, _) => runtime_call(f, "powf", &[a, b]),
        (BinaryOp::Add, false) => f.b.ins().iadd(a, b),
        (BinaryOp::Sub, false) => f.b.ins().isub(a, b),
        (BinaryOp::Mul, false) => f.b.ins().imul(a, b),
        (BinaryOp::Div, false) => {
            // Integer division by zero gives 0 instead of trapping.
            let ty = f.b.func.dfg.value_type(b);
            let zero = f.b.ins().iconst(ty, 0);
            let one = f.b.ins().iconst(ty, 1);
            let is_zero = f.b.ins().icmp(IntCC::Equal, b, zero);
            let safe = f.b.ins().select(is_zero, one, b);
            let q = f.b.ins().sdiv(a, safe);
            f.b.ins().select(is_zero, zero, q)
        }
        (BinaryOp::Max, false) => f.b.ins().smax(a, b),
        (BinaryOp::Min, false) => f.b.ins().smin(a, b),
        (BinaryOp::And, _) => f.b.ins().band(a, b),
        (BinaryOp::Or, _) => f.b.ins().bor(a, b),
        _ => unreachable!("compares are handled above"),
    }
}

/// Scalar conversion between element types (floats to ints truncate toward zero, saturating).
pub fn cast(f: &mut KernelFn, from: DType, to: DType, x: Value) -> Value {
    let to_ty = scalar_type(to);
    match (from, to) {
        _ if from == to => x,
        (DType::BF16, DType::F32) => super::widen::bf16_to_f32(f, x),
        (DType::F32, DType::Bool) => {
            let zero = f.b.ins().f32const(0.0);
            f.b.ins().fcmp(FloatCC::NotEqual, x, zero)
        }
        (_, DType::Bool) => f.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0),
        (DType::F32, _) => f.b.ins().fcvt_to_sint_sat(to_ty, x),
        (DType::Bool, DType::F32) => {
            let wide = f.b.ins().uextend(types::I32, x);
            f.b.ins().fcvt_from_uint(types::F32, wide)
        }
        (_, DType::F32) => f.b.ins().fcvt_from_sint(types::F32, x),
        (DType::Bool, _) => f.b.ins().uextend(to_ty, x),
        (DType::I32, DType::I64) => f.b.ins().sextend(to_ty, x),
        _ => f.b.ins().ireduce(to_ty, x),
    }
}
