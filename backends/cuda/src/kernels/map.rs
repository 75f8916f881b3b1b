//! Elementwise kernels (`Kernel::Map`): one thread per output element, by grid stride. Each
//! thread splits its linear index into coordinates, reads every leaf through its view (bf16
//! leaves are widened by the expression's casts), evaluates the expression and writes through
//! the output's view. Copies, concat parts and widened copies are maps too.
//!
//! Axes that every view walks as one (`stride[d] = stride[d + 1] · dim[d + 1]` in each) are
//! merged before the split, so a map over contiguous tensors of one shape divides nothing and a
//! row broadcast divides once; 64-bit divisions are most of a small map's instructions.

use super::context::{Ctx, Granule};
use super::expr::evaluate;
use crate::error::Result;
use kiln_backend_cpu::kernel::ExprNode;
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

pub fn emit(c: &mut Ctx, out: &View, leaves: &[View], expr: &[ExprNode]) -> Result<Launch> {
    let total = out.numel();
    let views: Vec<&View> = std::iter::once(out).chain(leaves).collect();
    let merged = merge_axes(&views);
    let (out, leaves) = (&merged[0], &merged[1..]);
    let dims: Vec<_> = out.dims.iter().map(|d| c.value(d)).collect();
    let count = c.value(&total);
    let o = c.addressed(out);
    let ls: Vec<_> = leaves.iter().map(|l| c.addressed(l)).collect();
    let base = o.base.expect("maps write buffers");
    c.grid_loop(count, Granule::Thread, |c, i| {
        let coords = c.unravel(i, &dims);
        let mut values = Vec::with_capacity(ls.len());
        for l in &ls {
            let at = c.linear(&l.offset, &coords, &l.strides);
            values.push(c.load(l, at)?);
        }
        let v = evaluate(c, expr, &values)?;
        let at = c.linear(&o.offset, &coords, &o.strides);
        c.store(base, at, out.dtype, v)
    })?;
    Ok(super::one_thread_each(total))
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
