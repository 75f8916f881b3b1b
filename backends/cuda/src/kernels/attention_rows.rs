//! Pieces of the attention kernels in which a warp owns one row of a head (a query's output,
//! or a key's gradient) and its lanes walk the other side in tiles of 32, one row per lane:
//! staging the warp's own rows in its shared memory, a lane's dot product of a staged row with
//! a row of a view, and the accumulation of the tile's rows into the elements a lane owns
//! (`c ≡ lane mod 32`), weighted by a value each lane computed for its row.
//!
//! The tile's rows are accumulated [`ROWS_IN_FLIGHT`] at a time, their loads issued together
//! (a decode query's time is the latency of these loads), in the order of the rows.
//!
//! Views are read along their last axis, which the lowering makes unit-stride for attention
//! operands; values are widened to f32 as they are read.

use super::context::{Addressed, Ctx};
use super::matmul_gemv::{load_octet, octets_along_rows};
use crate::error::Result;
use crate::ptx::{Cmp, Reg, Shuffle, Space, Ty};
use kiln_ir::DType;

/// Rows of a tile whose loads a lane has in flight together in [`Owned::add_rows`].
const ROWS_IN_FLIGHT: i64 = 8;

/// Copies `len` elements of `v` from `row` (unit-stride) into the warp's shared `slot`, as f32,
/// and waits for the warp.
pub fn stage(c: &mut Ctx, v: &Addressed, row: Reg, len: i64, slot: Reg, lane: Reg) -> Result<()> {
    c.for_range(lane, len, 32i64, |c, col| {
        let at = c.b.add(row, col);
        let x = c.load(v, at)?;
        let x = super::expr::convert(c, x, v.view.dtype, DType::F32)?;
        let to = c.b.mad(col, 4i64, slot);
        c.b.st(Space::Shared, "f32", to, 0, x);
        Ok(())
    })?;
    c.b.warp_sync();
    Ok(())
}

/// `Σ_c staged[c]·v[row + c]` over `len` elements, summed in the order of `c`. Where `v`'s rows
/// are read in aligned octets (`matmul_gemv::octets_along_rows`) and `len` is a multiple of 8,
/// each octet is one 16-byte load (two for f32) instead of eight.
pub fn dot_staged(c: &mut Ctx, staged: Reg, v: &Addressed, row: Reg, len: i64) -> Result<Reg> {
    let acc = c.b.mov(Ty::F32, 0.0f32);
    let octets = len % 8 == 0 && octets_along_rows(&v.view);
    let width = if octets { 8 } else { 1 };
    for first in (0..len).step_by(width) {
        let at = c.b.add(row, first);
        let ys = if octets {
            load_octet(c, v, at)?.to_vec()
        } else {
            let y = c.load(v, at)?;
            vec![super::expr::convert(c, y, v.view.dtype, DType::F32)?]
        };
        for (col, y) in (first..).zip(ys) {
            let x =
                c.b.ld(Space::Shared, "f32", Ty::F32, staged, 4 * col, false);
            let next = c.b.mad(x, y, acc);
            c.b.assign(acc, next);
        }
    }
    Ok(acc)
}

/// The elements `c = lane + 32·u` of a row of `width` a lane owns.
pub struct Owned {
    lane: Reg,
    exists: Vec<Reg>,
}

impl Owned {
    pub fn new(c: &mut Ctx, lane: Reg, width: i64) -> Owned {
        let exists = (0..(width + 31) / 32)
            .map(|u| c.b.setp(Cmp::Lt, lane, width - 32 * u))
            .collect();
        Owned { lane, exists }
    }

    /// Runs `body(u, c)` for each element `c = lane + 32·u` the lane owns.
    pub fn each(
        &self,
        c: &mut Ctx,
        mut body: impl FnMut(&mut Ctx, usize, Reg) -> Result<()>,
    ) -> Result<()> {
        for (u, &there) in self.exists.iter().enumerate() {
            c.when(there, |c| {
                let col = c.b.add(self.lane, 32 * u as i64);
                body(c, u, col)
            })?;
        }
        Ok(())
    }

    pub fn zeros(&self, c: &mut Ctx) -> Vec<Reg> {
        self.exists
            .iter()
            .map(|_| c.b.mov(Ty::F32, 0.0f32))
            .collect()
    }

    /// `acc[c] += Σ_t weight_t·v[row(t) + c]` for `t < tile`, `weight_t` held by lane `t`.
    pub fn add_rows(
        &self,
        c: &mut Ctx,
        acc: &[Reg],
        weight: Reg,
        tile: Reg,
        v: &Addressed,
        row: impl Fn(&mut Ctx, Reg) -> Result<Reg>,
    ) -> Result<()> {
        let first = c.b.mov(Ty::S64, 0i64);
        c.for_range_batched(
            first,
            tile,
            1i64,
            ROWS_IN_FLIGHT,
            |c, t| {
                let t32 = c.b.cvt(Ty::U32, None, t, None, "");
                let w = c.b.shfl(Shuffle::Index, weight, t32);
                let base = row(c, t)?;
                let mut xs = Vec::with_capacity(acc.len());
                for (u, &there) in self.exists.iter().enumerate() {
                    let x = c.b.mov(Ty::F32, 0.0f32);
                    c.when(there, |c| {
                        let col = c.b.add(self.lane, 32 * u as i64);
                        let at = c.b.add(base, col);
                        let loaded = c.load(v, at)?;
                        let loaded = super::expr::convert(c, loaded, v.view.dtype, DType::F32)?;
                        c.b.assign(x, loaded);
                        Ok(())
                    })?;
                    xs.push(x);
                }
                Ok((w, xs))
            },
            |c, _, (w, xs)| {
                for ((&a, &there), x) in acc.iter().zip(&self.exists).zip(xs) {
                    c.when(there, |c| {
                        let next = c.b.mad(w, x, a);
                        c.b.assign(a, next);
                        Ok(())
                    })?;
                }
                Ok(())
            },
        )
    }

    /// Stores the row from `base` of `out`, in `out`'s type (f32, or bf16 rounded).
    pub fn store(&self, c: &mut Ctx, acc: &[Reg], out: &Addressed, base: Reg) -> Result<()> {
        let dtype = out.view.dtype;
        for (u, (&a, &there)) in acc.iter().zip(&self.exists).enumerate() {
            c.when(there, |c| {
                let col = c.b.add(self.lane, 32 * u as i64);
                let at = c.b.add(base, col);
                let a = super::expr::convert(c, a, DType::F32, dtype)?;
                c.store(out.base.expect("a buffer"), at, dtype, a)
            })?;
        }
        Ok(())
    }
}
