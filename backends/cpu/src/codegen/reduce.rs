//! Reduction kernels (`Kernel::Reduce`): sum, max or mean, over any set of axes, of an
//! elementwise expression of strided leaves (a plain reduction reads one leaf), into a
//! contiguous output that keeps the reduced axes at size 1.
//!
//! Work items are output elements. Each walks the reduced axes in nested loops, evaluating the
//! expression at every position; when it vectorizes along the last reduced axis (see
//! `expr::vectorizes`), that axis runs four lanes at a time into a vector accumulator that is
//! folded into the scalar one at the end. Accumulation is in the expression's type.

use super::builder::{scalar_type, KernelFn};
use super::expr::{self, Operand};
use super::math;
use crate::kernel::ExprNode;
use crate::view::View;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::Variable;
use kiln_ir::op::{BinaryOp, ReduceOp};
use kiln_ir::DType;

struct Accumulators {
    scalar: Variable,
    vector: Option<Variable>,
}

fn combine_op(op: ReduceOp) -> BinaryOp {
    match op {
        ReduceOp::Max => BinaryOp::Max,
        ReduceOp::Sum | ReduceOp::Mean => BinaryOp::Add,
    }
}

fn identity(op: ReduceOp, dtype: DType) -> f64 {
    match (op, dtype) {
        (ReduceOp::Max, DType::F32) => f64::NEG_INFINITY,
        (ReduceOp::Max, DType::I32) => i32::MIN as f64,
        (ReduceOp::Max, _) => i64::MIN as f64,
        _ => 0.0,
    }
}

pub fn emit(
    f: &mut KernelFn,
    op: ReduceOp,
    leaves: &[View],
    expr: &[ExprNode],
    axes: &[usize],
    out: &View,
) {
    let dtype = expr.last().expect("an expression has a result").dtype;
    let dims = f.polys(&leaves[0].dims);
    let operands: Vec<Operand> = leaves.iter().map(|l| expr::operand(f, l)).collect();
    let out_ptr = f.buffer(out.buffer().expect("reductions write buffers"));
    let kept: Vec<usize> = (0..leaves[0].rank())
        .filter(|a| !axes.contains(a))
        .collect();
    let kept_dims: Vec<Value> = kept.iter().map(|&a| dims[a]).collect();
    let last = *axes.last().expect("a reduction has an axis");
    let vector = dtype == DType::F32 && expr::vectorizes(leaves, expr, last);
    let count = axes
        .iter()
        .fold(f.iconst(1), |acc, &a| f.b.ins().imul(acc, dims[a]));
    let (start, end) = (f.start, f.end);
    let bin = combine_op(op);
    f.for_loop(start, end, 1, |f, o| {
        let coords = f.unravel(o, &kept_dims);
        let bases: Vec<Value> = operands
            .iter()
            .map(|op| {
                let strides: Vec<Value> = kept.iter().map(|&a| op.strides[a]).collect();
                f.linear(op.offset, &coords, &strides)
            })
            .collect();
        let init = math::constant(f, identity(op, dtype), dtype, false);
        let scalar = f.var(scalar_type(dtype), init);
        let vector = vector.then(|| {
            let v = math::constant(f, identity(op, dtype), dtype, true);
            f.var(types::F32X4, v)
        });
        let acc = Accumulators { scalar, vector };
        let walk = Walk {
            acc: &acc,
            bin,
            dtype,
            operands: &operands,
            expr,
            dims: &dims,
        };
        walk.nest(f, &bases, axes);
        let mut total = f.b.use_var(acc.scalar);
        if let Some(v) = acc.vector {
            let lanes = f.b.use_var(v);
            for lane in 0..4 {
                let x = f.b.ins().extractlane(lanes, lane);
                total = math::binary(f, bin, dtype, total, x);
            }
        }
        if op == ReduceOp::Mean {
            let n = math::cast(f, DType::I64, dtype, count);
            total = math::binary(f, BinaryOp::Div, dtype, total, n);
        }
        let addr = f.address(out_ptr, o, dtype);
        f.store(total, addr);
    });
}

/// The reduced axes of one output element, walked in nested loops.
struct Walk<'a> {
    acc: &'a Accumulators,
    bin: BinaryOp,
    dtype: DType,
    operands: &'a [Operand],
    expr: &'a [ExprNode],
    dims: &'a [Value],
}

impl Walk<'_> {
    /// Accumulates the expression over `axes` from the leaves' linear indices `bases`.
    fn nest(&self, f: &mut KernelFn, bases: &[Value], axes: &[usize]) {
        let (axis, rest) = (axes[0], &axes[1..]);
        let zero = f.iconst(0);
        if !rest.is_empty() {
            f.for_loop(zero, self.dims[axis], 1, |f, i| {
                let moved: Vec<Value> = self
                    .operands
                    .iter()
                    .zip(bases)
                    .map(|(o, &base)| {
                        let step = f.b.ins().imul(i, o.strides[axis]);
                        f.b.ins().iadd(base, step)
                    })
                    .collect();
                self.nest(f, &moved, rest);
            });
            return;
        }
        let tail_from = match self.acc.vector {
            Some(v) => f.for_loop(zero, self.dims[axis], 4, |f, i| {
                let values: Vec<Value> = self
                    .operands
                    .iter()
                    .zip(bases)
                    .map(|(o, &base)| expr::load_lanes(f, o, base, i, axis))
                    .collect();
                let x = expr::evaluate(f, self.expr, &values, true);
                let a = f.b.use_var(v);
                let next = math::binary(f, self.bin, self.dtype, a, x);
                f.b.def_var(v, next);
            }),
            None => zero,
        };
        f.for_loop(tail_from, self.dims[axis], 1, |f, i| {
            let values: Vec<Value> = self
                .operands
                .iter()
                .zip(bases)
                .map(|(o, &base)| expr::load_scalar(f, o, base, i, axis))
                .collect();
            let x = expr::evaluate(f, self.expr, &values, false);
            let a = f.b.use_var(self.acc.scalar);
            let next = math::binary(f, self.bin, self.dtype, a, x);
            f.b.def_var(self.acc.scalar, next);
        });
    }
}
