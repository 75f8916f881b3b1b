//! The tensor-core form of `Kernel::AttentionGrad` (`attention_grad_mma`): FlashAttention's
//! backward for **bf16** queries, keys, values and output gradient (the `bf16` policy's
//! training), head sizes that are multiples of 16 up to 128, on `mma.sync.aligned.m16n8k16`
//! with f32 accumulators. The probabilities are recomputed from the saved log-sum-exp,
//! `p = 2^(s·scale·log₂e − lse·log₂e)`, and `Δ = Σ d_out·out` per query comes from the
//! lowering's reduction; no `S×T` value reaches memory.
//!
//! **Work.** A block of 4 warps owns 64 rows of one batch element and head — queries for
//! `d_queries`, keys for `d_keys` and `d_values` — each warp 16 of them (one m-tile, the
//! fragment layouts of `attention_mma.rs`: lane rows `g` and `g + 8`), and walks the other
//! side (the *columns*) in tiles of 32 rows (16 for heads over 64), staged in shared memory:
//! - `d_queries` (rows: queries of head `h`; columns: the keys they see, as the forward walks
//!   them): `S = Q·Kᵀ`, `P`, `dP = dO·Vᵀ`, `dS = P∘(dP − Δ)·scale`, `dQ += dS·K`. The queries'
//!   and output gradient's A fragments stay in registers; keys and values are staged as they
//!   lie (`Ks[key][d]`, `Vs[key][c]`).
//! - `d_keys` (rows: keys of KV head `kv`; columns: the queries of every head of its group
//!   that see one of the block's keys): `Sᵀ = K·Qᵀ`, `Pᵀ`, `dPᵀ = V·dOᵀ`, `dSᵀ`,
//!   `dK += dSᵀ·Q`, with `Qs[query][d]` and `dOs[query][c]` staged.
//! - `d_values` (the same rows and columns, the same tiles): `Sᵀ`, `Pᵀ`, `dV += Pᵀ·dO`. A
//!   kernel by the keys given `d_values` (`AttentionGradKernel::d_values`) adds it from the same
//!   `Pᵀ` before the score gradients, holding both accumulators, so the scores and
//!   probabilities the two share are computed once.
//!
//! B fragments come from `ldmatrix.x4` (`attention_mma::Read`): a staged tile's rows are B's
//! columns in the first products (`Kᵀ`, `Vᵀ`, `Qᵀ`, `dOᵀ`) and B's rows in the last one (`K`,
//! `Q`, `dO`, read with `.trans`), so each tile is staged once, as it lies.
//!
//! The weights of the last product (`P`, `dS`) are rounded to bf16 as they are packed into A
//! fragments (the accumulator layout of two n-tiles is the A layout of a k-step), which is the
//! rounding `kiln_ir::attention` defines for bf16 operands. Per-column statistics (`lse`,
//! `Δ`, and each column query's visible keys) are staged beside the tiles by the first warp.
//! A tile that is not inside every pair's visible run masks its probabilities to 0 pair by
//! pair; a query that sees no key, or a column past the end, contributes nothing. Each block
//! owns its rows' results (no atomics); sums run in tile order.
//!
//! **Occupancy.** By the keys, with both head sizes at most 64, registers are capped for three
//! blocks per multiprocessor (`.minnctapersm 3`: 168 at head size 64 instead of 236, no
//! spills; larger heads spill under the cap and keep two), which trained the Llama-3.2-1B shape
//! 1.01× faster on an H200 (`bench/results/gpu-train-selective-2026-12-01-h200/`).
//!
//! **Staging.** As in the forward: two stages; a tile starts with a wait for the thread's copies
//! and a barrier, after which the next tile is copied into the other stage by `cp.async`, in
//! flight during the whole tile (the column statistics of `d_keys`/`d_values` go through the
//! first warp's registers, stored after the tile's first products); one barrier per tile;
//! shared rows padded by 8 bf16. Probabilities are `ex2.approx.ftz` of the exponent.
//!
//! Invariants: every thread reaches every barrier (the walks' bounds are the block's); a stage
//! is written only after the barrier that starts the tile after the last one that read it.

