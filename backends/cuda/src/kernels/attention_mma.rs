//! The tensor-core form of `Kernel::Attention` (`attention_mma`): FlashAttention's forward for
//! **bf16** queries, keys and values (the `bf16` policy's attention), head sizes that are
//! multiples of 16 up to 128, on `mma.sync.aligned.m16n8k16` with f32 accumulators. `attention.rs`
//! picks it for the values (the log-sum-exp keeps the warp-per-row form).
//!
//! **Work.** A block of 4 warps takes 64 queries of one batch element and head (items
//! `B·H·⌈S/64⌉`, by grid stride); warp `w` owns queries `16w..16w+16` of them, and each lane
//! two, rows `g` and `g + 8` of the warp's (`g = lane >> 2`, `t = lane % 4`, the fragment
//! layouts of `matmul_mma.rs`). The block walks the keys its queries see, `lo..hi` (the union of
//! the rows' visible runs, folded over the block through shared memory), 64 at a time:
//! 1. `S = Q·Kᵀ` for the tile: the queries' A fragments stay in registers for the whole walk;
//!    the tile's keys are staged in shared memory as `Ks[key][d]`, so a B fragment word (two
//!    neighbouring `d` of one key) is one `ld.shared.b32`. Each lane holds 32 scores: 8 n-tiles
//!    of 8 keys × columns `2t, 2t + 1` × rows `g, g + 8`.
//! 2. Scores are scaled by `scale·log₂e` (the softmax in base 2, `ex2.approx`); where the tile
//!    is not inside every row's visible run, each score outside its row's run becomes `-∞`.
//! 3. Online softmax per row: the tile's maximum (the lane's 16, then the 4 lanes of the row by
//!    shuffles) moves the running maximum `m`; the running sum `l` (each lane's own part,
//!    summed over the 4 lanes at the end) and the output accumulators are rescaled by
//!    `2^(m − m')`; `p = 2^(s − m')`, with `m' = 0` while a row has seen only `-∞`.
//! 4. `O += P·V`: the accumulator layout of `S` is the A fragment layout of `P` (two n-tiles of
//!    8 keys are one k-step of 16), so each pair of probabilities is rounded to bf16 and packed
//!    in registers. Values are staged transposed, `Vt[c][key]`, so a B fragment word (two
//!    neighbouring keys of one column) is one `ld.shared.b32`.
//!
//! Finally each row is divided by `l` and stored (f32). A query that sees no key has `l = 0`
//! and gets `0 · ∞ = NaN`, as the IR defines. Rounding the unnormalized probabilities to bf16
//! (FlashAttention's choice) differs from the IR's rounding of the normalized ones by at most
//! one bf16 rounding of each weight (`2⁻⁸` relative), the bound the tests use.
//!
//! **Staging.** The next tile of keys and values is loaded into registers (16-byte vectors when
//! `matmul_mma::vectorizable` proves them aligned, else element by element) while the tensor
//! cores work on the current one, and stored after the barrier that ends it. Keys past `T` are
//! 0. Shared rows are padded to `d + 8` and `72` bf16, so fragment reads of the 32 lanes hit 32
//! banks; consecutive lanes stage consecutive keys of `V`, so its transposed stores do too.
//!
//! Invariants: every thread reaches every barrier (the walk's bounds are the block's); shared
//! tiles are written only between the barrier that ends a tile and the one that starts the next.

use super::attention::visible;
use super::context::{Addressed, Ctx, Granule};
use super::matmul_mma::{vectorizable, VECTOR};
use super::reduce::warp_fold;
use crate::error::Result;
use crate::ptx::{Cmp, Operand, Reg, Shuffle, Space, Special, Ty};
use kiln_backend_cpu::kernel::AttentionKernel;
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Queries per block (16 per warp).
const QUERIES: i64 = 64;
/// Keys per tile.
const KEYS: i64 = 64;
/// Threads per block.
const THREADS: i64 = 128;
/// Bytes of a row of the transposed value tile: `KEYS` bf16 and 8 of padding.
const VT_ROW: i64 = (KEYS + 8) * 2;

