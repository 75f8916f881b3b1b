//! Reduction kernels (`Kernel::Reduce`): sum, max or mean over any set of axes of a strided
//! input, into a contiguous output that keeps the reduced axes at size 1.
//!
//! Work items are output elements. Each walks the reduced axes in nested loops; when the last
//! reduced axis is unit-stride `f32`, it runs four lanes at a time into a vector accumulator
//! that is folded into the scalar one at the end. Accumulation is in the element type (f32).

use super::builder::{scalar_type, KernelFn};
use super::math;
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

pub fn emit(f: &mut KernelFn, op: ReduceOp, input: &View, axes: &[usize], out: &View) {
    let dtype = input.dtype;
    let dims = f.polys(&input.dims);
    let strides = f.polys(&input.strides);
    let offset = f.poly(&input.offset);
    let in_ptr = f.buffer(input.buffer().expect("reductions read buffers"));
    let out_ptr = f.buffer(out.buffer().expect("reductions write buffers"));
    let kept: Vec<usize> = (0..input.rank()).filter(|a| !axes.contains(a)).collect();
    let kept_dims: Vec<Value> = kept.iter().map(|&a| dims[a]).collect();
    let kept_strides: Vec<Value> = kept.iter().map(|&a| strides[a]).collect();
    let last = *axes.last().expect("a reduction has an axis");
    let vector = dtype == DType::F32 && input.strides[last].is_constant(1);
    let count = axes
        .iter()
        .fold(f.iconst(1), |acc, &a| f.b.ins().imul(acc, dims[a]));
    let (start, end) = (f.start, f.end);
    let bin = combine_op(op);
    f.for_loop(start, end, 1, |f, o| {
        let coords = f.unravel(o, &kept_dims);
        let base = f.linear(offset, &coords, &kept_strides);
        let init = math::constant(f, identity(op, dtype), dtype, false);
        let scalar = f.var(scalar_type(dtype), init);
        let vector = vector.then(|| {
            let v = math::constant(f, identity(op, dtype), dtype, true);
            f.var(types::F32X4, v)
        });
        let acc = Accumulators { scalar, vector };
        nest(f, &acc, bin, dtype, in_ptr, base, axes, &dims, &strides);
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

#[allow(clippy::too_many_arguments)]
fn nest(
    f: &mut KernelFn,
    acc: &Accumulators,
    bin: BinaryOp,
    dtype: DType,
    ptr: Value,
    base: Value,
    axes: &[usize],
    dims: &[Value],
    strides: &[Value],
) {
    let (axis, rest) = (axes[0], &axes[1..]);
    let zero = f.iconst(0);
    if !rest.is_empty() {
        f.for_loop(zero, dims[axis], 1, |f, i| {
            let step = f.b.ins().imul(i, strides[axis]);
            let at = f.b.ins().iadd(base, step);
            nest(f, acc, bin, dtype, ptr, at, rest, dims, strides);
        });
        return;
    }
    let tail_from = match acc.vector {
        Some(v) => f.for_loop(zero, dims[axis], 4, |f, i| {
            let at = f.b.ins().iadd(base, i);
            let addr = f.address(ptr, at, dtype);
            let x = f.load(types::F32X4, addr);
            let a = f.b.use_var(v);
            let next = math::binary(f, bin, dtype, a, x);
            f.b.def_var(v, next);
        }),
        None => zero,
    };
    f.for_loop(tail_from, dims[axis], 1, |f, i| {
        let step = f.b.ins().imul(i, strides[axis]);
        let at = f.b.ins().iadd(base, step);
        let addr = f.address(ptr, at, dtype);
        let x = f.load(scalar_type(dtype), addr);
        let a = f.b.use_var(acc.scalar);
        let next = math::binary(f, bin, dtype, a, x);
        f.b.def_var(acc.scalar, next);
    });
}
