//! Elementwise kernels (`Kernel::Map`): an expression over strided leaves, written through a
//! strided output view. Copies, concatenation parts and materialized views are maps too.
//!
//! Work items are output rows (every axis but the last). Each row splits its index into
//! coordinates once, then runs the last axis: four `f32` lanes at a time when every value is
//! `f32`, every op has a vector form and every leaf moves by 0 or 1 element along that axis,
//! then a scalar tail; otherwise scalar throughout.

use super::builder::{scalar_type, KernelFn};
use super::math;
use crate::kernel::{ExprNode, ExprOp};
use crate::view::{Source, View};
use cranelift_codegen::ir::{types, InstBuilder, Value};
use kiln_ir::DType;
use kiln_runtime::Poly;

/// A leaf or the output, ready to address: base pointer (for buffers), per-row offset inputs.
struct Operand {
    view: View,
    ptr: Option<Value>,
    offset: Value,
    strides: Vec<Value>,
}

fn operand(f: &mut KernelFn, view: &View) -> Operand {
    let ptr = view.buffer().map(|b| f.buffer(b));
    let offset = f.poly(&view.offset);
    let strides = f.polys(&view.strides);
    Operand {
        view: view.clone(),
        ptr,
        offset,
        strides,
    }
}

fn inner_stride(view: &View) -> Option<i64> {
    view.strides.last().map_or(Some(0), Poly::as_constant)
}

fn vectorizes(out: &View, leaves: &[View], expr: &[ExprNode]) -> bool {
    let ops_ok = expr.iter().all(|n| {
        n.dtype == DType::F32
            && match n.op {
                ExprOp::Leaf(_) => true,
                ExprOp::Unary(u, _) => math::unary_vectorizes(u),
                ExprOp::Binary(b, _, _) => math::binary_vectorizes(b),
                ExprOp::Select(..) | ExprOp::Cast(_) => false,
            }
    });
    let leaves_ok = leaves.iter().all(|l| match l.source {
        Source::Buffer(_) => matches!(inner_stride(l), Some(0 | 1)),
        Source::Splat(_) => true,
        Source::Iota => false,
    });
    ops_ok && leaves_ok && inner_stride(out) == Some(1)
}

pub fn emit(f: &mut KernelFn, out: &View, leaves: &[View], expr: &[ExprNode]) {
    let (out, leaves): (View, Vec<View>) = if out.rank() == 0 {
        let lift = |v: &View| View {
            dims: vec![Poly::constant(1)],
            strides: vec![Poly::constant(0)],
            ..v.clone()
        };
        (lift(out), leaves.iter().map(lift).collect())
    } else {
        (out.clone(), leaves.to_vec())
    };
    let r = out.rank();
    let dims = f.polys(&out.dims);
    let out_op = operand(f, &out);
    let leaf_ops: Vec<Operand> = leaves.iter().map(|l| operand(f, l)).collect();
    let vector = vectorizes(&out, &leaves, expr);
    let (start, end) = (f.start, f.end);
    f.for_loop(start, end, 1, |f, row| {
        let coords = f.unravel(row, &dims[..r - 1]);
        let row_base =
            |f: &mut KernelFn, o: &Operand| f.linear(o.offset, &coords, &o.strides[..r - 1]);
        let out_base = row_base(f, &out_op);
        let bases: Vec<Value> = leaf_ops.iter().map(|o| row_base(f, o)).collect();
        let zero = f.iconst(0);
        let tail_from = if vector {
            f.for_loop(zero, dims[r - 1], 4, |f, j| {
                let values: Vec<Value> = leaf_ops
                    .iter()
                    .zip(&bases)
                    .map(|(o, &base)| load_lanes(f, o, base, j))
                    .collect();
                let v = evaluate(f, expr, &values);
                let at = f.b.ins().iadd(out_base, j);
                let addr = f.address(out_op.ptr.unwrap(), at, DType::F32);
                f.store(v, addr);
            })
        } else {
            zero
        };
        f.for_loop(tail_from, dims[r - 1], 1, |f, j| {
            let values: Vec<Value> = leaf_ops
                .iter()
                .zip(&bases)
                .map(|(o, &base)| load_scalar(f, o, base, j))
                .collect();
            let v = evaluate(f, expr, &values);
            let step = f.b.ins().imul(j, out_op.strides[r - 1]);
            let at = f.b.ins().iadd(out_base, step);
            let addr = f.address(out_op.ptr.unwrap(), at, out.dtype);
            f.store(v, addr);
        });
    });
}

/// Element `j` of the row starting at linear index `base`.
fn load_scalar(f: &mut KernelFn, o: &Operand, base: Value, j: Value) -> Value {
    let r = o.strides.len();
    let step = f.b.ins().imul(j, o.strides[r - 1]);
    let at = f.b.ins().iadd(base, step);
    match o.view.source {
        Source::Buffer(_) => {
            let addr = f.address(o.ptr.unwrap(), at, o.view.dtype);
            f.load(scalar_type(o.view.dtype), addr)
        }
        Source::Splat(v) => math::constant(f, v, o.view.dtype, false),
        Source::Iota => math::cast(f, DType::I64, o.view.dtype, at),
    }
}

/// Lanes `j..j+4` of the row (a broadcast element when the leaf's stride is 0).
fn load_lanes(f: &mut KernelFn, o: &Operand, base: Value, j: Value) -> Value {
    match o.view.source {
        Source::Splat(v) => math::constant(f, v, DType::F32, true),
        _ if inner_stride(&o.view) == Some(0) => {
            let addr = f.address(o.ptr.unwrap(), base, DType::F32);
            let s = f.load(types::F32, addr);
            f.b.ins().splat(types::F32X4, s)
        }
        _ => {
            let at = f.b.ins().iadd(base, j);
            let addr = f.address(o.ptr.unwrap(), at, DType::F32);
            f.load(types::F32X4, addr)
        }
    }
}

fn evaluate(f: &mut KernelFn, expr: &[ExprNode], leaves: &[Value]) -> Value {
    let mut values: Vec<Value> = Vec::with_capacity(expr.len());
    for node in expr {
        let v = match node.op {
            ExprOp::Leaf(i) => leaves[i],
            ExprOp::Unary(op, x) => math::unary(f, op, expr[x].dtype, values[x]),
            ExprOp::Binary(op, a, b) => math::binary(f, op, expr[a].dtype, values[a], values[b]),
            ExprOp::Select(c, a, b) => f.b.ins().select(values[c], values[a], values[b]),
            ExprOp::Cast(x) => math::cast(f, expr[x].dtype, node.dtype, values[x]),
        };
        values.push(v);
    }
    *values.last().expect("an expression has a result")
}
