//! The attention backward: the log-sum-exp mode of `Kernel::Attention` and
//! `Kernel::AttentionGrad`, as plain kernels with one thread per result element that recompute
//! every probability `p = e^(scale·q·k − lse)` from the saved log-sum-exp (no `S×T` buffer).
//!
//! - log-sum-exp: a thread per query walks its visible keys with a running maximum and sum;
//!   a query that sees no key gets `-∞`;
//! - the gradients: one warp per result row, each lane owning the row's elements
//!   `c ≡ lane mod 32`, walking the other side in tiles of 32 (one per lane, like the forward
//!   kernel), so each probability is computed once per pair, not once per element:
//!   - by the queries: the warp of query `(b, h, i)` takes its visible keys, lane `t` the
//!     score and `dsᵢⱼ = pᵢⱼ·(d_outᵢ·vⱼ − Δᵢ)·scale` of key `j₀ + t` (the query row and its
//!     output gradient staged in the warp's shared memory), then every lane adds
//!     `dsᵢⱼ·kⱼ꜀` for the tile's keys to its elements;
//!   - by the keys (values): the warp of key `(b, kv, j)` takes every query of the group's
//!     heads, lane `t` query `i₀ + t` (its probability zero when it does not see key `j`;
//!     tiles no lane sees are skipped), then adds `dsᵢⱼ·qᵢ꜀` (`pᵢⱼ·d_outᵢ꜀`).
//!
//! Each warp owns its row, so there are no atomics; sums run in tile order. bf16 operands are
//! widened as they are read, and each weight (a probability, a score gradient) is rounded to
//! bf16 before it weights a row, as `kiln_ir::attention` defines.

use super::attention::Visibility;
use super::attention_rows::{dot_staged, stage, Owned};
use super::context::{Addressed, Ctx, Granule};
use super::one_thread_each;
use super::reduce::warp_fold;
use crate::error::Result;
use crate::ptx::{math, Cmp, Reg, Special, Ty};
use kiln_backend_cpu::kernel::{AttentionGradKernel, AttentionKernel};
use kiln_backend_cpu::view::View;
use kiln_ir::{AttentionInput, DType};
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

fn head_size(v: &View) -> i64 {
    v.dims[3].as_constant().expect("lowering checks head sizes")
}

/// `Σ_c a[a_row + c]·b[b_row + c]` over `len` elements (both rows unit-stride).
fn dot(c: &mut Ctx, a: &Addressed, a_row: Reg, b: &Addressed, b_row: Reg, len: i64) -> Result<Reg> {
    let acc = c.b.mov(Ty::F32, 0.0f32);
    c.for_range(0i64, len, 1i64, |c, col| {
        let at = c.b.add(a_row, col);
        let x = c.load(a, at)?;
        let x = super::expr::convert(c, x, a.view.dtype, DType::F32)?;
        let at = c.b.add(b_row, col);
        let y = c.load(b, at)?;
        let y = super::expr::convert(c, y, b.view.dtype, DType::F32)?;
        let next = c.b.mad(x, y, acc);
        c.b.assign(acc, next);
        Ok(())
    })?;
    Ok(acc)
}

/// The log-sum-exp of each query's scaled visible scores, into `kernel.out` (`[B, H, S]`).
pub fn emit_lse(c: &mut Ctx, kernel: &AttentionKernel) -> Result<Launch> {
    let a = &kernel.attention;
    let d = head_size(&kernel.q);
    let rows = kernel.q.dims[0]
        .mul(&kernel.q.dims[1])
        .mul(&kernel.q.dims[2]);
    let count = c.value(&rows);
    let dims: Vec<_> = kernel.q.dims[..3].iter().map(|x| c.value(x)).collect();
    let keys = c.reg(&kernel.k.dims[2]);
    let (qa, ka, oa) = (
        c.addressed(&kernel.q),
        c.addressed(&kernel.k),
        c.addressed(&kernel.out),
    );
    let visibility = Visibility::of(c, kernel.positions.as_ref(), kernel.padding.as_ref());
    c.grid_loop(count, Granule::Thread, |c, t| {
        let bhi = c.unravel(t, &dims);
        let (b, h, i) = (bhi[0], bhi[1], bhi[2]);
        let kv = c.b.div(h, a.group as i64);
        let (lo, hi) = visibility.run(c, a, b, i, keys)?;
        let q_row = c.linear(&qa.offset, &[b, h, i], &qa.strides[..3]);
        let m = c.b.mov(Ty::F32, f32::NEG_INFINITY);
        let l = c.b.mov(Ty::F32, 0.0f32);
        c.for_range(lo, hi, 1i64, |c, j| {
            let k_row = c.linear(&ka.offset, &[b, kv, j], &ka.strides[..3]);
            let s = dot(c, &qa, q_row, &ka, k_row, d)?;
            let s = c.b.mul(s, a.scale as f32);
            let m_new = c.b.max(m, s);
            let shift = c.b.sub(m, m_new);
            let alpha = math::exp(&mut c.b, shift);
            let centered = c.b.sub(s, m_new);
            let e = math::exp(&mut c.b, centered);
            let l_next = c.b.mad(l, alpha, e);
            c.b.assign(l, l_next);
            c.b.assign(m, m_new);
            Ok(())
        })?;
        let log = math::log(&mut c.b, l);
        let lse = c.b.add(m, log);
        let at = c.linear(&oa.offset, &[b, h, i], &oa.strides);
        c.store(oa.base.expect("a buffer"), at, DType::F32, lse)
    })?;
    Ok(one_thread_each(rows))
}

