//! Elementwise expressions (`ExprNode` lists of map, reduce and epilogue kernels) evaluated on
//! registers: one IR unary, binary, select or cast per node, with the IR's semantics (integer
//! division truncates, float `max`/`min` propagate NaN, float-to-integer casts truncate and
//! saturate with NaN → 0, casts to bool test `≠ 0`). Float functions come from `ptx::math`.

use super::context::Ctx;
use super::dtype::reg_ty;
use crate::error::{CompileError, Result};
use crate::ptx::{math, Cmp, Reg, Ty};
use kiln_backend_cpu::kernel::{ExprNode, ExprOp};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::DType;

/// The value of the expression's last node, given its leaves' values.
pub fn evaluate(c: &mut Ctx, expr: &[ExprNode], leaves: &[Reg]) -> Result<Reg> {
    let mut values: Vec<Reg> = Vec::with_capacity(expr.len());
    for node in expr {
        let v = match node.op {
            ExprOp::Leaf(i) => leaves[i],
            ExprOp::Unary(op, x) => unary(c, op, expr[x].dtype, values[x])?,
            ExprOp::Binary(op, a, b) => binary(c, op, expr[a].dtype, values[a], values[b])?,
            ExprOp::Select(p, a, b) => select(c, values[p], values[a], values[b]),
            ExprOp::Cast(x) => convert(c, values[x], expr[x].dtype, node.dtype)?,
        };
        values.push(v);
    }
    Ok(*values.last().expect("an expression has a result"))
}

fn unsupported(what: String) -> CompileError {
    CompileError(format!("{what} is not supported by the CUDA backend"))
}

fn unary(c: &mut Ctx, op: UnaryOp, dtype: DType, x: Reg) -> Result<Reg> {
    let b = &mut c.b;
    let float = dtype == DType::F32;
    Ok(match op {
        UnaryOp::Neg if x.ty != Ty::Pred => b.neg(x),
        UnaryOp::Abs if x.ty != Ty::Pred => b.abs(x),
        UnaryOp::Not if x.ty == Ty::Pred => b.not(x),
        UnaryOp::Exp if float => math::exp(b, x),
        UnaryOp::Log if float => math::log(b, x),
        UnaryOp::Sqrt if float => b.sqrt(x),
        UnaryOp::Rsqrt if float => math::rsqrt(b, x),
        UnaryOp::Recip if float => b.rcp(x),
        UnaryOp::Tanh if float => math::tanh(b, x),
        UnaryOp::Erf if float => math::erf(b, x),
        UnaryOp::Sigmoid if float => math::sigmoid(b, x),
        UnaryOp::Sin if float => math::sin(b, x),
        UnaryOp::Cos if float => math::cos(b, x),
        _ => return Err(unsupported(format!("`{}` on {dtype}", op.name()))),
    })
}

fn binary(c: &mut Ctx, op: BinaryOp, dtype: DType, x: Reg, y: Reg) -> Result<Reg> {
    let b = &mut c.b;
    let boolean = x.ty == Ty::Pred;
    let arith = !boolean && x.ty != Ty::B16;
    Ok(match op {
        BinaryOp::Add if arith => b.add(x, y),
        BinaryOp::Sub if arith => b.sub(x, y),
        BinaryOp::Mul if arith => b.mul(x, y),
        BinaryOp::Div if arith => b.div(x, y),
        BinaryOp::Max if arith => b.max(x, y),
        BinaryOp::Min if arith => b.min(x, y),
        BinaryOp::Pow if dtype == DType::F32 => math::pow(b, x, y),
        BinaryOp::And if boolean => b.and(x, y),
        BinaryOp::Or if boolean => b.or(x, y),
        BinaryOp::Ne if boolean => b.xor(x, y),
        BinaryOp::Eq if boolean => {
            let ne = b.xor(x, y);
            b.not(ne)
        }
        BinaryOp::Eq if arith => b.setp(Cmp::Eq, x, y),
        BinaryOp::Ne if arith => b.setp(Cmp::Ne, x, y),
        BinaryOp::Lt if arith => b.setp(Cmp::Lt, x, y),
        BinaryOp::Le if arith => b.setp(Cmp::Le, x, y),
        BinaryOp::Gt if arith => b.setp(Cmp::Gt, x, y),
        BinaryOp::Ge if arith => b.setp(Cmp::Ge, x, y),
        _ => return Err(unsupported(format!("`{}` on {dtype}", op.name()))),
    })
}

fn select(c: &mut Ctx, p: Reg, x: Reg, y: Reg) -> Reg {
    let b = &mut c.b;
    if x.ty == Ty::Pred {
        let both = b.and(p, x);
        let not_p = b.not(p);
        let other = b.and(not_p, y);
        b.or(both, other)
    } else {
        b.selp(x, y, p, x.ty)
    }
}

/// `x` (a `from` value) as a `to` value.
pub fn convert(c: &mut Ctx, x: Reg, from: DType, to: DType) -> Result<Reg> {
    let ty = reg_ty(to)?;
    let b = &mut c.b;
    if from == to {
        return Ok(x);
    }
    Ok(match (x.ty, ty) {
        (Ty::Pred, _) => {
            let one = c.constant(1.0, to)?;
            let zero = c.constant(0.0, to)?;
            c.b.selp(one, zero, x, ty)
        }
        (Ty::F32, Ty::Pred) => b.setp(Cmp::Ne, x, 0.0f32),
        (_, Ty::Pred) => b.setp(Cmp::Ne, x, 0i64),
        (Ty::B16, _) => {
            let wide = b.cvt(Ty::F32, None, x, Some("bf16"), "");
            return convert(c, wide, DType::F32, to);
        }
        (Ty::F32, Ty::B16) => b.cvt(Ty::B16, Some("bf16"), x, None, "rn"),
        (_, Ty::B16) => {
            let wide = convert(c, x, from, DType::F32)?;
            return convert(c, wide, DType::F32, to);
        }
        (Ty::F32, _) => b.cvt(ty, None, x, None, "rzi"),
        (_, Ty::F32) => b.cvt(ty, None, x, None, "rn"),
        _ => b.cvt(ty, None, x, None, ""),
    })
}
