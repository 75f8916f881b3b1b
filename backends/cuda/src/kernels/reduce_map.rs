//! A reduction and the map that reads it back, as one kernel (`reduce_map`): RMSNorm's
//! `m = mean(x²)` then `x·rsqrt(m + ε)·w`, LayerNorm's statistics and their use, softmax's
//! steps. Two consecutive kernels of a lowered program are taken together ([`pair`]) when
//! - the first is a reduction over the trailing axes of its domain (not the columns form of
//!   `reduce_columns.rs`), accumulating f32;
//! - the second is a map over that same domain that reads the reduction's result only as it
//!   is broadcast back along the reduced axes (the result's offset and strides on the kept
//!   axes, stride 0 on the reduced ones), and writes no buffer the reduction reads.
//!
//! **Work**: one block per reduced row, as the block form of `reduce.rs` folds it: the result
//! is stored (other kernels may read it) and left in shared memory; after the barrier every
//! thread of the block takes the row's positions `tid, tid + 256, …` ([`IN_FLIGHT`] at a
//! time, their loads issued together), reads the map's other leaves, takes the result from shared memory for the broadcast leaf, evaluates the map and
//! stores; a view laid out row-major over the domain is addressed by the position's index in
//! it (the row times the reduced count, plus the position), with no coordinates. One launch and one read of the result instead of two launches; the row of `x` the
//! map reads again is the one the block just read, from cache.
//!
//! The two kernels share one step of the memory plan (`kiln_backend_cpu::memory::plan_steps`),
//! so the map's output never shares memory with a buffer the reduction reads.

use super::context::{Ctx, Granule};
use super::expr::evaluate;
use super::map::{dense, per_block};
use super::reduce::{Reduction, IN_FLIGHT};
use super::THREADS;
use crate::error::Result;
use crate::ptx::Special;
use kiln_backend_cpu::kernel::{ExprNode, Kernel};
use kiln_backend_cpu::view::View;
use kiln_ir::op::ReduceOp;
use kiln_ir::DType;
use kiln_runtime::manifest::Launch;

/// A reduction and the map that reads it back (see the module doc).
pub struct ReduceMap<'a> {
    op: ReduceOp,
    leaves: &'a [View],
    expr: &'a [ExprNode],
    axes: &'a [usize],
    reduced: &'a View,
    out: &'a View,
    map_leaves: &'a [View],
    map_expr: &'a [ExprNode],
}

/// Whether `map`'s leaf `leaf` is `reduced` broadcast back along `axes`.
fn reads_back(leaf: &View, reduced: &View, axes: &[usize]) -> bool {
    leaf.buffer().is_some()
        && leaf.buffer() == reduced.buffer()
        && leaf.offset == reduced.offset
        && (0..leaf.rank()).all(|a| {
            if axes.contains(&a) {
                leaf.strides[a].is_constant(0)
            } else {
                // An axis of one element is never stepped along.
                leaf.dims[a].is_constant(1) || leaf.strides[a] == reduced.strides[a]
            }
        })
}

/// The pair `first`, `second` as one kernel, where they qualify (see the module doc).
pub fn pair<'a>(first: &'a Kernel, second: &'a Kernel) -> Option<ReduceMap<'a>> {
    let Kernel::Reduce {
        op,
        leaves,
        expr,
        axes,
        out: reduced,
    } = first
    else {
        return None;
    };
    let Kernel::Map {
        out,
        leaves: map_leaves,
        expr: map_expr,
    } = second
    else {
        return None;
    };
    let rank = leaves[0].rank();
    let trailing = axes
        .iter()
        .enumerate()
        .all(|(i, &a)| a == rank - axes.len() + i);
    let f32 = expr.last().is_some_and(|e| e.dtype == DType::F32);
    let same_domain = out.dims == leaves[0].dims && reduced.rank() == rank;
    let reads: Vec<&View> = map_leaves
        .iter()
        .filter(|l| l.buffer() == reduced.buffer())
        .collect();
    let only_broadcast = !reads.is_empty() && reads.iter().all(|l| reads_back(l, reduced, axes));
    let writes_a_read = leaves
        .iter()
        .any(|l| l.buffer().is_some() && l.buffer() == out.buffer());
    let qualifies = trailing
        && f32
        && same_domain
        && only_broadcast
        && !writes_a_read
        && !super::reduce_columns::applies(leaves, axes);
    qualifies.then_some(ReduceMap {
        op: *op,
        leaves,
        expr,
        axes,
        reduced,
        out,
        map_leaves,
        map_expr,
    })
}

pub fn emit(c: &mut Ctx, k: &ReduceMap) -> Result<Launch> {
    let red = Reduction::new(c, k.op, k.leaves, k.expr, k.axes, k.reduced)?;
    let outputs = k.reduced.numel();
    let outputs_v = c.value(&outputs);
    let smem = red.block_shared(c);
    let tid = c.special(Special::Tid);
    let lane = c.b.and(tid, 31i64);
    let warp = c.b.shr(tid, 5);
    let out = c.addressed(k.out);
    let out_base = out.base.expect("maps write buffers");
    // The map's leaves, but for those that read the reduction back.
    let leaves: Vec<_> = k
        .map_leaves
        .iter()
        .map(|l| (l.buffer() != k.reduced.buffer()).then(|| c.addressed(l)))
        .collect();
    // A dense view (`map::dense`) is read at the element's index in the domain, row `o` of
    // the kept axes times the reduced count, plus `r`: no coordinates needed.
    let dense_out = dense(k.out);
    let split = !dense_out || leaves.iter().flatten().any(|l| !dense(&l.view));
    c.grid_loop(outputs_v, Granule::Block, |c, o| {
        let kept = c.unravel(o, &red.kept_dims);
        red.block(c, (o, &kept), smem, (tid, lane, warp))?;
        let result = red.result(c, smem);
        let row = c.b.mul(o, red.count_v.clone());
        c.for_range_batched(
            tid,
            red.count_v.clone(),
            red.threads.clone(),
            IN_FLIGHT,
            |c, r| {
                let mut coords = kept.clone();
                if split {
                    coords.extend(c.unravel(r, &red.red_dims));
                }
                let flat = c.b.add(row, r);
                let mut values = Vec::with_capacity(leaves.len());
                for l in &leaves {
                    values.push(match l {
                        Some(l) if dense(&l.view) => c.load(l, flat)?,
                        Some(l) => {
                            let at = c.linear(&l.offset, &coords, &l.strides);
                            c.load(l, at)?
                        }
                        None => result,
                    });
                }
                Ok((coords, flat, values))
            },
            |c, _, (coords, flat, values)| {
                let v = evaluate(c, k.map_expr, &values)?;
                let at = match dense_out {
                    true => flat,
                    false => c.linear(&out.offset, &coords, &out.strides),
                };
                c.store(out_base, at, k.out.dtype, v)
            },
        )?;
        // The next row's folds overwrite the shared result.
        c.b.bar_sync();
        Ok(())
    })?;
    Ok(per_block(outputs, THREADS, c.b.shared_bytes()))
}