/// Warps per block of the gradient kernels (each warp a row).
const GRAD_WARPS: u32 = 4;

/// One gradient of `flash_attention` (see the module doc).
pub fn emit_grad(c: &mut Ctx, kernel: &AttentionGradKernel) -> Result<Launch> {
    let a = &kernel.attention;
    let (d, dv) = (head_size(&kernel.q), head_size(&kernel.v));
    let rows = Poly::product(&kernel.out.dims[..3]);
    let count = c.value(&rows);
    let row_dims: Vec<_> = kernel.out.dims[..3].iter().map(|x| c.value(x)).collect();
    let width = head_size(&kernel.out);
    let seq = c.reg(&kernel.q.dims[2]);
    let keys = c.reg(&kernel.k.dims[2]);
    let [qa, ka, va, doa, la, da, oa] = [
        &kernel.q,
        &kernel.k,
        &kernel.v,
        &kernel.d_out,
        &kernel.lse,
        &kernel.delta,
        &kernel.out,
    ]
    .map(|v| c.addressed(v));
    let visibility = Visibility::of(c, kernel.positions.as_ref(), kernel.padding.as_ref());
    let scale = a.scale as f32;
    // Two staged rows per warp: (q, d_out) of a query, or (k, v) of a key.
    let per_warp = 4 * (d + dv.max(d));
    let smem = c.b.shared((GRAD_WARPS as i64 * per_warp) as u32);
    let tid = c.special(Special::Tid);
    let lane = c.b.and(tid, 31i64);
    let warp = c.b.shr(tid, 5);
    let first_stage = c.b.mad(warp, per_warp, smem);
    let second_stage = c.b.add(first_stage, 4 * d);
    let owned = Owned::new(c, lane, width);
    let group = a.group as i64;
    c.grid_loop(count, Granule::Warp, |c, w| {
        let at = c.unravel(w, &row_dims);
        let (b, head, row) = (at[0], at[1], at[2]);
        let acc = owned.zeros(c);
        if kernel.wrt == AttentionInput::Queries {
            let kv = c.b.div(head, group);
            let q_row = c.linear(&qa.offset, &[b, head, row], &qa.strides[..3]);
            let o_row = c.linear(&doa.offset, &[b, head, row], &doa.strides[..3]);
            stage(c, &qa, q_row, d, first_stage, lane)?;
            stage(c, &doa, o_row, dv, second_stage, lane)?;
            let at = c.linear(&la.offset, &[b, head, row], &la.strides);
            let lse = c.load(&la, at)?;
            let at = c.linear(&da.offset, &[b, head, row], &da.strides);
            let delta = c.load(&da, at)?;
            let (lo, hi) = visibility.run(c, a, b, row, keys)?;
            c.for_range(lo, hi, 32i64, |c, j0| {
                let j = c.b.add(j0, lane);
                let valid = c.b.setp(Cmp::Lt, j, hi);
                let ds = c.b.mov(Ty::F32, 0.0f32);
                c.when(valid, |c| {
                    let k_row = c.linear(&ka.offset, &[b, kv, j], &ka.strides[..3]);
                    let v_row = c.linear(&va.offset, &[b, kv, j], &va.strides[..3]);
                    let s = dot_staged(c, first_stage, &ka, k_row, d)?;
                    let p = probability(c, s, scale, lse);
                    let dp = dot_staged(c, second_stage, &va, v_row, dv)?;
                    let x = score_grad(c, p, dp, delta, scale);
                    let x = weight_as_operands(c, x, kernel)?;
                    c.b.assign(ds, x);
                    Ok(())
                })?;
                let left = c.b.sub(hi, j0);
                let tile = c.b.min(left, 32i64);
                owned.add_rows(c, &acc, ds, tile, &ka, |c, t| {
                    let key = c.b.add(j0, t);
                    Ok(c.linear(&ka.offset, &[b, kv, key], &ka.strides[..3]))
                })
            })?;
        } else {
            let k_row = c.linear(&ka.offset, &[b, head, row], &ka.strides[..3]);
            let v_row = c.linear(&va.offset, &[b, head, row], &va.strides[..3]);
            stage(c, &ka, k_row, d, first_stage, lane)?;
            stage(c, &va, v_row, dv, second_stage, lane)?;
            let first = c.b.mul(head, group);
            let last = c.b.add(first, group);
            c.for_range(first, last, 1i64, |c, h| {
                c.for_range(0i64, seq, 32i64, |c, i0| {
                    let i = c.b.add(i0, lane);
                    let weight = c.b.mov(Ty::F32, 0.0f32);
                    let in_seq = c.b.setp(Cmp::Lt, i, seq);
                    c.when(in_seq, |c| {
                        let (lo, hi) = visibility.run(c, a, b, i, keys)?;
                        let after = c.b.setp(Cmp::Ge, row, lo);
                        let before = c.b.setp(Cmp::Lt, row, hi);
                        let sees = c.b.and(after, before);
                        c.when(sees, |c| {
                            let q_row = c.linear(&qa.offset, &[b, h, i], &qa.strides[..3]);
                            let s = dot_staged(c, first_stage, &qa, q_row, d)?;
                            let at = c.linear(&la.offset, &[b, h, i], &la.strides);
                            let lse = c.load(&la, at)?;
                            let p = probability(c, s, scale, lse);
                            let x = if kernel.wrt == AttentionInput::Values {
                                p
                            } else {
                                let o_row = c.linear(&doa.offset, &[b, h, i], &doa.strides[..3]);
                                let dp = dot_staged(c, second_stage, &doa, o_row, dv)?;
                                let at = c.linear(&da.offset, &[b, h, i], &da.strides);
                                let delta = c.load(&da, at)?;
                                score_grad(c, p, dp, delta, scale)
                            };
                            let x = weight_as_operands(c, x, kernel)?;
                            c.b.assign(weight, x);
                            Ok(())
                        })
                    })?;
                    // Tiles whose queries all miss the key add nothing.
                    let seen = c.b.setp(Cmp::Ne, weight, 0.0f32);
                    let seen = c.b.selp(1i64, 0i64, seen, Ty::U32);
                    let any = warp_fold(c, seen, |c, x, y| c.b.or(x, y));
                    let some = c.b.setp(Cmp::Ne, any, 0i64);
                    c.when(some, |c| {
                        let left = c.b.sub(seq, i0);
                        let tile = c.b.min(left, 32i64);
                        let from = match kernel.wrt {
                            AttentionInput::Values => &doa,
                            _ => &qa,
                        };
                        owned.add_rows(c, &acc, weight, tile, from, |c, t| {
                            let query = c.b.add(i0, t);
                            Ok(c.linear(&from.offset, &[b, h, query], &from.strides[..3]))
                        })
                    })
                })
            })?;
        }
        let out_row = c.linear(&oa.offset, &[b, head, row], &oa.strides[..3]);
        owned.store(c, &acc, &oa, out_row)?;
        // The next row overwrites the staged rows.
        c.b.warp_sync();
        Ok(())
    })?;
    Ok(Launch {
        blocks: vec![WorkFactor {
            extent: rows,
            tile: GRAD_WARPS as u64,
        }],
        threads: GRAD_WARPS * 32,
        shared_bytes: c.b.shared_bytes(),
        buffers: Vec::new(),
    })
}

/// `e^(scale·s − lse)`.
fn probability(c: &mut Ctx, s: Reg, scale: f32, lse: Reg) -> Reg {
    let s = c.b.mul(s, scale);
    let x = c.b.sub(s, lse);
    math::exp(&mut c.b, x)
}

/// `p·(dp − Δ)·scale`.
fn score_grad(c: &mut Ctx, p: Reg, dp: Reg, delta: Reg, scale: f32) -> Reg {
    let diff = c.b.sub(dp, delta);
    let ds = c.b.mul(p, diff);
    c.b.mul(ds, scale)
}

/// A probability or score gradient as it weighs the other side: rounded to bf16 where the
/// operands are (`kiln_ir::attention`).
fn weight_as_operands(c: &mut Ctx, x: Reg, kernel: &AttentionGradKernel) -> Result<Reg> {
    match kernel.q.dtype {
        DType::F32 => Ok(x),
        narrow => {
            let rounded = super::expr::convert(c, x, DType::F32, narrow)?;
            super::expr::convert(c, rounded, narrow, DType::F32)
        }
    }
}
