//! Elementwise kernels (`Kernel::Map`): one thread per output element, by grid stride. Each
//! thread splits its linear index into coordinates, reads every leaf through its view (bf16
//! leaves are widened by the expression's casts), evaluates the expression and writes through
//! the output's view. Copies, concat parts and widened copies are maps too.

use super::context::{Ctx, Granule};
use super::expr::evaluate;
use crate::error::Result;
use kiln_backend_cpu::kernel::ExprNode;
use kiln_backend_cpu::view::View;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

pub fn emit(c: &mut Ctx, out: &View, leaves: &[View], expr: &[ExprNode]) -> Result<Launch> {
    let dims: Vec<_> = out.dims.iter().map(|d| c.value(d)).collect();
    let total = out.numel();
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
