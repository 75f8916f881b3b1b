//! Fused attention kernels (`Kernel::Attention`): online softmax with one warp per query row,
//! never holding more than 32 scores. bf16 operands with head sizes the tensor cores take go to
//! `attention_mma.rs` instead.
//!
//! Blocks of 4 warps; warp `w` (by grid stride over `B·H·S` rows) takes query `i` of batch
//! element `b` and head `h`, and reads the shared key/value head `h / group`. The query's
//! position and its row's padding give its run of visible keys `lo..hi`
//! (`kiln_ir::Attention::visible_keys`, by [`Visibility`]), walked in tiles of 32 keys, one key per lane:
//! 1. lane `t` computes the score `scale · q·k_{j0+t}` (the query row staged in the warp's
//!    shared memory), `-∞` past `hi`;
//! 2. the warp's maximum moves the running maximum to `m'`; the running sum `l` and the
//!    accumulator are rescaled by `e^(m − m')`;
//! 3. each lane's `p = e^(s − m')` is summed over the warp into `l`, and every lane adds
//!    `p_t · v_{j0+t}` for `t` in the tile to the output elements it owns (`c ≡ lane mod 32`).
//!
//! Each output element is `acc · (1/l)` (rounded to bf16 as it is stored where the result is
//! declared bf16); a query that sees no key gets `0 · ∞ = NaN`, as the unfused softmax does.
//! Only warp barriers are used, so warps of a block run independently.
//!
//! **Decode** (at most 4 queries per head, a constant): a query alone has too few keys for one
//! warp to cover its latency, and a batch-1 step has only `H` queries, so a block of 8 warps
//! takes one query and splits its keys (flash-decoding within a block): warp `w` walks the
//! tiles `lo + 32w, lo + 32w + 256, …` as above, leaves its maximum, sum and accumulators in
//! shared memory, and after a barrier warp 0 merges them in warp order (deterministic),
//! `Σ_w acc_w·e^(m_w − M) / Σ_w l_w·e^(m_w − M)` with `M = max_w m_w`, and stores the row.

use super::attention_rows::{dot_staged, stage, Owned};
use super::context::{Addressed, Ctx, Granule};
use super::reduce::warp_fold;
use crate::error::Result;
use crate::ptx::{math, Cmp, Reg, Space, Special, Ty};
use kiln_backend_cpu::kernel::AttentionKernel;
use kiln_backend_cpu::view::View;
use kiln_ir::{Attention, AttentionMask, DType};
use kiln_runtime::manifest::{Launch, WorkFactor};

/// Warps of a block in the warp-per-row form.
const WARPS: u32 = 4;
/// Warps sharing one query's keys in the decode form.
const SPLITS: i64 = 8;

/// A warp's running softmax over its keys: maximum, sum, and the output elements it owns.
struct Partial {
    m: Reg,
    l: Reg,
    acc: Vec<Reg>,
}

/// What one query row needs while a warp walks its keys.
struct Row<'a> {
    views: &'a Views,
    attention: &'a Attention,
    owned: &'a Owned,
    q_stage: Reg,
    lane: Reg,
    d: i64,
    k_head: Reg,
    v_head: Reg,
}