use super::attention::Visibility;
use super::attention_mma::{
    as_a_fragments, block_range, fragments, heaviest_first, load_a_row, multiply, product,
    Fragments, Heaviest, Layout, Read, TileStage, THREADS, WARPS,
};
use super::context::{Addressed, Ctx, Granule};
use super::reduce::warp_fold;
use crate::error::Result;
use crate::ptx::{Cmp, Operand, Reg, Space, Special, Ty};
use kiln_backend_cpu::kernel::AttentionGradKernel;
use kiln_backend_cpu::view::View;
use kiln_ir::{AttentionInput, DType};
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Rows a block owns: one m-tile per warp.
const BLOCK_ROWS: i64 = 16 * WARPS;

/// Whether gradient `kernel` takes this form: bf16 operands and output gradient, head sizes
/// multiples of 16 up to 128.
pub fn applies(kernel: &AttentionGradKernel) -> bool {
    let fits = |v: &View| matches!(v.dims[3].as_constant(), Some(n) if n % 16 == 0 && (16..=128).contains(&n));
    [&kernel.q, &kernel.k, &kernel.v, &kernel.d_out]
        .iter()
        .all(|v| v.dtype == DType::BF16)
        && fits(&kernel.q)
        && fits(&kernel.v)
}

fn head_size(v: &View) -> i64 {
    v.dims[3].as_constant().expect("applies")
}

/// Column rows per tile: 32, or 16 for heads over 64 (both stages of three tiles within the
/// 48 KiB of static shared memory).
fn tile_rows(d: i64, dv: i64) -> i64 {
    match d <= 64 && dv <= 64 {
        true => 32,
        false => 16,
    }
}

/// `p = 2^(s·factor − lse₂)` for each score of one m-tile, in place.
fn probabilities(c: &mut Ctx, s: &[[Reg; 4]], factor: f32, lse2: impl Fn(usize, usize) -> Reg) {
    for (ni, tile) in s.iter().enumerate() {
        for (e, &x) in tile.iter().enumerate() {
            let shift = lse2(ni, e);
            let exponent = c.b.mad(x, factor, shift);
            let p = c.b.ex2_ftz(exponent);
            c.b.assign(x, p);
        }
    }
}

/// Sets each probability of one m-tile to 0 where the pair's key lies outside its query's
/// visible run: `pair(ni, e)` gives the key and the run, `(key, lo, hi)`.
fn mask(
    c: &mut Ctx,
    p: &[[Reg; 4]],
    mut pair: impl FnMut(&mut Ctx, usize, usize) -> (Reg, Reg, Reg),
) {
    for (ni, tile) in p.iter().enumerate() {
        for (e, &x) in tile.iter().enumerate() {
            let (key, lo, hi) = pair(c, ni, e);
            let from = c.b.setp(Cmp::Ge, key, lo);
            let to = c.b.setp(Cmp::Lt, key, hi);
            let seen = c.b.and(from, to);
            let y = c.b.selp(x, 0.0f32, seen, Ty::F32);
            c.b.assign(x, y);
        }
    }
}

/// `ds = p·(dp − Δ)·scale` for each pair of one m-tile, into `dp`.
fn score_grads(
    c: &mut Ctx,
    p: &[[Reg; 4]],
    dp: &[[Reg; 4]],
    scale: f32,
    delta: impl Fn(usize, usize) -> Reg,
) {
    for (ni, (pt, dt)) in p.iter().zip(dp).enumerate() {
        for e in 0..4 {
            let diff = c.b.sub(dt[e], delta(ni, e));
            let ds = c.b.mul(pt[e], diff);
            let ds = c.b.mul(ds, scale);
            c.b.assign(dt[e], ds);
        }
    }
}

/// A tile's last product, `acc += W·B`: the weights `w` (one m-tile of accumulators, `P` or
/// `dS`) rounded to bf16 into A fragments, B read by `ldmatrix.trans` from `tile` at the lane's
/// `base` in `stage`.
fn last_product(
    c: &mut Ctx,
    acc: &Fragments,
    w: &[[Reg; 4]],
    (tile, base): (&TileStage, Reg),
    stage: Reg,
) {
    let a = vec![as_a_fragments(c, w)];
    let at = c.b.add(base, stage);
    multiply(c, acc, &a, (tile, Read::Columns), at);
}

fn zero(c: &mut Ctx, xs: &Fragments) {
    for &x in xs.iter().flatten().flatten() {
        c.b.assign(x, 0.0f32);
    }
}

