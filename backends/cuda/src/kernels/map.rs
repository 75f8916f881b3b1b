//! Elementwise kernels (`Kernel::Map`): one thread per output element, by grid stride. Each
//! thread splits its linear index into coordinates, reads every leaf through its view (bf16
//! leaves are widened by the expression's casts), evaluates the expression and writes through
//! the output's view. Copies, concat parts and widened copies are maps too.
//!
//! Axes that every view walks as one (`stride[d] = stride[d + 1] · dim[d + 1]` in each) are
//! merged before the split, so a map over contiguous tensors of one shape divides nothing and a
//! row broadcast divides once; 64-bit divisions are most of a small map's instructions.

use super::context::{Addressed, Ctx, Granule};
use super::expr::evaluate;
use crate::error::Result;
use crate::ptx::{Operand, Reg};
use kiln_backend_cpu::kernel::{ExprNode, Kernel};
use kiln_backend_cpu::view::View;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// The views with the axes all of them walk as one merged (see the module doc).
fn merge_axes(views: &[&View]) -> Vec<View> {
    let mut merged: Vec<View> = views.iter().map(|&v| v.clone()).collect();
    let mut d = merged[0].rank();
    while d >= 2 {
        d -= 1;
        let joins = merged
            .iter()
            .all(|v| v.strides[d - 1] == v.strides[d].mul(&v.dims[d]));
        if joins {
            for v in &mut merged {
                let size = v.dims[d - 1].mul(&v.dims[d]);
                v.dims[d - 1] = size;
                v.strides[d - 1] = v.strides[d].clone();
                v.dims.remove(d);
                v.strides.remove(d);
            }
        }
    }
    merged
}

/// One map's views, ready to address, with its axes merged.
struct Prepared<'a> {
    dims: Vec<Operand>,
    out: Addressed,
    leaves: Vec<Addressed>,
    expr: &'a [ExprNode],
}

impl<'a> Prepared<'a> {
    fn new(c: &mut Ctx, out: &View, leaves: &[View], expr: &'a [ExprNode]) -> Prepared<'a> {
        let views: Vec<&View> = std::iter::once(out).chain(leaves).collect();
        let merged = merge_axes(&views);
        Prepared {
            dims: merged[0].dims.iter().map(|d| c.value(d)).collect(),
            out: c.addressed(&merged[0]),
            leaves: merged[1..].iter().map(|l| c.addressed(l)).collect(),
            expr,
        }
    }

    /// Computes and stores output element `i` (a row-major linear index).
    fn element(&self, c: &mut Ctx, i: Reg) -> Result<()> {
        let coords = c.unravel(i, &self.dims);
        let mut values = Vec::with_capacity(self.leaves.len());
        for l in &self.leaves {
            let at = c.linear(&l.offset, &coords, &l.strides);
            values.push(c.load(l, at)?);
        }
        let v = evaluate(c, self.expr, &values)?;
        let at = c.linear(&self.out.offset, &coords, &self.out.strides);
        let base = self.out.base.expect("maps write buffers");
        c.store(base, at, self.out.view.dtype, v)
    }
}

/// A map's output, leaves and expression.
pub type Parts<'a> = (&'a View, &'a [View], &'a [ExprNode]);

pub fn emit(c: &mut Ctx, out: &View, leaves: &[View], expr: &[ExprNode]) -> Result<Launch> {
    emit_together(c, &[(out, leaves, expr)])
}

/// Maps over domains of one shape as one kernel: each thread computes element `i` of every
/// one of them in turn (see `together` for when that is the same as running them in order).
pub fn emit_together(c: &mut Ctx, maps: &[Parts]) -> Result<Launch> {
    let total = maps[0].0.numel();
    let prepared: Vec<Prepared> = maps
        .iter()
        .map(|&(out, leaves, expr)| Prepared::new(c, out, leaves, expr))
        .collect();
    let count = c.value(&total);
    c.grid_loop(count, Granule::Thread, |c, i| {
        for p in &prepared {
            p.element(c, i)?;
        }
        Ok(())
    })?;
    Ok(super::one_thread_each(total))
}

/// Whether `first` and `second`, maps run in that order, may run as one kernel: the same
/// output shape, neither reading what the other writes, and outputs in different buffers or
/// provably apart in one ([`apart`]: the two halves of a concat written in place).
pub fn together<'a>(first: &'a Kernel, second: &'a Kernel) -> Option<[Parts<'a>; 2]> {
    let parts = |k: &'a Kernel| match k {
        Kernel::Map { out, leaves, expr } => Some((out, leaves.as_slice(), expr.as_slice())),
        _ => None,
    };
    let (a, b) = (parts(first)?, parts(second)?);
    let reads = |leaves: &[View], out: &View| leaves.iter().any(|l| l.buffer() == out.buffer());
    let independent = a.0.dims == b.0.dims
        && a.0.buffer().is_some()
        && !reads(a.1, b.0)
        && !reads(b.1, a.0)
        && (a.0.buffer() != b.0.buffer() || apart(a.0, b.0));
    independent.then_some([a, b])
}

/// Whether two views of one buffer with the same dims never share an element: equal strides,
/// offsets a constant `δ` apart, a unit-stride axis of constant extent `n`, and every other
/// stride a multiple of a constant `M` with `n ≤ δ mod M ≤ M − n` (no step along the other
/// axes and fewer than `n` along the unit one covers `δ`).
pub(super) fn apart(a: &View, b: &View) -> bool {
    let Some(delta) = b.offset.sub(&a.offset).as_constant() else {
        return false;
    };
    let Some(unit) = (0..a.rank()).rev().find(|&d| a.strides[d].is_constant(1)) else {
        return false;
    };
    let Some(n) = a.dims[unit].as_constant() else {
        return false;
    };
    let others = (0..a.rank()).filter(|&d| d != unit && !a.dims[d].is_constant(1));
    let modulus = others
        .flat_map(|d| a.strides[d].terms.iter().map(|t| t.coeff.abs()))
        .fold(0i64, gcd);
    let r = if modulus == 0 {
        delta.abs()
    } else {
        delta.rem_euclid(modulus)
    };
    let upper = if modulus == 0 { i64::MAX } else { modulus - n };
    a.strides == b.strides && n <= r && r <= upper
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One block per item of `extent` items.
pub fn per_block(extent: Poly, threads: u32, shared_bytes: u32) -> Launch {
    Launch {
        blocks: vec![WorkFactor { extent, tile: 1 }],
        threads,
        shared_bytes,
        buffers: Vec::new(),
    }
}
