//! The attention backward: the log-sum-exp mode of `Kernel::Attention` and
//! `Kernel::AttentionGrad`, as plain kernels with one thread per result element that recompute
//! every probability `p = e^(scale·q·k − lse)` from the saved log-sum-exp (no `S×T` buffer).
//!
//! - log-sum-exp: a thread per query walks its visible keys with a running maximum and sum;
//!   a query that sees no key gets `-∞`;
//! - by the queries: a thread per element `(b, h, i, c)` of `dq` walks the query's visible keys,
//!   `dqᵢ꜀ += dsᵢⱼ·kⱼ꜀` with `dsᵢⱼ = pᵢⱼ·(d_outᵢ·vⱼ − Δᵢ)·scale`;
//! - by the keys (values): a thread per element `(b, kv, j, c)` walks the queries of every head
//!   of the group and keeps those that see key `j`: `dkⱼ꜀ += dsᵢⱼ·qᵢ꜀` (`dvⱼ꜀ += pᵢⱼ·d_outᵢ꜀`).
//!
//! Dot products are recomputed per element: correct at any size, and the place where tiles and
//! tensor cores will go. Each thread owns its element, so there are no atomics.

use super::attention::visible;
use super::context::{Addressed, Ctx, Granule};
use super::one_thread_each;
use crate::error::Result;
use crate::ptx::{math, Cmp, Reg, Ty};
use kiln_backend_cpu::kernel::{AttentionGradKernel, AttentionKernel};
use kiln_backend_cpu::view::View;
use kiln_ir::{Attention, AttentionInput, DType};
use kiln_runtime::manifest::Launch;

fn head_size(v: &View) -> i64 {
    v.dims[3].as_constant().expect("lowering checks head sizes")
}

/// `Σ_c a[a_row + c]·b[b_row + c]` over `len` elements (both rows unit-stride).
fn dot(c: &mut Ctx, a: &Addressed, a_row: Reg, b: &Addressed, b_row: Reg, len: i64) -> Result<Reg> {
    let acc = c.b.mov(Ty::F32, 0.0f32);
    c.for_range(0i64, len, 1i64, |c, col| {
        let at = c.b.add(a_row, col);
        let x = c.load(a, at)?;
        let at = c.b.add(b_row, col);
        let y = c.load(b, at)?;
        let next = c.b.mad(x, y, acc);
        c.b.assign(acc, next);
        Ok(())
    })?;
    Ok(acc)
}

/// The keys `lo..hi` query `i` of batch element `b` sees.
fn run(
    c: &mut Ctx,
    attention: &Attention,
    positions: &Option<Addressed>,
    b: Reg,
    i: Reg,
    keys: Reg,
) -> Result<(Reg, Reg)> {
    Ok(match positions {
        Some(p) => {
            let at = c.linear(&p.offset, &[b, i], &p.strides);
            let pos = c.load(p, at)?;
            let pos = super::expr::convert(c, pos, p.view.dtype, DType::I64)?;
            visible(c, attention.mask, pos, keys)
        }
        None => (c.b.mov(Ty::S64, 0i64), keys),
    })
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
    let pa = kernel.positions.as_ref().map(|p| c.addressed(p));
    c.grid_loop(count, Granule::Thread, |c, t| {
        let bhi = c.unravel(t, &dims);
        let (b, h, i) = (bhi[0], bhi[1], bhi[2]);
        let kv = c.b.div(h, a.group as i64);
        let (lo, hi) = run(c, a, &pa, b, i, keys)?;
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

/// One gradient of `flash_attention` (see the module doc).
pub fn emit_grad(c: &mut Ctx, kernel: &AttentionGradKernel) -> Result<Launch> {
    let a = &kernel.attention;
    let (d, dv) = (head_size(&kernel.q), head_size(&kernel.v));
    let total = kernel.out.numel();
    let count = c.value(&total);
    let out_dims: Vec<_> = kernel.out.dims.iter().map(|x| c.value(x)).collect();
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
    let pa = kernel.positions.as_ref().map(|p| c.addressed(p));
    let scale = a.scale as f32;
    // p and ds of query (b, h, i) and key (b, kv, j).
    let pair = |c: &mut Ctx, b: Reg, h: Reg, kv: Reg, i: Reg, j: Reg| -> Result<(Reg, Reg)> {
        let q_row = c.linear(&qa.offset, &[b, h, i], &qa.strides[..3]);
        let k_row = c.linear(&ka.offset, &[b, kv, j], &ka.strides[..3]);
        let s = dot(c, &qa, q_row, &ka, k_row, d)?;
        let s = c.b.mul(s, scale);
        let at = c.linear(&la.offset, &[b, h, i], &la.strides);
        let lse = c.load(&la, at)?;
        let x = c.b.sub(s, lse);
        let p = math::exp(&mut c.b, x);
        let o_row = c.linear(&doa.offset, &[b, h, i], &doa.strides[..3]);
        let v_row = c.linear(&va.offset, &[b, kv, j], &va.strides[..3]);
        let dp = dot(c, &doa, o_row, &va, v_row, dv)?;
        let at = c.linear(&da.offset, &[b, h, i], &da.strides);
        let delta = c.load(&da, at)?;
        let diff = c.b.sub(dp, delta);
        let ds = c.b.mul(p, diff);
        Ok((p, c.b.mul(ds, scale)))
    };
    let group = a.group as i64;
    c.grid_loop(count, Granule::Thread, |c, t| {
        let at = c.unravel(t, &out_dims);
        let (b, head, row, col) = (at[0], at[1], at[2], at[3]);
        let acc = c.b.mov(Ty::F32, 0.0f32);
        if kernel.wrt == AttentionInput::Queries {
            let kv = c.b.div(head, group);
            let (lo, hi) = run(c, a, &pa, b, row, keys)?;
            c.for_range(lo, hi, 1i64, |c, j| {
                let (_, ds) = pair(c, b, head, kv, row, j)?;
                let k_at = c.linear(&ka.offset, &[b, kv, j, col], &ka.strides);
                let kx = c.load(&ka, k_at)?;
                let next = c.b.mad(ds, kx, acc);
                c.b.assign(acc, next);
                Ok(())
            })?;
        } else {
            let first = c.b.mul(head, group);
            let last = c.b.add(first, group);
            c.for_range(first, last, 1i64, |c, h| {
                c.for_range(0i64, seq, 1i64, |c, i| {
                    let (lo, hi) = run(c, a, &pa, b, i, keys)?;
                    let after = c.b.setp(Cmp::Ge, row, lo);
                    let before = c.b.setp(Cmp::Lt, row, hi);
                    let sees = c.b.and(after, before);
                    c.when(sees, |c| {
                        let (p, ds) = pair(c, b, h, head, i, row)?;
                        let (weight, from, view) = match kernel.wrt {
                            AttentionInput::Values => (p, &doa, [b, h, i, col]),
                            _ => (ds, &qa, [b, h, i, col]),
                        };
                        let at = c.linear(&from.offset, &view, &from.strides);
                        let x = c.load(from, at)?;
                        let next = c.b.mad(weight, x, acc);
                        c.b.assign(acc, next);
                        Ok(())
                    })
                })
            })?;
        }
        let at = c.linear(&oa.offset, &[b, head, row, col], &oa.strides);
        c.store(oa.base.expect("a buffer"), at, DType::F32, acc)
    })?;
    Ok(one_thread_each(total))
}
