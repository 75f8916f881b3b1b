//! Elementwise kernels (`Kernel::Map`): an expression over strided leaves, written through a
//! strided output view. Copies, concatenation parts and materialized views are maps too.
//!
//! Work items are output rows (every axis but the last). Each row splits its index into
//! coordinates once, then runs the last axis: four `f32` lanes at a time when every value is
//! `f32` (a `bf16` leaf counts when it is only widened: its lanes widen as they load), every op
//! has a vector form and every leaf moves by 0 or 1 element along that axis, then a scalar tail;
//! otherwise scalar throughout.

use super::builder::{scalar_type, KernelFn};
use super::math;
use super::widen::load_f32;
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

/// Whether node `x` of `expr` is a bf16 leaf that only `cast`s to f32 read.
fn widened_leaf(expr: &[ExprNode], x: usize) -> bool {
    let reads = |n: &ExprNode| match n.op {
        ExprOp::Leaf(_) => false,
        ExprOp::Unary(_, a) | ExprOp::Cast(a) => a == x,
        ExprOp::Binary(_, a, b) => a == x || b == x,
        ExprOp::Select(c, a, b) => c == x || a == x || b == x,
    };
    matches!(expr[x].op, ExprOp::Leaf(_))
        && expr[x].dtype == DType::BF16
        && expr
            .iter()
            .filter(|n| reads(n))
            .all(|n| matches!(n.op, ExprOp::Cast(_)) && n.dtype == DType::F32)
}

fn vectorizes(out: &View, leaves: &[View], expr: &[ExprNode]) -> bool {
    let ops_ok = expr.iter().enumerate().all(|(i, n)| {
        if widened_leaf(expr, i) {
            return i + 1 < expr.len();
        }
        n.dtype == DType::F32
            && match n.op {
                ExprOp::Leaf(_) => true,
                ExprOp::Unary(u, _) => math::unary_vectorizes(u),
                ExprOp::Binary(b, _, _) => math::binary_vectorizes(b),
                ExprOp::Cast(x) => widened_leaf(expr, x),
                ExprOp::Select(..) => false,
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
                let v = evaluate(f, expr, &values, true);
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
            let v = evaluate(f, expr, &values, false);
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

/// Lanes `j..j+4` of the row as `f32x4` (a broadcast element when the leaf's stride is 0; a
/// bf16 leaf widened).
fn load_lanes(f: &mut KernelFn, o: &Operand, base: Value, j: Value) -> Value {
    let dtype = o.view.dtype;
    match o.view.source {
        Source::Splat(v) => math::constant(f, v, DType::F32, true),
        _ if inner_stride(&o.view) == Some(0) => {
            let addr = f.address(o.ptr.unwrap(), base, dtype);
            let s = load_f32(f, dtype, addr, 0, 1);
            f.b.ins().splat(types::F32X4, s)
        }
        _ => {
            let at = f.b.ins().iadd(base, j);
            let addr = f.address(o.ptr.unwrap(), at, dtype);
            load_f32(f, dtype, addr, 0, 4)
        }
    }
}

/// The expression's result from the leaves' values; in `vector` form bf16 leaves arrive
/// widened, so their casts to f32 are already done.
fn evaluate(f: &mut KernelFn, expr: &[ExprNode], leaves: &[Value], vector: bool) -> Value {
    let mut values: Vec<Value> = Vec::with_capacity(expr.len());
    for node in expr {
        let v = match node.op {
            ExprOp::Leaf(i) => leaves[i],
            ExprOp::Unary(op, x) => math::unary(f, op, expr[x].dtype, values[x]),
            ExprOp::Binary(op, a, b) => math::binary(f, op, expr[a].dtype, values[a], values[b]),
            ExprOp::Select(c, a, b) => f.b.ins().select(values[c], values[a], values[b]),
            ExprOp::Cast(x) if vector => values[x],
            ExprOp::Cast(x) => math::cast(f, expr[x].dtype, node.dtype, values[x]),
        };
        values.push(v);
    }
    *values.last().expect("an expression has a result")
}