impl Row<'_> {
    /// The online softmax over the tiles of 32 keys at `first, first + step, …` below `hi`.
    fn walk(&self, c: &mut Ctx, first: Reg, hi: Reg, step: i64) -> Result<Partial> {
        let (views, lane) = (self.views, self.lane);
        let part = Partial {
            m: c.b.mov(Ty::F32, f32::NEG_INFINITY),
            l: c.b.mov(Ty::F32, 0.0f32),
            acc: self.owned.zeros(c),
        };
        c.for_range(first, hi, step, |c, j0| {
            // 1. One score per lane.
            let j = c.b.add(j0, lane);
            let valid = c.b.setp(Cmp::Lt, j, hi);
            let s = c.b.mov(Ty::F32, f32::NEG_INFINITY);
            c.when(valid, |c| {
                let k_row = c.b.mad(j, views.k.strides[2].clone(), self.k_head);
                let dot = dot_staged(c, self.q_stage, &views.k, k_row, self.d)?;
                let scaled = c.b.mul(dot, self.attention.scale as f32);
                c.b.assign(s, scaled);
                Ok(())
            })?;
            // 2. The new maximum and the rescaling.
            let tile_max = warp_fold(c, s, |c, x, y| c.b.max(x, y));
            let m_new = c.b.max(part.m, tile_max);
            let shift = c.b.sub(part.m, m_new);
            let alpha = math::exp(&mut c.b, shift);
            // 3. Probabilities, their sum, the weighted values.
            let centered = c.b.sub(s, m_new);
            let e = math::exp(&mut c.b, centered);
            let p = c.b.selp(e, 0.0f32, valid, Ty::F32);
            let sum = warp_fold(c, p, |c, x, y| c.b.add(x, y));
            let l_next = c.b.mad(part.l, alpha, sum);
            c.b.assign(part.l, l_next);
            c.b.assign(part.m, m_new);
            for &a in &part.acc {
                let scaled = c.b.mul(a, alpha);
                c.b.assign(a, scaled);
            }
            let left = c.b.sub(hi, j0);
            let count = c.b.min(left, 32i64);
            self.owned
                .add_rows(c, &part.acc, p, count, &views.v, |c, t| {
                    let key = c.b.add(j0, t);
                    Ok(c.b.mad(key, views.v.strides[2].clone(), self.v_head))
                })
        })?;
        Ok(part)
    }
}

pub fn emit(c: &mut Ctx, kernel: &AttentionKernel) -> Result<Launch> {
    let AttentionKernel {
        q,
        k,
        v,
        attention,
        output,
        ..
    } = kernel;
    if super::attention_mma::applies(kernel) {
        return super::attention_mma::emit(c, kernel);
    }
    if *output == kiln_backend_cpu::kernel::AttentionOutput::LogSumExp {
        return super::attention_grad::emit_lse(c, kernel);
    }
    let constant = |v: &kiln_backend_cpu::view::View| {
        v.dims[3].as_constant().expect("lowering checks head sizes")
    };
    let (d, dv) = (constant(q), constant(v));
    // Decode (a few queries per head): the warps of a block split one query's keys.
    let split = matches!(q.dims[2].as_constant(), Some(s) if s <= 4);
    let warps = if split { SPLITS as u32 } else { WARPS };
    let rows = q.dims[0].mul(&q.dims[1]).mul(&q.dims[2]);
    let rows_v = c.value(&rows);
    let (heads, seq) = (c.value(&q.dims[1]), c.value(&q.dims[2]));
    let keys = c.reg(&k.dims[2]);
    let views = Views::of(c, kernel);
    let smem = c.b.shared((warps as i64 * d * 4) as u32);
    let tid = c.special(Special::Tid);
    let lane = c.b.and(tid, 31i64);
    let warp = c.b.shr(tid, 5);
    let q_stage = c.b.mad(warp, d * 4, smem);
    let owned = Owned::new(c, lane, dv);
    // The split form's partials: each warp's maximum and sum, then its `dv` accumulators.
    let partials = split.then(|| c.b.shared((SPLITS * (2 + dv) * 4) as u32));
    let granule = if split { Granule::Block } else { Granule::Warp };
    c.grid_loop(rows_v, granule, |c, w| {
        let i = c.b.rem(w, seq.clone());
        let bh = c.b.div(w, seq.clone());
        let h = c.b.rem(bh, heads.clone());
        let bi = c.b.div(bh, heads.clone());
        let kv = c.b.div(h, attention.group as i64);
        let q_row = c.linear(&views.q.offset, &[bi, h, i], &views.q.strides[..3]);
        let row = Row {
            views: &views,
            attention,
            owned: &owned,
            q_stage,
            lane,
            d,
            k_head: c.linear(&views.k.offset, &[bi, kv], &views.k.strides[..2]),
            v_head: c.linear(&views.v.offset, &[bi, kv], &views.v.strides[..2]),
        };
        let out_row = c.linear(&views.out.offset, &[bi, h, i], &views.out.strides[..3]);
        let (lo, hi) = views.visibility.run(c, attention, bi, i, keys)?;
        stage(c, &views.q, q_row, d, q_stage, lane)?;
        match partials {
            None => {
                let part = row.walk(c, lo, hi, 32)?;
                let inv = c.b.rcp(part.l);
                for &a in &part.acc {
                    let y = c.b.mul(a, inv);
                    c.b.assign(a, y);
                }
                owned.store(c, &part.acc, &views.out, out_row)?;
            }
            Some(shared) => {
                let first = c.b.mad(warp, 32i64, lo);
                let part = row.walk(c, first, hi, 32 * SPLITS)?;
                let merged = Merge {
                    owned: &owned,
                    shared,
                    dv,
                    warp,
                    lane,
                };
                merged.store(c, &part, &views.out, out_row)?;
            }
        }
        // The next row overwrites the staged query.
        c.b.warp_sync();
        Ok(())
    })?;
    Ok(Launch {
        blocks: vec![WorkFactor {
            extent: rows,
            tile: if split { 1 } else { WARPS as u64 },
        }],
        threads: warps * 32,
        shared_bytes: c.b.shared_bytes(),
        buffers: Vec::new(),
    })
}