/// Whether attention `kernel` takes this form: bf16 operands, head sizes multiples of 16 up to
/// 128.
pub fn applies(kernel: &AttentionKernel) -> bool {
    let size = |v: &kiln_backend_cpu::view::View| v.dims[3].as_constant();
    let fits = |n: Option<i64>| matches!(n, Some(n) if n % 16 == 0 && (16..=128).contains(&n));
    [&kernel.q, &kernel.k, &kernel.v]
        .iter()
        .all(|v| v.dtype == DType::BF16)
        && fits(size(&kernel.q))
        && fits(size(&kernel.v))
}

/// One lane's part of staging a `KEYS × width` tile of keys (`Ks[key][c]`) or values
/// (`Vt[c][key]`): chunks of `VECTOR` neighbouring columns of one key.
struct TileStage {
    v: Addressed,
    width: i64,
    /// Whether chunks are single 16-byte loads.
    vector: bool,
    /// Each chunk's key and first column (relative to the tile), and its four words.
    chunks: Vec<(Reg, Reg, [Reg; 4])>,
    /// The shared tile and its row pitch in bytes.
    tile: Reg,
    transposed: bool,
}

impl TileStage {
    /// Keys (`transposed` false): consecutive lanes take consecutive chunks of a key, so global
    /// loads coalesce. Values (`transposed`): consecutive lanes take consecutive keys, so the
    /// transposed shared stores hit distinct banks.
    fn new(c: &mut Ctx, v: &Addressed, width: i64, transposed: bool, tid: Reg) -> TileStage {
        let per_key = width / VECTOR;
        let count = KEYS * per_key / THREADS;
        let chunks = (0..count)
            .map(|i| {
                let index = c.b.add(tid, i * THREADS);
                let (key, chunk) = match transposed {
                    false => (c.b.div(index, per_key), c.b.rem(index, per_key)),
                    true => (c.b.rem(index, KEYS), c.b.div(index, KEYS)),
                };
                let col = c.b.mul(chunk, VECTOR);
                (key, col, [(); 4].map(|_| c.b.reg(Ty::B32)))
            })
            .collect();
        let bytes = match transposed {
            false => KEYS * Self::pitch_of(width),
            true => width * VT_ROW,
        };
        TileStage {
            v: v.clone(),
            width,
            vector: vectorizable(&v.view, 3),
            chunks,
            tile: c.b.shared(bytes as u32),
            transposed,
        }
    }

    /// Bytes of a row of the key tile: `width` bf16 and 8 of padding.
    fn pitch_of(width: i64) -> i64 {
        (width + 8) * 2
    }

