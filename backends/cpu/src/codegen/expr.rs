//! Elementwise expressions over strided leaves, shared by the map and reduce kernels: how a
//! leaf is addressed, loaded one element or four lanes at a time, and how the expression's
//! nodes are evaluated on the loaded values.
//!
//! A leaf is read at `base + j · stride[axis]`, where `base` is the linear index of the
//! current position with `axis` at 0 (from the view's offset and strides) and `j` runs along
//! `axis`. Splats are constants and iotas are their linear index (their views are built so
//! that it is the iota value), so neither touches memory.

use super::builder::{scalar_type, KernelFn};
use super::math;
use super::widen::load_f32;
use crate::kernel::{ExprNode, ExprOp};
use crate::view::{Source, View};
use cranelift_codegen::ir::{types, InstBuilder, Value};
use kiln_ir::DType;
use kiln_runtime::Poly;

/// A leaf or an output, ready to address: base pointer (for buffers), offset and strides.
pub struct Operand {
    pub view: View,
    pub ptr: Option<Value>,
    pub offset: Value,
    pub strides: Vec<Value>,
}

/// Evaluates what addressing `view` needs; call in the entry block (see `builder`).
pub fn operand(f: &mut KernelFn, view: &View) -> Operand {
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

/// The stride of `view` along `axis` when it is a constant.
pub fn constant_stride(view: &View, axis: usize) -> Option<i64> {
    view.strides.get(axis).map_or(Some(0), Poly::as_constant)
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

/// Whether the expression can run four `f32` lanes at a time along `axis`: every value is
/// `f32` (a bf16 leaf counts when it is only widened: its lanes widen as they load), every op
/// has a vector form, and every leaf moves by 0 or 1 element along `axis`.
pub fn vectorizes(leaves: &[View], expr: &[ExprNode], axis: usize) -> bool {
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
        Source::Buffer(_) => matches!(constant_stride(l, axis), Some(0 | 1)),
        Source::Splat(_) => true,
        Source::Iota => false,
    });
    ops_ok && leaves_ok
}

/// Element `j` along `axis` from linear index `base`.
pub fn load_scalar(f: &mut KernelFn, o: &Operand, base: Value, j: Value, axis: usize) -> Value {
    let step = f.b.ins().imul(j, o.strides[axis]);
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

/// Lanes `j..j+4` along `axis` from linear index `base` as `f32x4` (one element splat to all
/// lanes when the leaf does not move along `axis`; a bf16 leaf widened). Only for leaves that
/// [`vectorizes`] accepts.
pub fn load_lanes(f: &mut KernelFn, o: &Operand, base: Value, j: Value, axis: usize) -> Value {
    let dtype = o.view.dtype;
    match o.view.source {
        Source::Splat(v) => math::constant(f, v, DType::F32, true),
        _ if constant_stride(&o.view, axis) == Some(0) => {
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

/// The expression's value (its last node) given the loaded leaves, scalars or lanes alike; in
/// `vector` form bf16 leaves arrive widened, so their casts to f32 are already done.
pub fn evaluate(f: &mut KernelFn, expr: &[ExprNode], leaves: &[Value], vector: bool) -> Value {
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