/// The split form's merge of a block's partials, in `shared` (`[m, l]` per warp, then `dv`
/// accumulators per warp).
struct Merge<'a> {
    owned: &'a Owned,
    shared: Reg,
    dv: i64,
    warp: Reg,
    lane: Reg,
}

impl Merge<'_> {
    /// Every warp leaves its partial; after a barrier warp 0 forms and stores the row,
    /// `Σ_w acc_w·e^(m_w − M) / Σ_w l_w·e^(m_w − M)` with `M = max_w m_w`, the warps in order
    /// (deterministic); a last barrier frees the partials for the next row. A warp that saw
    /// no key has `m_w = −∞` and adds nothing; a query that sees no key gets NaN, as in the
    /// one-warp form.
    fn store(&self, c: &mut Ctx, part: &Partial, out: &Addressed, out_row: Reg) -> Result<()> {
        let (shared, dv) = (self.shared, self.dv);
        let stats = |w: i64| 8 * w;
        let accs = |w: i64| 8 * SPLITS + 4 * dv * w;
        let first_lane = c.b.setp(Cmp::Eq, self.lane, 0i64);
        c.when(first_lane, |c| {
            let at = c.b.mad(self.warp, 8i64, shared);
            c.b.st(Space::Shared, "f32", at, 0, part.m);
            c.b.st(Space::Shared, "f32", at, 4, part.l);
            Ok(())
        })?;
        let mine = c.b.mad(self.warp, 4 * dv, shared);
        self.owned.each(c, |c, u, col| {
            let at = c.b.mad(col, 4i64, mine);
            c.b.st(Space::Shared, "f32", at, accs(0), part.acc[u]);
            Ok(())
        })?;
        c.b.bar_sync();
        let first_warp = c.b.setp(Cmp::Eq, self.warp, 0i64);
        c.when(first_warp, |c| {
            let load = |c: &mut Ctx, base: Reg, at: i64| {
                c.b.ld(Space::Shared, "f32", Ty::F32, base, at, false)
            };
            let m: Vec<Reg> = (0..SPLITS).map(|w| load(c, shared, stats(w))).collect();
            let top = m.iter().skip(1).fold(m[0], |a, &b| c.b.max(a, b));
            let scales: Vec<Reg> = m
                .iter()
                .map(|&mw| {
                    let shift = c.b.sub(mw, top);
                    math::exp(&mut c.b, shift)
                })
                .collect();
            let total = c.b.mov(Ty::F32, 0.0f32);
            for (w, &scale) in scales.iter().enumerate() {
                let l = load(c, shared, stats(w as i64) + 4);
                let next = c.b.mad(l, scale, total);
                c.b.assign(total, next);
            }
            let inv = c.b.rcp(total);
            let out_values = self.owned.zeros(c);
            self.owned.each(c, |c, u, col| {
                let at = c.b.mad(col, 4i64, shared);
                for (w, &scale) in scales.iter().enumerate() {
                    let x = load(c, at, accs(w as i64));
                    let next = c.b.mad(x, scale, out_values[u]);
                    c.b.assign(out_values[u], next);
                }
                let y = c.b.mul(out_values[u], inv);
                c.b.assign(out_values[u], y);
                Ok(())
            })?;
            self.owned.store(c, &out_values, out, out_row)
        })?;
        c.b.bar_sync();
        Ok(())
    }
}