/// Stores the lane's accumulator rows (`r` of `rows`, where `inside`) of the result, rounded
/// to its type.
fn store_rows(
    c: &mut Ctx,
    out: &Addressed,
    head: Reg,
    rows: [(Reg, Reg); 2],
    t: Reg,
    acc: &[[Reg; 4]],
) -> Result<()> {
    for (half, (r, inside)) in rows.into_iter().enumerate() {
        c.when(inside, |c| {
            let at = c.b.mad(r, out.strides[2].clone(), head);
            let at = c.b.mad(t, 2i64, at);
            let dtype = out.view.dtype;
            for (nj, tile) in acc.iter().enumerate() {
                for e in 0..2 {
                    let col = c.b.add(at, nj as i64 * 8 + e as i64);
                    let base = out.base.expect("a buffer");
                    let x = super::expr::convert(c, tile[2 * half + e], DType::F32, dtype)?;
                    c.store(base, col, dtype, x)?;
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// What every lane holds: its position in the block and fragment.
struct Lanes {
    tid: Reg,
    lane: Reg,
    warp: Reg,
    g: Reg,
    t: Reg,
}

impl Lanes {
    fn new(c: &mut Ctx) -> Lanes {
        let tid = c.special(Special::Tid);
        let (lane, warp) = (c.b.and(tid, 31i64), c.b.shr(tid, 5));
        let (g, t) = (c.b.shr(lane, 2), c.b.and(lane, 3i64));
        Lanes {
            tid,
            lane,
            warp,
            g,
            t,
        }
    }

    /// The lane's two rows of the block's rows from `first`: `g` and `g + 8` of its warp's
    /// m-tile.
    fn rows(&self, c: &mut Ctx, first: Reg) -> [Reg; 2] {
        let r = c.b.mad(self.warp, 16i64, first);
        let r = c.b.add(r, self.g);
        [r, c.b.add(r, 8i64)]
    }
}

/// Element `i` (at coordinates `[b, h, i]`) of a `[B, H, S]` statistic.
fn load_stat(c: &mut Ctx, v: &Addressed, head: Reg, i: Reg) -> Result<Reg> {
    let at = c.b.mad(i, v.strides[2].clone(), head);
    c.load(v, at)
}

pub fn emit(c: &mut Ctx, kernel: &AttentionGradKernel) -> Result<Launch> {
    match kernel.wrt {
        AttentionInput::Queries => emit_queries(c, kernel),
        _ => emit_keys(c, kernel),
    }
}

/// The views of a gradient kernel, ready to address.
struct Views {
    q: Addressed,
    k: Addressed,
    v: Addressed,
    d_out: Addressed,
    lse: Addressed,
    delta: Addressed,
    out: Addressed,
    /// The values' gradient written beside the keys' (`AttentionGradKernel::d_values`).
    d_values: Option<Addressed>,
    visibility: Visibility,
}

impl Views {
    fn of(c: &mut Ctx, kernel: &AttentionGradKernel) -> Views {
        Views {
            q: c.addressed(&kernel.q),
            k: c.addressed(&kernel.k),
            v: c.addressed(&kernel.v),
            d_out: c.addressed(&kernel.d_out),
            lse: c.addressed(&kernel.lse),
            delta: c.addressed(&kernel.delta),
            out: c.addressed(&kernel.out),
            d_values: kernel.d_values.as_ref().map(|v| c.addressed(v)),
            visibility: Visibility::of(c, kernel.positions.as_ref(), kernel.padding.as_ref()),
        }
    }

    /// The linear index of head `[b, h]` of `v`.
    fn head(c: &mut Ctx, v: &Addressed, b: Reg, h: Reg) -> Reg {
        c.linear(&v.offset, &[b, h], &v.strides[..2])
    }
}

/// One block per 64 rows of each `[b, h]` of `dims` (`[B, H, len, _]`).
fn launch(c: &Ctx, dims: &[Poly]) -> Launch {
    Launch {
        blocks: vec![WorkFactor {
            extent: dims[0]
                .mul(&dims[1])
                .mul(&dims[2].add(&Poly::constant(BLOCK_ROWS - 1))),
            tile: BLOCK_ROWS as u64,
        }],
        threads: THREADS as u32,
        shared_bytes: c.b.shared_bytes(),
        buffers: Vec::new(),
    }
}

/// Blocks of 64 rows over `[B, H, len]` (`bh` = B·H, `blocks` per head): `(b, h, first row)`
/// of item `w`, the heaviest blocks first ([`heaviest_first`]).
fn block_item(
    c: &mut Ctx,
    w: Reg,
    heads: &Operand,
    (bh, blocks): (Reg, Reg),
    heaviest: Heaviest,
) -> (Reg, Reg, Reg) {
    let (bh, tile) = heaviest_first(c, w, (bh, blocks), heaviest);
    let h = c.b.rem(bh, heads.clone());
    let b = c.b.div(bh, heads.clone());
    (b, h, c.b.mul(tile, BLOCK_ROWS))
}

/// `d_queries`: rows are queries, columns the keys they see.
fn emit_queries(c: &mut Ctx, kernel: &AttentionGradKernel) -> Result<Launch> {
    let a = &kernel.attention;
    let (d, dv) = (head_size(&kernel.q), head_size(&kernel.v));
    let rows = tile_rows(d, dv);
    let views = Views::of(c, kernel);
    let (heads, seq) = (c.value(&kernel.q.dims[1]), c.value(&kernel.q.dims[2]));
    let keys = c.value(&kernel.k.dims[2]);
    let keys_reg = c.reg(&kernel.k.dims[2]);
    let last_query = c.reg(&kernel.q.dims[2].add(&Poly::constant(-1)));
    let blocks = c.reg(&kernel.q.dims[2].add(&Poly::constant(BLOCK_ROWS - 1)));
    let blocks = c.b.div(blocks, BLOCK_ROWS);
    let bh = c.reg(&kernel.q.dims[0].mul(&kernel.q.dims[1]));
    let items = c.b.mul(bh, blocks);
    let l = Lanes::new(c);
    let k_bytes = TileStage::bytes(&kernel.k, rows, Layout::Padded);
    let stage_bytes = k_bytes + TileStage::bytes(&kernel.v, rows, Layout::Padded);
    let region = c.b.shared((2 * stage_bytes) as u32);
    let v_tile = c.b.add(region, k_bytes);
    let ks = TileStage::new(c, &views.k, (rows, Layout::Padded), region, l.tid);
    let vs = TileStage::new(c, &views.v, (rows, Layout::Padded), v_tile, l.tid);
    let slots = c.b.shared((WARPS * 32) as u32);
    let (k_rows, v_rows, k_columns) = (
        ks.lane_base(c, l.lane, Read::Rows),
        vs.lane_base(c, l.lane, Read::Rows),
        ks.lane_base(c, l.lane, Read::Columns),
    );
    let stage = c.b.mov(Ty::S64, 0i64);
    let zero_f32 = c.b.mov(Ty::F32, 0.0f32);
    let factor = (a.scale * std::f64::consts::LOG2_E) as f32;
    let n_tiles = (rows / 8) as usize;
    let q_frags = fragments(c, 1, (d / 16) as usize, Ty::B32);
    let do_frags = fragments(c, 1, (dv / 16) as usize, Ty::B32);
    let acc = fragments(c, 1, (d / 8) as usize, Ty::F32);
    c.grid_loop(items.into(), Granule::Block, |c, w| {
        // Queries late in the sequence see the most keys.
        let (bi, h, first) = block_item(c, w, &heads, (bh, blocks), Heaviest::Last);
        let kv = c.b.div(h, a.group as i64);
        let q_head = Views::head(c, &views.q, bi, h);
        let do_head = Views::head(c, &views.d_out, bi, h);
        let lse_head = Views::head(c, &views.lse, bi, h);
        let delta_head = Views::head(c, &views.delta, bi, h);
        let out_head = Views::head(c, &views.out, bi, h);
        let k_head = Views::head(c, &views.k, bi, kv);
        let v_head = Views::head(c, &views.v, bi, kv);
        let own = l.rows(c, first);
        let padding = views.visibility.padding(c, bi)?;
        let (mut runs, mut lse2, mut delta, mut inside) = (vec![], vec![], vec![], vec![]);
        for (half, &r) in own.iter().enumerate() {
            let is_in = c.b.setp(Cmp::Lt, r, seq.clone());
            let read = c.b.min(r, last_query);
            let (lo, hi) = views
                .visibility
                .run_in_row(c, a, (bi, padding), read, keys_reg)?;
            runs.push((
                c.b.selp(lo, i64::MAX, is_in, Ty::S64),
                c.b.selp(hi, 0i64, is_in, Ty::S64),
            ));
            let lse = load_stat(c, &views.lse, lse_head, read)?;
            lse2.push(c.b.mul(lse, -std::f32::consts::LOG2_E));
            delta.push(load_stat(c, &views.delta, delta_head, read)?);
            load_a_row(c, &views.q, (q_head, r, half), is_in, l.t, &q_frags[0])?;
            load_a_row(
                c,
                &views.d_out,
                (do_head, r, half),
                is_in,
                l.t,
                &do_frags[0],
            )?;
            inside.push(is_in);
        }
        let range = block_range(c, &runs, slots, l.warp, l.lane);
        zero(c, &acc);
        let any = c.b.setp(Cmp::Lt, range.lo, range.hi);
        let tiles = [&ks, &vs];
        let heads_of = [k_head, v_head];
        let issue = |c: &mut Ctx, j0: Reg, at: Reg| -> Result<()> {
            for (tile, &head) in tiles.iter().zip(&heads_of) {
                tile.issue(c, (head, j0, &keys), at)?;
            }
            Ok(())
        };
        c.when(any, |c| issue(c, range.lo, stage))?;
        c.b.cp_async_commit();
        c.for_range(range.lo, range.hi, rows, |c, j0| {
            let next = c.b.add(j0, rows);
            let more = c.b.setp(Cmp::Lt, next, range.hi);
            c.b.cp_async_wait(0);
            c.b.bar_sync();
            let other = c.b.xor(stage, stage_bytes);
            c.when(more, |c| issue(c, next, other))?;
            c.b.cp_async_commit();
            let at = c.b.add(k_rows, stage);
            let s = product(c, &q_frags, n_tiles, (&ks, Read::Rows), (at, zero_f32));
            let at = c.b.add(v_rows, stage);
            let dp = product(c, &do_frags, n_tiles, (&vs, Read::Rows), (at, zero_f32));
            probabilities(c, &s[0], factor, |_, e| lse2[e >> 1]);
            let past_lo = c.b.setp(Cmp::Ge, j0, range.all_lo);
            let before_hi = c.b.setp(Cmp::Le, next, range.all_hi);
            let unmasked = c.b.and(past_lo, before_hi);
            let partial = c.b.not(unmasked);
            c.when(partial, |c| {
                let key0 = c.b.mad(l.t, 2i64, j0);
                mask(c, &s[0], |c, ni, e| {
                    let (lo, hi) = runs[e >> 1];
                    (c.b.add(key0, ni as i64 * 8 + (e as i64 & 1)), lo, hi)
                });
                Ok(())
            })?;
            score_grads(c, &s[0], &dp[0], a.scale as f32, |_, e| delta[e >> 1]);
            last_product(c, &acc, &dp[0], (&ks, k_columns), stage);
            c.b.assign(stage, other);
            Ok(())
        })?;
        let own_rows = [(own[0], inside[0]), (own[1], inside[1])];
        store_rows(c, &views.out, out_head, own_rows, l.t, &acc[0])
    })?;
    Ok(launch(c, &kernel.q.dims))
}

/// Per-column statistics of a staged tile of queries, kept by the lanes of the first warp
/// (lane `x` for query `i0 + x`) between loading and storing: `lse₂ = −lse·log₂e` (`-∞` past
/// the queries, so `p = 0`), `Δ`, the query's visible keys `lo..hi`, and whether that run
/// holds every key of the block.
struct ColumnStats {
    lse2: Reg,
    delta: Reg,
    lo: Reg,
    hi: Reg,
    covers: Reg,
    /// Bytes of one stage's statistics: `lse₂` and `Δ` (f32), `lo` and `hi` (s64) per column,
    /// and the tile's flag (padded to 16 bytes, the alignment of the next stage's tiles).
    bytes: i64,
}

impl ColumnStats {
    fn new(c: &mut Ctx, rows: i64) -> ColumnStats {
        ColumnStats {
            lse2: c.b.reg(Ty::F32),
            delta: c.b.reg(Ty::F32),
            lo: c.b.reg(Ty::S64),
            hi: c.b.reg(Ty::S64),
            covers: c.b.reg(Ty::U32),
            bytes: 24 * rows + 16,
        }
    }
}

/// `d_keys` and `d_values`: rows are the keys of one KV head, columns the queries of its
/// group's heads that see one of the block's keys.
fn emit_keys(c: &mut Ctx, kernel: &AttentionGradKernel) -> Result<Launch> {
    let a = &kernel.attention;
    let by_keys = kernel.wrt == AttentionInput::Keys;
    let (d, dv) = (head_size(&kernel.q), head_size(&kernel.v));
    if d <= 64 && dv <= 64 {
        // See the module doc's "Occupancy".
        c.b.occupancy(THREADS as u32, 3);
    }
    let rows = tile_rows(d, dv);
    let views = Views::of(c, kernel);
    let kv_heads = c.value(&kernel.k.dims[1]);
    let seq = c.reg(&kernel.q.dims[2]);
    let seq_operand = c.value(&kernel.q.dims[2]);
    let keys = c.reg(&kernel.k.dims[2]);
    let blocks = c.reg(&kernel.k.dims[2].add(&Poly::constant(BLOCK_ROWS - 1)));
    let blocks = c.b.div(blocks, BLOCK_ROWS);
    let bkv = c.reg(&kernel.k.dims[0].mul(&kernel.k.dims[1]));
    let items = c.b.mul(bkv, blocks);
    let l = Lanes::new(c);
    // A stage: the queries and the output gradient, as they lie, then the statistics.
    let q_bytes = TileStage::bytes(&kernel.q, rows, Layout::Padded);
    let tiles_bytes = q_bytes + TileStage::bytes(&kernel.d_out, rows, Layout::Padded);
    let stats = ColumnStats::new(c, rows);
    let stage_bytes = tiles_bytes + stats.bytes;
    let region = c.b.shared((2 * stage_bytes) as u32);
    let do_tile = c.b.add(region, q_bytes);
    let qs = TileStage::new(c, &views.q, (rows, Layout::Padded), region, l.tid);
    let dos = TileStage::new(c, &views.d_out, (rows, Layout::Padded), do_tile, l.tid);
    let stats_at = c.b.add(region, tiles_bytes);
    let slots = c.b.shared((WARPS * 32) as u32);
    let (q_rows, do_rows) = (
        qs.lane_base(c, l.lane, Read::Rows),
        dos.lane_base(c, l.lane, Read::Rows),
    );
    // The gradients the kernel writes, each with its accumulators and the lane's base of its
    // last product's B: the queries for `dk += dSᵀ·Q`, the output gradient for `dv += Pᵀ·dO`.
    let values_out = match by_keys {
        true => views.d_values.as_ref(),
        false => Some(&views.out),
    };
    let d_keys = by_keys.then(|| {
        let acc = fragments(c, 1, (d / 8) as usize, Ty::F32);
        (acc, qs.lane_base(c, l.lane, Read::Columns))
    });
    let d_values = values_out.map(|out| {
        let acc = fragments(c, 1, (dv / 8) as usize, Ty::F32);
        (acc, dos.lane_base(c, l.lane, Read::Columns), out)
    });
    let stage = c.b.mov(Ty::S64, 0i64);
    let zero_f32 = c.b.mov(Ty::F32, 0.0f32);
    let factor = (a.scale * std::f64::consts::LOG2_E) as f32;
    let n_tiles = (rows / 8) as usize;
    let k_frags = fragments(c, 1, (d / 16) as usize, Ty::B32);
    let v_frags = fragments(c, 1, if by_keys { (dv / 16) as usize } else { 0 }, Ty::B32);
    let group = a.group as i64;
    let first_warp = c.b.setp(Cmp::Eq, l.warp, 0i64);
    let stats_lane = c.b.setp(Cmp::Lt, l.lane, rows);
    let stats_lane = c.b.and(first_warp, stats_lane);
    c.grid_loop(items.into(), Granule::Block, |c, w| {
        // Keys early in the sequence are seen by the most queries.
        let (bi, kv, first) = block_item(c, w, &kv_heads, (bkv, blocks), Heaviest::First);
        let k_head = Views::head(c, &views.k, bi, kv);
        let v_head = Views::head(c, &views.v, bi, kv);
        let own = l.rows(c, first);
        let mut inside = Vec::new();
        for (half, &r) in own.iter().enumerate() {
            let is_in = c.b.setp(Cmp::Lt, r, keys);
            load_a_row(c, &views.k, (k_head, r, half), is_in, l.t, &k_frags[0])?;
            if by_keys {
                load_a_row(c, &views.v, (v_head, r, half), is_in, l.t, &v_frags[0])?;
            }
            inside.push(is_in);
        }
        // The block's keys `first..key_end`, and the queries that see one of them: a scan of
        // every query's visible run, folded over the block.
        let key_end = c.b.add(first, BLOCK_ROWS);
        let key_end = c.b.min(key_end, keys);
        let padding = views.visibility.padding(c, bi)?;
        let q_lo = c.b.mov(Ty::S64, i64::MAX);
        let q_hi = c.b.mov(Ty::S64, 0i64);
        c.for_range(l.tid, seq, THREADS, |c, i| {
            let (lo, hi) = views.visibility.run_in_row(c, a, (bi, padding), i, keys)?;
            let starts = c.b.setp(Cmp::Lt, lo, key_end);
            let ends = c.b.setp(Cmp::Gt, hi, first);
            let sees = c.b.and(starts, ends);
            let lowest = c.b.min(q_lo, i);
            let past = c.b.add(i, 1i64);
            let highest = c.b.max(q_hi, past);
            let lowest = c.b.selp(lowest, q_lo, sees, Ty::S64);
            let highest = c.b.selp(highest, q_hi, sees, Ty::S64);
            c.b.assign(q_lo, lowest);
            c.b.assign(q_hi, highest);
            Ok(())
        })?;
        let range = block_range(c, &[(q_lo, q_hi)], slots, l.warp, l.lane);
        // Column tiles: `per_head` of them for each head of the group.
        let span = c.b.sub(range.hi, range.lo);
        let span = c.b.max(span, 0i64);
        let per_head = c.b.add(span, rows - 1);
        let per_head = c.b.div(per_head, rows);
        let total = c.b.mul(per_head, group);
        let first_head = c.b.mul(kv, group);
        // Tile `u`: head `first_head + u / per_head`, queries from `range.lo + (u % per_head)·rows`.
        let place = |c: &mut Ctx, u: Reg| {
            let within = c.b.rem(u, per_head);
            let h = c.b.div(u, per_head);
            let h = c.b.add(first_head, h);
            let i0 = c.b.mad(within, rows, range.lo);
            (h, i0)
        };
        // Tile `u`'s queries and output gradient copied into the stage at `at`, and its
        // statistics loaded into the first warp's registers.
        let load = |c: &mut Ctx, u: Reg, at: Reg| -> Result<()> {
            let (h, i0) = place(c, u);
            let q_head = Views::head(c, &views.q, bi, h);
            let do_head = Views::head(c, &views.d_out, bi, h);
            qs.issue(c, (q_head, i0, &seq_operand), at)?;
            dos.issue(c, (do_head, i0, &seq_operand), at)?;
            c.when(stats_lane, |c| {
                let i = c.b.add(i0, l.lane);
                let is_in = c.b.setp(Cmp::Lt, i, seq);
                let last = c.b.sub(seq, 1i64);
                let read = c.b.min(i, last);
                let lse_head = Views::head(c, &views.lse, bi, h);
                let delta_head = Views::head(c, &views.delta, bi, h);
                let lse = load_stat(c, &views.lse, lse_head, read)?;
                let lse2 = c.b.mul(lse, -std::f32::consts::LOG2_E);
                let lse2 = c.b.selp(lse2, f32::NEG_INFINITY, is_in, Ty::F32);
                c.b.assign(stats.lse2, lse2);
                let delta = load_stat(c, &views.delta, delta_head, read)?;
                c.b.assign(stats.delta, delta);
                let (lo, hi) = views
                    .visibility
                    .run_in_row(c, a, (bi, padding), read, keys)?;
                let lo = c.b.selp(lo, i64::MAX, is_in, Ty::S64);
                let hi = c.b.selp(hi, 0i64, is_in, Ty::S64);
                c.b.assign(stats.lo, lo);
                c.b.assign(stats.hi, hi);
                // Past the queries a column adds nothing (`p = 0`), so it needs no mask.
                let from = c.b.setp(Cmp::Le, lo, first);
                let to = c.b.setp(Cmp::Ge, hi, key_end);
                let covers = c.b.and(from, to);
                let outside = c.b.not(is_in);
                let covers = c.b.or(covers, outside);
                let covers = c.b.selp(1i64, 0i64, covers, Ty::U32);
                c.b.assign(stats.covers, covers);
                Ok(())
            })
        };
        // The loaded statistics stored into the stage at `at`.
        let store = |c: &mut Ctx, at: Reg| -> Result<()> {
            // Lanes past the tile's columns count as covering.
            let covers = c.b.selp(stats.covers, 1i64, stats_lane, Ty::U32);
            let all = warp_fold(c, covers, |c, x, y| c.b.and(x, y));
            c.when(stats_lane, |c| {
                let base = c.b.add(stats_at, at);
                let x4 = c.b.shl(l.lane, 2);
                let x8 = c.b.shl(l.lane, 3);
                let f = c.b.add(base, x4);
                c.b.st(Space::Shared, "f32", f, 0, stats.lse2);
                c.b.st(Space::Shared, "f32", f, 4 * rows, stats.delta);
                let s = c.b.add(base, x8);
                c.b.st(Space::Shared, "s64", s, 8 * rows, stats.lo);
                c.b.st(Space::Shared, "s64", s, 16 * rows, stats.hi);
                let lead = c.b.setp(Cmp::Eq, l.lane, 0i64);
                c.when(lead, |c| {
                    c.b.st(Space::Shared, "u32", base, 24 * rows, all);
                    Ok(())
                })
            })
        };
        let keys_acc = d_keys.iter().map(|(acc, _)| acc);
        for acc in keys_acc.chain(d_values.iter().map(|(acc, _, _)| acc)) {
            zero(c, acc);
        }
        let any = c.b.setp(Cmp::Gt, total, 0i64);
        let u0 = c.b.mov(Ty::S64, 0i64);
        c.when(any, |c| {
            load(c, u0, stage)?;
            store(c, stage)
        })?;
        c.b.cp_async_commit();
        c.for_range(0i64, total, 1i64, |c, u| {
            let next = c.b.add(u, 1i64);
            let more = c.b.setp(Cmp::Lt, next, total);
            c.b.cp_async_wait(0);
            c.b.bar_sync();
            let other = c.b.xor(stage, stage_bytes);
            c.when(more, |c| load(c, next, other))?;
            c.b.cp_async_commit();
            let at = c.b.add(q_rows, stage);
            let st = product(c, &k_frags, n_tiles, (&qs, Read::Rows), (at, zero_f32));
            let dpt = match by_keys {
                true => {
                    let at = c.b.add(do_rows, stage);
                    Some(product(
                        c,
                        &v_frags,
                        n_tiles,
                        (&dos, Read::Rows),
                        (at, zero_f32),
                    ))
                }
                false => None,
            };
            c.when(more, |c| store(c, other))?;
            // The lane's columns: `ni·8 + 2t + (e & 1)`.
            let stats_base = c.b.add(stats_at, stage);
            let col0 = c.b.shl(l.t, 1);
            let column = |c: &mut Ctx, ni: usize, e: usize, bytes: i64, skip: i64, ty: Ty| {
                let x = c.b.add(col0, ni as i64 * 8 + (e as i64 & 1));
                let x = c.b.mul(x, bytes);
                let at = c.b.add(stats_base, x);
                let name = if ty == Ty::F32 { "f32" } else { "s64" };
                c.b.ld(Space::Shared, name, ty, at, skip, false)
            };
            let mut lse2 = Vec::new();
            for ni in 0..n_tiles {
                lse2.push([0, 1].map(|e| column(c, ni, e, 4, 0, Ty::F32)));
            }
            probabilities(c, &st[0], factor, |ni, e| lse2[ni][e & 1]);
            let all =
                c.b.ld(Space::Shared, "u32", Ty::U32, stats_base, 24 * rows, false);
            let partial = c.b.setp(Cmp::Eq, all, 0i64);
            c.when(partial, |c| {
                mask(c, &st[0], |c, ni, e| {
                    let lo = column(c, ni, e, 8, 8 * rows, Ty::S64);
                    let hi = column(c, ni, e, 8, 16 * rows, Ty::S64);
                    (own[e >> 1], lo, hi)
                });
                Ok(())
            })?;
            if let Some((acc, columns, _)) = &d_values {
                last_product(c, acc, &st[0], (&dos, *columns), stage);
            }
            if let (Some((acc, columns)), Some(dpt)) = (&d_keys, &dpt) {
                let mut delta = Vec::new();
                for ni in 0..n_tiles {
                    delta.push([0, 1].map(|e| column(c, ni, e, 4, 4 * rows, Ty::F32)));
                }
                score_grads(c, &st[0], &dpt[0], a.scale as f32, |ni, e| delta[ni][e & 1]);
                last_product(c, acc, &dpt[0], (&qs, *columns), stage);
            }
            c.b.assign(stage, other);
            Ok(())
        })?;
        let own_rows = [(own[0], inside[0]), (own[1], inside[1])];
        if let Some((acc, _)) = &d_keys {
            let head = Views::head(c, &views.out, bi, kv);
            store_rows(c, &views.out, head, own_rows, l.t, &acc[0])?;
        }
        if let Some((acc, _, out)) = &d_values {
            let head = Views::head(c, out, bi, kv);
            store_rows(c, out, head, own_rows, l.t, &acc[0])?;
        }
        Ok(())
    })?;
    Ok(launch(c, &kernel.k.dims))
}
