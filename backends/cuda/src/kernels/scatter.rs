//! Scatter kernels (`Kernel::Scatter`): `out[pre, indices[i..], post] (+)= updates[pre, i.., post]`
//! into an `out` that already holds the data scattered into (a copy kernel wrote it).
//!
//! A warp owns `ROWS` rows of the scattered axis of one `pre` row and scans every index in
//! order, 32 at a time (a lane each): where some lane's index falls in the warp's rows (a fold
//! over the warp says so; most chunks of a large table have none), the warp takes the chunk's
//! indices one by one, in order, and for each one inside its rows adds (or, replacing, writes)
//! the update row into the output row, its lanes striding over the `post` columns. So each
//! output element receives its updates in index order, from the one lane that owns its column,
//! as a sequential loop would (repeated indices accumulate, or the last one wins); no two
//! threads write one element, and there are no atomics: the result is deterministic. Scanning the indices is what parallelizes: the
//! embedding gradient of a training step (16,384 indices into 128,256 rows of 2,048 columns)
//! spreads over 1,002 warps instead of one thread per column walking every index. `out` is read
//! back with coherent loads (this kernel writes it). Indices are clamped into `[0, len)`; an
//! empty scattered axis writes nothing. `out` and `updates` are contiguous (the lowering's
//! contract).

use super::context::{Ctx, Granule};
use super::dtype::{mem_name, reg_ty};
use super::reduce::warp_fold;
use crate::error::{CompileError, Result};
use crate::ptx::{Cmp, Shuffle, Space, Ty};
use kiln_backend_cpu::view::View;
use kiln_ir::{DType, ScatterMode};
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Rows of the scattered axis a warp owns.
const ROWS: i64 = 128;
/// Warps per block.
const WARPS: i64 = 4;

pub fn emit(
    c: &mut Ctx,
    indices: &View,
    updates: &View,
    axis: usize,
    mode: ScatterMode,
    out: &View,
) -> Result<Launch> {
    let dtype = out.dtype;
    if mode == ScatterMode::Add && dtype == DType::Bool {
        return Err(CompileError(
            "scatter_add of bool values has no CUDA kernel".into(),
        ));
    }
    let pre = Poly::product(&out.dims[..axis]);
    let post = Poly::product(&out.dims[axis + 1..]);
    // Warp items: (pre row, block of ROWS rows of the axis).
    let spans = out.dims[axis].add(&Poly::constant(ROWS - 1));
    let items = pre.mul(&spans);
    let span_count = c.reg(&spans);
    let span_count = c.b.div(span_count, ROWS);
    let pre_count = c.reg(&pre);
    let count = c.b.mul(pre_count, span_count);
    let post_v = c.value(&post);
    let n = c.value(&indices.numel());
    let len = c.reg(&out.dims[axis]);
    let index_dims: Vec<_> = indices.dims.iter().map(|d| c.value(d)).collect();
    let ix = c.addressed(indices);
    let u = c.addressed(updates);
    let o = c.addressed(out);
    let o_base = o.base.expect("scatter writes a buffer");
    let (ty, mem) = (reg_ty(dtype)?, mem_name(dtype)?);
    let last = c.b.sub(len, 1i64);
    let tid = c.special(crate::ptx::Special::Tid);
    let lane = c.b.and(tid, 31i64);
    c.grid_loop(count.into(), Granule::Warp, |c, w| {
        let row = c.b.div(w, span_count);
        let span = c.b.rem(w, span_count);
        let first = c.b.mul(span, ROWS);
        let end = c.b.add(first, ROWS);
        c.for_range(0i64, n.clone(), 32i64, |c, i0| {
            // The lane's index of this chunk, clamped; `mine` where it falls in the rows.
            let i = c.b.add(i0, lane);
            let inside = c.b.setp(Cmp::Lt, i, n.clone());
            let index = c.b.mov(Ty::S64, -1i64);
            c.when(inside, |c| {
                let coords = c.unravel(i, &index_dims);
                let at = c.linear(&ix.offset, &coords, &ix.strides);
                let raw = c.load(&ix, at)?;
                let raw = match reg_ty(indices.dtype)? {
                    Ty::S64 => raw,
                    _ => super::expr::convert(c, raw, indices.dtype, DType::I64)?,
                };
                let clamped = c.b.max(raw, 0i64);
                let clamped = c.b.min(clamped, last);
                c.b.assign(index, clamped);
                Ok(())
            })?;
            let from = c.b.setp(Cmp::Ge, index, first);
            let to = c.b.setp(Cmp::Lt, index, end);
            let mine = c.b.and(from, to);
            let flag = c.b.selp(1i64, 0i64, mine, Ty::U32);
            let index32 = c.b.cvt(Ty::S32, None, index, None, "");
            let any = warp_fold(c, flag, |c, x, y| c.b.or(x, y));
            let some = c.b.setp(Cmp::Ne, any, 0i64);
            c.when(some, |c| {
                c.for_range(0i64, 32i64, 1i64, |c, j| {
                    let j32 = c.b.cvt(Ty::U32, None, j, None, "");
                    let hit = c.b.shfl(Shuffle::Index, flag, j32);
                    // Rows below 2³¹ (the index is clamped to the axis): a 32-bit shuffle.
                    let target = c.b.shfl(Shuffle::Index, index32, j32);
                    let target = c.b.cvt(Ty::S64, None, target, None, "");
                    let take = c.b.setp(Cmp::Ne, hit, 0i64);
                    c.when(take, |c| {
                        let o_row = c.b.mad(row, len, target);
                        let o_row = c.b.mul(o_row, post_v.clone());
                        let update = c.b.add(i0, j);
                        let u_row = c.b.mad(row, n.clone(), update);
                        let u_row = c.b.mul(u_row, post_v.clone());
                        c.for_range(lane, post_v.clone(), 32i64, |c, col| {
                            let u_at = c.b.add(u_row, col);
                            let x = c.load(&u, u_at)?;
                            let o_at = c.b.add(o_row, col);
                            let value = match mode {
                                ScatterMode::Replace => x,
                                ScatterMode::Add => {
                                    let addr = c.address(o_base, o_at, dtype)?;
                                    let old = c.b.ld(Space::Global, mem, ty, addr, 0, false);
                                    c.b.add(old, x)
                                }
                            };
                            c.store(o_base, o_at, dtype, value)
                        })
                    })
                })
            })
        })
    })?;
    Ok(Launch {
        blocks: vec![WorkFactor {
            extent: items,
            tile: (ROWS * WARPS) as u64,
        }],
        threads: (32 * WARPS) as u32,
        shared_bytes: 0,
        buffers: Vec::new(),
    })
}
