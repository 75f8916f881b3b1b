//! Reductions that keep the innermost axis (`Kernel::Reduce` with the last axis not reduced and
//! unit-stride in the first leaf): sums over the tokens of a weight gradient, over the batch of
//! a broadcast operand's gradient, and the like. One block per output element (the form of
//! `reduce.rs`) would read each output's values a stride apart, one block per handful of values;
//! here a block takes 32 neighbouring outputs of the innermost axis, and its 8 warps split the
//! reduced positions: lane `l` of warp `w` folds positions `w, w + 8, …` of output column
//! `c₀ + l`, so every load of a warp is 32 neighbouring elements. Warp 0 then folds the 8
//! partial results of its column in warp order, divides for a mean, and stores. A lane issues
//! the loads of `IN_FLIGHT` of its positions before it folds them, in order. The order is
//! fixed, so results do not change from run to run.
//!
//! A position's address is `r · stride` when the reduced axes of every leaf merge into one
//! (`stride[aᵢ] = stride[aᵢ₊₁] · dim[aᵢ₊₁]`, as for contiguous tokens), and is otherwise
//! unravelled over the reduced axes.

use super::context::{Ctx, Granule};
use super::reduce::{combine, finish, fold_position, identity, IN_FLIGHT};
use super::THREADS;
use crate::error::Result;
use crate::ptx::{Cmp, Operand, Space, Special};
use kiln_backend_cpu::kernel::ExprNode;
use kiln_backend_cpu::view::View;
use kiln_ir::op::ReduceOp;
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Outputs of the innermost axis per block (one per lane).
const COLUMNS: i64 = 32;

/// Whether this form reduces `leaves` over `axes`: the innermost axis is kept, unit-stride, and
/// not of size 1 (one column would leave 31 lanes of each warp idle; `reduce.rs` takes such a
/// reduction a warp or a block per output, as for the greedy token's maxima over the parts of a
/// row).
pub fn applies(leaves: &[View], axes: &[usize]) -> bool {
    let rank = leaves[0].rank();
    rank > 0
        && !axes.contains(&(rank - 1))
        && leaves[0].strides[rank - 1].is_constant(1)
        && !leaves[0].dims[rank - 1].is_constant(1)
}

/// The stride of position `r` of the reduction in each leaf, when the reduced axes (in
/// ascending order, as position `r` enumerates them) merge.
fn merged_strides(leaves: &[View], axes: &[usize]) -> Option<Vec<Poly>> {
    let last = *axes.last()?;
    if axes.windows(2).any(|w| w[0] >= w[1]) {
        return None;
    }
    leaves
        .iter()
        .map(|l| {
            let merges = axes
                .windows(2)
                .all(|w| l.strides[w[0]] == l.strides[w[1]].mul(&l.dims[w[1]]));
            merges.then(|| l.strides[last].clone())
        })
        .collect()
}

