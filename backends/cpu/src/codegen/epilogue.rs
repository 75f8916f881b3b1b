//! Matmul epilogues: an elementwise expression applied to each output tile of a matmul right
//! after the tile is computed, while it is still in cache — a residual add, or `silu(gate)·up`
//! on the up projection — so the product never makes a round trip through memory as a value of
//! its own and no kernel of its own runs.
//!
//! The product is read back from the tile with ordinary loads (the kernel wrote it: these
//! loads are not `readonly`, so they stay after the stores and the GEMM call); the other leaves
//! are read like a map's. Rows of the tile run four lanes at a time when the expression
//! vectorizes (`expr::vectorizes`), then a scalar tail.

use super::builder::KernelFn;
use super::expr::{self, Operand};
use crate::kernel::Epilogue;
use crate::view::View;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use kiln_ir::DType;

/// What the tile loop needs, evaluated in the entry block.
pub struct Prepared<'a> {
    epilogue: &'a Epilogue,
    leaves: Vec<Operand>,
    vector: bool,
}

pub fn prepare<'a>(f: &mut KernelFn, epilogue: &'a Epilogue, out: &View) -> Prepared<'a> {
    let leaves = epilogue
        .leaves
        .iter()
        .map(|l| expr::operand(f, l))
        .collect();
    let mut views = vec![out.clone()];
    views.extend(epilogue.leaves.iter().cloned());
    let last = out.rank() - 1;
    Prepared {
        epilogue,
        leaves,
        vector: expr::vectorizes(&views, &epilogue.expr, last),
    }
}

/// Applies the epilogue to rows `m0..m1`, columns `n0..n1` of the output tile of the batch
/// element at `batch` (its coordinates); `c` addresses that element's output, `c_rs` is the
/// output's row stride.
#[allow(clippy::too_many_arguments)]
pub fn emit_tile(
    f: &mut KernelFn,
    p: &Prepared,
    batch: &[Value],
    c: Value,
    c_rs: Value,
    (m0, m1): (Value, Value),
    (n0, n1): (Value, Value),
) {
    let r = batch.len() + 2;
    let last = r - 1;
    f.for_loop(m0, m1, 1, |f, m| {
        let mut coords = batch.to_vec();
        coords.push(m);
        let bases: Vec<Value> = p
            .leaves
            .iter()
            .map(|o| f.linear(o.offset, &coords, &o.strides[..last]))
            .collect();
        let row_at = f.b.ins().imul(m, c_rs);
        let row = f.address(c, row_at, DType::F32);
        let tail_from = if p.vector {
            f.for_loop(n0, n1, 4, |f, n| {
                let addr = f.address(row, n, DType::F32);
                let product = f.load_written(types::F32X4, addr);
                let mut values = vec![product];
                for (o, &base) in p.leaves.iter().zip(&bases) {
                    values.push(expr::load_lanes(f, o, base, n, last));
                }
                let v = expr::evaluate(f, &p.epilogue.expr, &values, true);
                f.store(v, addr);
            })
        } else {
            n0
        };
        f.for_loop(tail_from, n1, 1, |f, n| {
            let addr = f.address(row, n, DType::F32);
            let product = f.load_written(types::F32, addr);
            let mut values = vec![product];
            for (o, &base) in p.leaves.iter().zip(&bases) {
                values.push(expr::load_scalar(f, o, base, n, last));
            }
            let v = expr::evaluate(f, &p.epilogue.expr, &values, false);
            f.store(v, addr);
        });
    });
}