    /// Loads the chunks of keys `j0..j0 + KEYS` (of `keys`) of the head at linear index `head`.
    fn load(&self, c: &mut Ctx, head: Reg, j0: Reg, keys: &Operand) -> Result<()> {
        for (key, col, words) in &self.chunks {
            let j = c.b.add(j0, *key);
            let inside = c.b.setp(Cmp::Lt, j, keys.clone());
            let row = c.b.mad(j, self.v.strides[2].clone(), head);
            let at = c.b.add(row, *col);
            for &w in words {
                c.b.assign(w, 0i64);
            }
            c.when(inside, |c| {
                if self.vector {
                    let base = self.v.base.expect("a vectorizable view is a buffer");
                    let addr = c.address(base, at, DType::BF16)?;
                    for (&w, x) in words.iter().zip(c.b.ld_v4(Space::Global, addr, 0, true)) {
                        c.b.assign(w, x);
                    }
                    return Ok(());
                }
                for (e, &w) in words.iter().enumerate() {
                    let lo_at = c.b.add(at, 2 * e as i64);
                    let hi_at = c.b.add(lo_at, 1i64);
                    let lo = c.load(&self.v, lo_at)?;
                    let hi = c.load(&self.v, hi_at)?;
                    let pair = c.b.pack(Ty::B32, lo, hi);
                    c.b.assign(w, pair);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Stores the loaded chunks into the shared tile.
    fn store(&self, c: &mut Ctx) {
        for (key, col, words) in &self.chunks {
            if !self.transposed {
                let at = c.b.mad(*key, Self::pitch_of(self.width), self.tile);
                let at = c.b.mad(*col, 2i64, at);
                c.b.st_v4(Space::Shared, at, 0, *words);
                continue;
            }
            let at = c.b.mad(*col, VT_ROW, self.tile);
            let at = c.b.mad(*key, 2i64, at);
            for (e, &w) in words.iter().enumerate() {
                let (lo, hi) = c.b.unpack(w);
                let row = 2 * e as i64 * VT_ROW;
                c.b.st(Space::Shared, "b16", at, row, lo);
                c.b.st(Space::Shared, "b16", at, row + VT_ROW, hi);
            }
        }
    }

    /// The shared address of a lane's first B fragment word: row `g` of the tile, column `2t`.
    fn fragment_base(&self, c: &mut Ctx, g: Reg, t: Reg) -> Reg {
        let pitch = match self.transposed {
            false => Self::pitch_of(self.width),
            true => VT_ROW,
        };
        let at = c.b.mad(g, pitch, self.tile);
        c.b.mad(t, 4i64, at)
    }
}

/// A lane's two query rows: `[g, g + 8]` of its warp's 16.
type Rows<T> = [T; 2];

/// The B fragment of `n`-tile `ni` (8 rows of the tile) at `k`-step `kk` (16 columns), from a
/// lane's first fragment word `base` in a tile of `pitch`-byte rows.
fn b_fragment(c: &mut Ctx, base: Reg, pitch: i64, ni: i64, kk: i64) -> [Reg; 2] {
    let at = ni * 8 * pitch + kk * 32;
    [0, 16].map(|d| c.b.ld(Space::Shared, "b32", Ty::B32, base, at + d, false))
}

/// Two f32 rounded to bf16 and packed in one word, the first in the low half.
fn pack_bf16(c: &mut Ctx, lo: Reg, hi: Reg) -> Result<Reg> {
    let lo = super::expr::convert(c, lo, DType::F32, DType::BF16)?;
    let hi = super::expr::convert(c, hi, DType::F32, DType::BF16)?;
    Ok(c.b.pack(Ty::B32, lo, hi))
}

/// Folds `x` over the four lanes that share a fragment row (lanes `4g..4g + 4`).
fn row_fold(c: &mut Ctx, x: Reg, fold: impl Fn(&mut Ctx, Reg, Reg) -> Reg) -> Reg {
    let mut acc = x;
    for offset in [1, 2] {
        let other = c.b.shfl(Shuffle::Xor, acc, offset);
        acc = fold(c, acc, other);
    }
    acc
}

/// The bounds of the keys a block walks and of those every row sees, folded over its 128 lanes
/// (each with its two rows' runs) through `slots` (4 × 4 s64 per warp).
struct BlockRange {
    /// The union of the rows' runs: `lo..hi`.
    lo: Reg,
    hi: Reg,
    /// The intersection: a tile inside `all_lo..all_hi` needs no mask.
    all_lo: Reg,
    all_hi: Reg,
}

/// A fold of two values into one.
type Fold = fn(&mut Ctx, Reg, Reg) -> Reg;

fn block_range(
    c: &mut Ctx,
    rows: &Rows<(Reg, Reg)>,
    slots: Reg,
    warp: Reg,
    lane: Reg,
) -> BlockRange {
    // An empty run takes no part in the union and empties the intersection.
    let folds: [(Reg, Fold); 4] = [
        (c.b.min(rows[0].0, rows[1].0), |c, x, y| c.b.min(x, y)),
        (c.b.max(rows[0].1, rows[1].1), |c, x, y| c.b.max(x, y)),
        (c.b.max(rows[0].0, rows[1].0), |c, x, y| c.b.max(x, y)),
        (c.b.min(rows[0].1, rows[1].1), |c, x, y| c.b.min(x, y)),
    ];
    let first_lane = c.b.setp(Cmp::Eq, lane, 0i64);
    let slot = c.b.mad(warp, 32i64, slots);
    let folded: Vec<Reg> = folds.iter().map(|&(x, f)| warp_fold(c, x, f)).collect();
    c.when(first_lane, |c| {
        for (i, &x) in folded.iter().enumerate() {
            c.b.st(Space::Shared, "s64", slot, 8 * i as i64, x);
        }
        Ok(())
    })
    .expect("stores cannot fail");
    c.b.bar_sync();
    let mut out = Vec::new();
    for (i, &(_, f)) in folds.iter().enumerate() {
        let mut acc =
            c.b.ld(Space::Shared, "s64", Ty::S64, slots, 8 * i as i64, false);
        for w in 1..4 {
            let x = c.b.ld(
                Space::Shared,
                "s64",
                Ty::S64,
                slots,
                32 * w + 8 * i as i64,
                false,
            );
            acc = f(c, acc, x);
        }
        out.push(acc);
    }
    // The next item rewrites the slots.
    c.b.bar_sync();
    BlockRange {
        lo: out[0],
        hi: out[1],
        all_lo: out[2],
        all_hi: out[3],
    }
}

pub fn emit(c: &mut Ctx, kernel: &AttentionKernel) -> Result<Launch> {
    let AttentionKernel {
        q,
        k,
        v,
        positions,
        out,
        attention,
        ..
    } = kernel;
    let constant = |v: &kiln_backend_cpu::view::View| v.dims[3].as_constant().expect("applies");
    let (d, dv) = (constant(q), constant(v));
    let (heads, seq) = (c.value(&q.dims[1]), c.value(&q.dims[2]));
    let keys = c.value(&k.dims[2]);
    let keys_reg = c.reg(&k.dims[2]);
    let (qa, ka, va, oa) = (
        c.addressed(q),
        c.addressed(k),
        c.addressed(v),
        c.addressed(out),
    );
    let pa = positions.as_ref().map(|p| c.addressed(p));
    let tiles = c.reg(&q.dims[2].add(&Poly::constant(QUERIES - 1)));
    let tiles = c.b.div(tiles, QUERIES);
    let bh = c.reg(&q.dims[0].mul(&q.dims[1]));
    let items = c.b.mul(bh, tiles);
    let tid = c.special(Special::Tid);
    let (lane, warp) = (c.b.and(tid, 31i64), c.b.shr(tid, 5));
    let (g, t) = (c.b.shr(lane, 2), c.b.and(lane, 3i64));
    let ks = TileStage::new(c, &ka, d, false, tid);
    let vs = TileStage::new(c, &va, dv, true, tid);
    let slots = c.b.shared(4 * 32);
    let k_frag = ks.fragment_base(c, g, t);
    let v_frag = vs.fragment_base(c, g, t);
    let log2_scale = (attention.scale * std::f64::consts::LOG2_E) as f32;
    let d_steps = (d / 16) as usize;
    let q_frags: Vec<[Reg; 4]> = (0..d_steps)
        .map(|_| [(); 4].map(|_| c.b.reg(Ty::B32)))
        .collect();
    let acc: Vec<[Reg; 4]> = (0..dv / 8)
        .map(|_| [(); 4].map(|_| c.b.reg(Ty::F32)))
        .collect();
    let n_tiles = (KEYS / 8) as usize;
    c.grid_loop(items.into(), Granule::Block, |c, w| {
        let tile = c.b.rem(w, tiles);
        let bhi = c.b.div(w, tiles);
        let h = c.b.rem(bhi, heads.clone());
        let bi = c.b.div(bhi, heads.clone());
        let kv = c.b.div(h, attention.group as i64);
        let q_head = c.linear(&qa.offset, &[bi, h], &qa.strides[..2]);
        let k_head = c.linear(&ka.offset, &[bi, kv], &ka.strides[..2]);
        let v_head = c.linear(&va.offset, &[bi, kv], &va.strides[..2]);
        let out_head = c.linear(&oa.offset, &[bi, h], &oa.strides[..2]);
        let first = c.b.mul(tile, QUERIES);
        let first = c.b.mad(warp, 16i64, first);
        let r0 = c.b.add(first, g);
        let r1 = c.b.add(r0, 8i64);
        let query_rows = [r0, r1];
        // Each row's visible run (empty past the last query) and its query fragments.
        let mut runs = Vec::new();
        for &r in &query_rows {
            let inside = c.b.setp(Cmp::Lt, r, seq.clone());
            let (lo, hi) = match &pa {
                Some(p) => {
                    let pos = c.b.mov(Ty::S64, 0i64);
                    c.when(inside, |c| {
                        let at = c.linear(&p.offset, &[bi, r], &p.strides);
                        let x = c.load(p, at)?;
                        let x = super::expr::convert(c, x, p.view.dtype, DType::I64)?;
                        c.b.assign(pos, x);
                        Ok(())
                    })?;
                    visible(c, attention.mask, pos, keys_reg)
                }
                None => (c.b.mov(Ty::S64, 0i64), keys_reg),
            };
            let lo = c.b.selp(lo, i64::MAX, inside, Ty::S64);
            let hi = c.b.selp(hi, 0i64, inside, Ty::S64);
            runs.push((lo, hi));
        }
        let runs: Rows<(Reg, Reg)> = [runs[0], runs[1]];
        for (half, &r) in query_rows.iter().enumerate() {
            let inside = c.b.setp(Cmp::Lt, r, seq.clone());
            let row = c.b.mad(r, qa.strides[2].clone(), q_head);
            for (kk, frag) in q_frags.iter().enumerate() {
                for (which, col) in [(0, 0), (2, 8)] {
                    let word = frag[which + half];
                    c.b.assign(word, 0i64);
                    c.when(inside, |c| {
                        let at = c.b.mad(t, 2i64, row);
                        let at = c.b.add(at, kk as i64 * 16 + col);
                        let lo = c.load(&qa, at)?;
                        let next = c.b.add(at, 1i64);
                        let hi = c.load(&qa, next)?;
                        let pair = c.b.pack(Ty::B32, lo, hi);
                        c.b.assign(word, pair);
                        Ok(())
                    })?;
                }
            }
        }
        let range = block_range(c, &runs, slots, warp, lane);
        let m = [(); 2].map(|_| c.b.mov(Ty::F32, f32::NEG_INFINITY));
        let l = [(); 2].map(|_| c.b.mov(Ty::F32, 0.0f32));
        for &x in acc.iter().flatten() {
            c.b.assign(x, 0.0f32);
        }
        let any = c.b.setp(Cmp::Lt, range.lo, range.hi);
        c.when(any, |c| {
            ks.load(c, k_head, range.lo, &keys)?;
            vs.load(c, v_head, range.lo, &keys)
        })?;
        c.for_range(range.lo, range.hi, KEYS, |c, j0| {
            ks.store(c);
            vs.store(c);
            c.b.bar_sync();
            let next = c.b.add(j0, KEYS);
            let more = c.b.setp(Cmp::Lt, next, range.hi);
            c.when(more, |c| {
                ks.load(c, k_head, next, &keys)?;
                vs.load(c, v_head, next, &keys)
            })?;
            // 1. Scores.
            let s: Vec<[Reg; 4]> = (0..n_tiles)
                .map(|_| [(); 4].map(|_| c.b.mov(Ty::F32, 0.0f32)))
                .collect();
            for (kk, frag) in q_frags.iter().enumerate() {
                for (ni, &tile) in s.iter().enumerate() {
                    let b = b_fragment(c, k_frag, TileStage::pitch_of(d), ni as i64, kk as i64);
                    c.b.mma_bf16(tile, *frag, b);
                }
            }
            // 2. Scale; mask where the tile is not inside every row's run.
            for &x in s.iter().flatten() {
                let y = c.b.mul(x, log2_scale);
                c.b.assign(x, y);
            }
            let past_lo = c.b.setp(Cmp::Ge, j0, range.all_lo);
            let end = c.b.add(j0, KEYS);
            let before_hi = c.b.setp(Cmp::Le, end, range.all_hi);
            let inside = c.b.and(past_lo, before_hi);
            let partial = c.b.not(inside);
            c.when(partial, |c| {
                let key0 = c.b.mad(t, 2i64, j0);
                for (ni, tile) in s.iter().enumerate() {
                    for (e, &x) in tile.iter().enumerate() {
                        let (lo, hi) = runs[e >> 1];
                        let j = c.b.add(key0, ni as i64 * 8 + (e as i64 & 1));
                        let from = c.b.setp(Cmp::Ge, j, lo);
                        let to = c.b.setp(Cmp::Lt, j, hi);
                        let seen = c.b.and(from, to);
                        let y = c.b.selp(x, f32::NEG_INFINITY, seen, Ty::F32);
                        c.b.assign(x, y);
                    }
                }
                Ok(())
            })?;
            // 3. Online softmax, row by row.
            for half in 0..2 {
                let mut max = c.b.mov(Ty::F32, f32::NEG_INFINITY);
                for tile in &s {
                    for &x in &tile[2 * half..2 * half + 2] {
                        max = c.b.max(max, x);
                    }
                }
                let max = row_fold(c, max, |c, x, y| c.b.max(x, y));
                let m_new = c.b.max(m[half], max);
                let unseen = c.b.setp(Cmp::Eq, m_new, f32::NEG_INFINITY);
                let shift = c.b.selp(0.0f32, m_new, unseen, Ty::F32);
                let drop = c.b.sub(m[half], shift);
                let alpha = c.b.ex2(drop);
                let mut sum = c.b.mov(Ty::F32, 0.0f32);
                for tile in &s {
                    for &x in &tile[2 * half..2 * half + 2] {
                        let centered = c.b.sub(x, shift);
                        let p = c.b.ex2(centered);
                        c.b.assign(x, p);
                        sum = c.b.add(sum, p);
                    }
                }
                let l_next = c.b.mad(l[half], alpha, sum);
                c.b.assign(l[half], l_next);
                c.b.assign(m[half], m_new);
                for tile in &acc {
                    for &a in &tile[2 * half..2 * half + 2] {
                        let y = c.b.mul(a, alpha);
                        c.b.assign(a, y);
                    }
                }
            }
            // 4. O += P·V, the probabilities as A fragments.
            for kk in 0..n_tiles / 2 {
                let (lo, hi) = (&s[2 * kk], &s[2 * kk + 1]);
                let p = [
                    pack_bf16(c, lo[0], lo[1])?,
                    pack_bf16(c, lo[2], lo[3])?,
                    pack_bf16(c, hi[0], hi[1])?,
                    pack_bf16(c, hi[2], hi[3])?,
                ];
                for (nj, &tile) in acc.iter().enumerate() {
                    let b = b_fragment(c, v_frag, VT_ROW, nj as i64, kk as i64);
                    c.b.mma_bf16(tile, p, b);
                }
            }
            c.b.bar_sync();
            Ok(())
        })?;
        // Each row divided by its sum, and stored.
        for (half, &r) in query_rows.iter().enumerate() {
            let total = row_fold(c, l[half], |c, x, y| c.b.add(x, y));
            let inv = c.b.rcp(total);
            let inside = c.b.setp(Cmp::Lt, r, seq.clone());
            c.when(inside, |c| {
                let row = c.b.mad(r, oa.strides[2].clone(), out_head);
                let col = c.b.mad(t, 2i64, row);
                for (nj, tile) in acc.iter().enumerate() {
                    for e in 0..2 {
                        let y = c.b.mul(tile[2 * half + e], inv);
                        let at = c.b.add(col, nj as i64 * 8 + e as i64);
                        c.store(oa.base.expect("a buffer"), at, DType::F32, y)?;
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(Launch {
        blocks: vec![WorkFactor {
            extent: q.dims[0]
                .mul(&q.dims[1])
                .mul(&q.dims[2].add(&Poly::constant(QUERIES - 1))),
            tile: QUERIES as u64,
        }],
        threads: THREADS as u32,
        shared_bytes: c.b.shared_bytes(),
        buffers: Vec::new(),
    })
}