pub fn emit(
    c: &mut Ctx,
    op: ReduceOp,
    leaves: &[View],
    expr: &[ExprNode],
    axes: &[usize],
    out: &View,
    dtype: DType,
) -> Result<Launch> {
    let ty = super::dtype::reg_ty(dtype)?;
    let rank = leaves[0].rank();
    let prefix: Vec<usize> = (0..rank - 1).filter(|a| !axes.contains(a)).collect();
    let prefix_dims: Vec<_> = prefix
        .iter()
        .map(|&a| c.value(&leaves[0].dims[a]))
        .collect();
    let red_dims: Vec<_> = axes.iter().map(|&a| c.value(&leaves[0].dims[a])).collect();
    let count = Poly::product(axes.iter().map(|&a| &leaves[0].dims[a]));
    let count_v = c.value(&count);
    let inner = &leaves[0].dims[rank - 1];
    let inner_v = c.reg(inner);
    let tiles = inner.add(&Poly::constant(COLUMNS - 1));
    let tiles = c.reg(&tiles);
    let tiles = c.b.div(tiles, COLUMNS);
    let prefix_count = Poly::product(prefix.iter().map(|&a| &leaves[0].dims[a]));
    let prefix_v = c.value(&prefix_count);
    let items = c.b.mul(tiles, prefix_v);
    let merged = merged_strides(leaves, axes);
    let merged: Option<Vec<Operand>> = merged.map(|m| m.iter().map(|s| c.value(s)).collect());
    let ls: Vec<_> = leaves.iter().map(|l| c.addressed(l)).collect();
    let out = c.buffer(out.buffer().expect("reductions write buffers"));
    let warps = (THREADS / 32) as i64;
    let width = super::dtype::elem_bytes(dtype)?;
    let mem = super::dtype::mem_name(dtype)?;
    let smem = c.b.shared((warps * COLUMNS * width) as u32);
    let tid = c.special(Special::Tid);
    let lane = c.b.and(tid, 31i64);
    let warp = c.b.shr(tid, 5);
    let slot = c.b.mad(tid, width, smem);
    let column_slot = c.b.mad(lane, width, smem);
    c.grid_loop(items.into(), Granule::Block, |c, item| {
        let p = c.b.div(item, tiles);
        let t = c.b.rem(item, tiles);
        let column = c.b.mad(t, COLUMNS, lane);
        let inside = c.b.setp(Cmp::Lt, column, inner_v);
        let mut coords = c.unravel(p, &prefix_dims);
        coords.push(column);
        let kept: Vec<usize> = prefix.iter().copied().chain([rank - 1]).collect();
        let mut bases = Vec::new();
        for l in &ls {
            let strides: Vec<_> = kept.iter().map(|&a| l.strides[a].clone()).collect();
            bases.push(c.linear(&l.offset, &coords, &strides));
        }
        let acc = c.constant(identity(op, dtype), dtype)?;
        c.when(inside, |c| {
            c.for_range_batched(
                warp,
                count_v.clone(),
                warps,
                IN_FLIGHT,
                |c, r| {
                    let mut values = Vec::new();
                    for (i, (l, &base)) in ls.iter().zip(&bases).enumerate() {
                        let at = match &merged {
                            Some(m) => c.b.mad(r, m[i].clone(), base),
                            None => {
                                let rc = c.unravel(r, &red_dims);
                                let strides: Vec<_> =
                                    axes.iter().map(|&a| l.strides[a].clone()).collect();
                                c.linear(&base.into(), &rc, &strides)
                            }
                        };
                        values.push(c.load(l, at)?);
                    }
                    Ok(values)
                },
                |c, _, values| fold_position(c, op, expr, &values, acc),
            )
        })?;
        c.b.st(Space::Shared, mem, slot, 0, acc);
        c.b.bar_sync();
        let first_warp = c.b.setp(Cmp::Eq, warp, 0i64);
        let storing = c.b.and(first_warp, inside);
        c.when(storing, |c| {
            let mut total = c.b.ld(Space::Shared, mem, ty, column_slot, 0, false);
            for w in 1..warps {
                let x = c.b.ld(
                    Space::Shared,
                    mem,
                    ty,
                    column_slot,
                    w * COLUMNS * width,
                    false,
                );
                total = combine(c, op, total, x);
            }
            let total = finish(c, op, &count, dtype, total)?;
            let o = c.b.mad(p, inner_v, column);
            c.store(out, o, dtype, total)
        })?;
        // The next item's partial results reuse the slots.
        c.b.bar_sync();
        Ok(())
    })?;
    Ok(Launch {
        blocks: vec![
            WorkFactor {
                extent: prefix_count,
                tile: 1,
            },
            WorkFactor {
                extent: inner.clone(),
                tile: COLUMNS as u64,
            },
        ],
        threads: THREADS,
        shared_bytes: c.b.shared_bytes(),
        buffers: Vec::new(),
    })
}
