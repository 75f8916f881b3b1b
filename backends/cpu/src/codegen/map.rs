//! Elementwise kernels (`Kernel::Map`): an expression over strided leaves, written through a
//! strided output view. Copies, concatenation parts and materialized views are maps too.
//!
//! Work items are output rows (every axis but the last). Each row splits its index into
//! coordinates once, then runs the last axis: four `f32` lanes at a time when the expression
//! vectorizes along it (see `expr::vectorizes`: bf16 leaves that are only widened count) and
//! the output is unit-stride there, then a scalar tail; otherwise scalar throughout.

use super::builder::KernelFn;
use super::expr::{self, Operand};
use crate::kernel::ExprNode;
use crate::view::View;
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::DType;
use kiln_runtime::Poly;

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
    let last = r - 1;
    let dims = f.polys(&out.dims);
    let out_op = expr::operand(f, &out);
    let leaf_ops: Vec<Operand> = leaves.iter().map(|l| expr::operand(f, l)).collect();
    let vector =
        expr::vectorizes(&leaves, expr, last) && expr::constant_stride(&out, last) == Some(1);
    let (start, end) = (f.start, f.end);
    f.for_loop(start, end, 1, |f, row| {
        let coords = f.unravel(row, &dims[..last]);
        let row_base =
            |f: &mut KernelFn, o: &Operand| f.linear(o.offset, &coords, &o.strides[..last]);
        let out_base = row_base(f, &out_op);
        let bases: Vec<Value> = leaf_ops.iter().map(|o| row_base(f, o)).collect();
        let zero = f.iconst(0);
        let tail_from = if vector {
            f.for_loop(zero, dims[last], 4, |f, j| {
                let values: Vec<Value> = leaf_ops
                    .iter()
                    .zip(&bases)
                    .map(|(o, &base)| expr::load_lanes(f, o, base, j, last))
                    .collect();
                let v = expr::evaluate(f, expr, &values, true);
                let at = f.b.ins().iadd(out_base, j);
                let addr = f.address(out_op.ptr.unwrap(), at, DType::F32);
                f.store(v, addr);
            })
        } else {
            zero
        };
        f.for_loop(tail_from, dims[last], 1, |f, j| {
            let values: Vec<Value> = leaf_ops
                .iter()
                .zip(&bases)
                .map(|(o, &base)| expr::load_scalar(f, o, base, j, last))
                .collect();
            let v = expr::evaluate(f, expr, &values, false);
            let step = f.b.ins().imul(j, out_op.strides[last]);
            let at = f.b.ins().iadd(out_base, step);
            let addr = f.address(out_op.ptr.unwrap(), at, out.dtype);
            f.store(v, addr);
        });
    });
}