/// An attention kernel's operands, ready to address.
pub(super) struct Views {
    pub q: Addressed,
    pub k: Addressed,
    pub v: Addressed,
    pub out: Addressed,
    pub visibility: Visibility,
}

impl Views {
    pub fn of(c: &mut Ctx, kernel: &AttentionKernel) -> Views {
        Views {
            q: c.addressed(&kernel.q),
            k: c.addressed(&kernel.k),
            v: c.addressed(&kernel.v),
            out: c.addressed(&kernel.out),
            visibility: Visibility::of(c, kernel.positions.as_ref(), kernel.padding.as_ref()),
        }
    }
}

/// What decides which keys a query sees: its position (absent when the mask is `none`) and its
/// row's padding (under `padding=left`), by the bounds of `kiln_ir::Attention::visible_keys`.
pub(super) struct Visibility {
    positions: Option<Addressed>,
    padding: Option<Addressed>,
}

impl Visibility {
    pub fn of(c: &mut Ctx, positions: Option<&View>, padding: Option<&View>) -> Visibility {
        Visibility {
            positions: positions.map(|p| c.addressed(p)),
            padding: padding.map(|p| c.addressed(p)),
        }
    }

    /// The keys `lo..hi` query `i` of batch element `b` sees.
    pub fn run(
        &self,
        c: &mut Ctx,
        attention: &Attention,
        b: Reg,
        i: Reg,
        keys: Reg,
    ) -> Result<(Reg, Reg)> {
        let padding = self.padding(c, b)?;
        self.run_in_row(c, attention, (b, padding), i, keys)
    }

    /// The padding of batch element `b` (0 without one).
    pub fn padding(&self, c: &mut Ctx, b: Reg) -> Result<Reg> {
        load_int(c, &self.padding, &[b])
    }

    /// [`Visibility::run`] for a row whose padding is already loaded.
    pub fn run_in_row(
        &self,
        c: &mut Ctx,
        attention: &Attention,
        (b, padding): (Reg, Reg),
        i: Reg,
        keys: Reg,
    ) -> Result<(Reg, Reg)> {
        let position = load_int(c, &self.positions, &[b, i])?;
        Ok(visible(c, attention.mask, position, padding, keys))
    }
}

/// Element `index` of an integer operand as an `s64`, or 0 without the operand.
fn load_int(c: &mut Ctx, operand: &Option<Addressed>, index: &[Reg]) -> Result<Reg> {
    match operand {
        Some(x) => {
            let at = c.linear(&x.offset, index, &x.strides);
            let value = c.load(x, at)?;
            super::expr::convert(c, value, x.view.dtype, DType::I64)
        }
        None => Ok(c.b.mov(Ty::S64, 0i64)),
    }
}

/// The visible keys `lo..hi` of a query at position `p` among `keys`, in a row padded by `pad`.
fn visible(c: &mut Ctx, mask: AttentionMask, p: Reg, pad: Reg, keys: Reg) -> (Reg, Reg) {
    let b = &mut c.b;
    // The key at position `x`, clamped to the keys.
    let key = |b: &mut crate::ptx::KernelBuilder, x: Reg| {
        let j = b.add(x, pad);
        let j = b.max(j, 0i64);
        b.min(j, keys)
    };
    let next = b.add(p, 1i64);
    let zero = b.mov(Ty::S64, 0i64);
    let first = key(b, zero);
    match mask {
        AttentionMask::None => (first, keys),
        AttentionMask::Causal => (first, key(b, next)),
        AttentionMask::Window(w) => {
            let lowest = b.sub(next, w as i64);
            let lowest = b.max(lowest, 0i64);
            (key(b, lowest), key(b, next))
        }
        AttentionMask::Prefix(n) => {
            let end = b.max(next, n as i64);
            (first, key(b, end))
        }
    }
}
