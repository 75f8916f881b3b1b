//! The tensor-core form of `Kernel::MatMul` (`matmul_mma`): `out[.., m, n] = Σₖ a[.., m, k]·
//! b[.., k, n]` for **bf16** `a` and `b`, f32 accumulation and result, on
//! `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`; then the epilogue and store of
//! `matmul.rs` (`Finish::store`) for each output element inside the output. `matmul.rs` picks it
//! wherever it would take its shared-tile form (`m` not a constant ≤ 4) and both operands are
//! bf16.
//!
//! **Tiles.** A block of 128 threads (4 warps) computes a 64 (m) × 64 (n) tile of one batch
//! element, stepping `k` by 32; grid items are `batch × ⌈m/64⌉ × ⌈n/64⌉`, walked by grid
//! stride. The warps split the tile 2 × 2: each computes 32 × 32 as 2 (m16) × 4 (n8) mma tiles,
//! eight `mma` per 16 of `k`, in 32 f32 accumulators per thread.
//!
//! **Shared memory.** Two tiles, `As[64][32]` (rows `m`) and `Bs[64][32]` (rows `n`), `k`
//! contiguous in both, each row padded to 40 bf16 (80 bytes): 10240 bytes. With 20 words per
//! row, the eight rows a fragment load touches start in banks 0, 20, 8, 28, 16, 4, 24, 12, and
//! the four lanes of a row read the next four words: the 32 lanes hit 32 banks.
//!
//! **Fragments** (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
//! `g = lane >> 2`, `t = lane % 4`, each `.b32` holding two bf16 of consecutive `k`, the lower
//! `k` in the low half, so one `ld.shared.b32` reads each:
//! - `A` (16 × 16, row-major): `A[g][2t..]`, `A[g+8][2t..]`, `A[g][2t+8..]`, `A[g+8][2t+8..]`;
//! - `B` (16 × 8, column-major, read from `Bs[n][k]`): `B[2t..][g]`, `B[2t+8..][g]`;
//! - `C`/`D` (f32): `C[g][2t]`, `C[g][2t+1]`, `C[g+8][2t]`, `C[g+8][2t+1]`.
//!
//! **Staging.** Each step, every thread loads its 16 elements of each operand's next tile into
//! registers before the current step's mma (so the loads are in flight while the tensor cores
//! work) and stores them to shared memory after the step's closing barrier. Threads run along
//! the operand's unit-stride axis, `k` or its row axis (`m` of `a`, `n` of `b`), so global
//! loads coalesce in all four orientations (`x·Wᵀ` reads both along `k`; `dY·W` reads `b` along
//! `n`; `dYᵀ·X` reads `a` along `m` and `b` along `n`); a tile loaded along its rows is
//! transposed as it is stored (one `st.shared.b16` per element). Every load is bounds-checked:
//! elements outside the view are 0, so any `m`, `n`, `k` and batch works.
//!
//! **Vector loads.** An operand is loaded 8 elements (16 bytes) at a time, `ld.global.nc.v4.b32`,
//! when it is provably aligned at compile time: a buffer, stride 1 on the unit-stride axis, and
//! every coefficient of its offset and other strides (polynomials of the symbols) a multiple of
//! 8. A vector starts at a tile origin (a multiple of 64 or 32) plus a multiple of 8 on the
//! unit axis, so its element index is a multiple of 8 and its byte offset of 16; buffer bases
//! are 64-byte aligned (the runtime allocates each input, weight, constant and output on its
//! own, at least 256-byte aligned, and places intermediates at `memory_plan::ALIGN` = 64 byte
//! offsets of the arena). A vector that is not wholly inside the view (the tails of `m`, `n`,
//! `k`) falls back to bounds-checked element loads. Any other operand is loaded element by
//! element (`ld.global.nc.b16`).
//!
//! Invariants: every thread of a block reaches every barrier and every warp every `mma` (the
//! loops' bounds are uniform over the block; only loads and output stores are guarded); the
//! shared tiles are written only between the barrier that ends a step and the one that starts
//! the next step's mma.

use super::context::{Addressed, Ctx, Granule};
use super::matmul::Finish;
use crate::error::Result;
use crate::ptx::{Cmp, Operand, Reg, Space, Special, Ty};
use kiln_backend_cpu::view::{Source, View};
use kiln_ir::DType;
use kiln_runtime::manifest::Launch;
use kiln_runtime::Poly;

/// Output rows and columns of a block's tile.
pub(super) const TILE: i64 = 64;
/// `k` per step.
pub(super) const STEP: i64 = 32;
/// Threads per block: four warps, 2 × 2 over the tile.
pub(super) const THREADS: i64 = 128;
/// Rows and columns of a warp's part of the tile.
const WARP_TILE: i64 = 32;
/// Bytes of a shared row: `STEP` bf16 and 8 of padding.
const ROW_BYTES: i64 = 80;
/// Elements of one vector load: 16 bytes of bf16.
pub(super) const VECTOR: i64 = 8;
/// mma tiles of a warp along `m` (16 rows each) and `n` (8 columns each).
const MMA_M: usize = 2;
const MMA_N: usize = 4;

/// Whether a matmul of `a` and `b` takes this form (where the shared-tile form would).
pub fn applies(a: &View, b: &View) -> bool {
    a.dtype == DType::BF16 && b.dtype == DType::BF16
}

/// The axis of a staged tile that consecutive threads run along.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// `m` of `a`, `n` of `b`.
    Row,
    K,
}

/// How one operand's 64 × 32 tile (rows `m` of `a` or `n` of `b`, columns `k`) goes from
/// global memory through registers to shared memory.
struct Stage {
    v: Addressed,
    /// The view's axes of the tile's rows and of `k`, and the rows' extent.
    row_axis: usize,
    k_axis: usize,
    rows: Operand,
    unit: Unit,
    /// Elements a thread loads at once along `unit`: `VECTOR`, or 1 (element by element).
    width: i64,
    /// The thread's first chunk (row and `k` in the tile), and the distance to the next along
    /// the other axis.
    row: Reg,
    k: Reg,
    step: i64,
    /// The shared tile, and the address of the thread's first chunk in it.
    tile: Reg,
    shared: Reg,
    /// Each chunk's registers: `width / 2` words of two bf16, or one bf16.
    regs: Vec<Vec<Reg>>,
}

/// Whether every run of `VECTOR` elements along `unit_axis` that starts at a multiple of
/// `VECTOR` is one 16-byte aligned vector of a buffer (see the module doc).
pub(super) fn vectorizable(v: &View, unit_axis: usize) -> bool {
    let multiple = |p: &Poly| p.terms.iter().all(|t| t.coeff % VECTOR == 0);
    matches!(v.source, Source::Buffer(_))
        && v.strides[unit_axis].is_constant(1)
        && multiple(&v.offset)
        && (v.strides.iter().enumerate()).all(|(i, s)| i == unit_axis || multiple(s))
}

/// `r + d` (`r` itself for 0).
fn plus(c: &mut Ctx, r: Reg, d: i64) -> Reg {
    if d == 0 {
        r
    } else {
        c.b.add(r, d)
    }
}

impl Stage {
    /// The staging of `v`, whose tile rows lie along `row_axis` (of extent `rows`) and columns
    /// along `k_axis`, by thread `tid`: along `k` where it is unit-stride, else along the rows
    /// where they are, else along `k`.
    fn new(
        c: &mut Ctx,
        v: &Addressed,
        (row_axis, k_axis): (usize, usize),
        rows: Operand,
        tid: Reg,
    ) -> Stage {
        let strides = &v.view.strides;
        let unit = if !strides[k_axis].is_constant(1) && strides[row_axis].is_constant(1) {
            Unit::Row
        } else {
            Unit::K
        };
        let unit_axis = match unit {
            Unit::Row => row_axis,
            Unit::K => k_axis,
        };
        let width = if vectorizable(&v.view, unit_axis) {
            VECTOR
        } else {
            1
        };
        let line = match unit {
            Unit::Row => TILE,
            Unit::K => STEP,
        };
        let per_line = line / width;
        let along = c.b.and(tid, per_line - 1);
        let along = c.b.mul(along, width);
        let across = c.b.shr(tid, per_line.trailing_zeros());
        let (row, k) = match unit {
            Unit::Row => (along, across),
            Unit::K => (across, along),
        };
        let tile = c.b.shared((TILE * ROW_BYTES) as u32);
        let shared = c.b.mad(row, ROW_BYTES, tile);
        let shared = c.b.mad(k, 2i64, shared);
        let chunks = TILE * STEP / width / THREADS;
        let regs = (0..chunks)
            .map(|_| match width {
                1 => vec![c.b.reg(Ty::B16)],
                _ => (0..width / 2).map(|_| c.b.reg(Ty::B32)).collect(),
            })
            .collect();
        Stage {
            v: v.clone(),
            row_axis,
            k_axis,
            rows,
            unit,
            width,
            row,
            k,
            step: THREADS * width / line,
            tile,
            shared,
            regs,
        }
    }

    /// Chunk `i`'s row and `k` relative to the thread's first.
    fn offset(&self, i: usize) -> (i64, i64) {
        let d = i as i64 * self.step;
        match self.unit {
            Unit::Row => (0, d),
            Unit::K => (d, 0),
        }
    }

    /// Loads the thread's chunks of the tile whose first row is `row0` and first `k` is `k0`
    /// into `regs`, from the batch element at linear index `base`.
    fn load(&self, c: &mut Ctx, base: Reg, row0: Reg, k0: Reg, kv: &Operand) -> Result<()> {
        let first_row = c.b.add(row0, self.row);
        let first_k = c.b.add(k0, self.k);
        for (i, regs) in self.regs.iter().enumerate() {
            let (dr, dk) = self.offset(i);
            let row = plus(c, first_row, dr);
            let k = plus(c, first_k, dk);
            let at = c.b.mad(row, self.v.strides[self.row_axis].clone(), base);
            let at = c.b.mad(k, self.v.strides[self.k_axis].clone(), at);
            let (along, across) = match self.unit {
                Unit::Row => ((row, &self.rows), (k, kv)),
                Unit::K => ((k, kv), (row, &self.rows)),
            };
            let in_across = c.b.setp(Cmp::Lt, across.0, across.1.clone());
            if self.width == 1 {
                let in_along = c.b.setp(Cmp::Lt, along.0, along.1.clone());
                let inside = c.b.and(in_along, in_across);
                let x = self.element(c, at, inside)?;
                c.b.assign(regs[0], x);
            } else {
                self.load_vector(c, regs, at, along, in_across)?;
            }
        }
        Ok(())
    }

    /// The `VECTOR` elements from linear index `at` along the unit axis (`u` the first one's
    /// coordinate there, `in_across` whether the other coordinate is inside) into the words
    /// `words`: one vector load when all are inside, else element by element.
    fn load_vector(
        &self,
        c: &mut Ctx,
        words: &[Reg],
        at: Reg,
        (u, u_end): (Reg, &Operand),
        in_across: Reg,
    ) -> Result<()> {
        let last = c.b.add(u, VECTOR - 1);
        let in_along = c.b.setp(Cmp::Lt, last, u_end.clone());
        let whole = c.b.and(in_along, in_across);
        c.when(whole, |c| {
            let base = self.v.base.expect("a vectorizable view is a buffer");
            let addr = c.address(base, at, DType::BF16)?;
            let loaded = c.b.ld_v4(Space::Global, addr, 0, true);
            for (&w, x) in words.iter().zip(loaded) {
                c.b.assign(w, x);
            }
            Ok(())
        })?;
        let partial = c.b.not(whole);
        c.when(partial, |c| {
            let mut halves = Vec::new();
            for j in 0..VECTOR {
                let uj = c.b.add(u, j);
                let in_along = c.b.setp(Cmp::Lt, uj, u_end.clone());
                let inside = c.b.and(in_along, in_across);
                let atj = c.b.add(at, j);
                halves.push(self.element(c, atj, inside)?);
            }
            for (&w, pair) in words.iter().zip(halves.chunks(2)) {
                let x = c.b.pack(Ty::B32, pair[0], pair[1]);
                c.b.assign(w, x);
            }
            Ok(())
        })
    }

    /// The operand's element at linear index `at` as bf16 bits where `inside` holds, else 0.
    fn element(&self, c: &mut Ctx, at: Reg, inside: Reg) -> Result<Reg> {
        let value = c.b.mov(Ty::B16, 0i64);
        c.when(inside, |c| {
            let x = c.load(&self.v, at)?;
            c.b.assign(value, x);
            Ok(())
        })?;
        Ok(value)
    }

    /// Stores the loaded chunks to the shared tile (`As[row][k]` or `Bs[row][k]`).
    fn store(&self, c: &mut Ctx) {
        for (i, regs) in self.regs.iter().enumerate() {
            let (dr, dk) = self.offset(i);
            let at = dr * ROW_BYTES + dk * 2;
            match (self.width, self.unit) {
                (1, _) => c.b.st(Space::Shared, "b16", self.shared, at, regs[0]),
                (_, Unit::K) => {
                    let words = regs[..].try_into().expect("a vector is four words");
                    c.b.st_v4(Space::Shared, self.shared, at, words)
                }
                (_, Unit::Row) => {
                    for (w, &word) in regs.iter().enumerate() {
                        let (lo, hi) = c.b.unpack(word);
                        let row = at + 2 * w as i64 * ROW_BYTES;
                        c.b.st(Space::Shared, "b16", self.shared, row, lo);
                        c.b.st(Space::Shared, "b16", self.shared, row + ROW_BYTES, hi);
                    }
                }
            }
        }
    }
}

/// The accumulators of a thread: `[mma tile along m][along n][fragment element]`.
type Accumulators = [[[Reg; 4]; MMA_N]; MMA_M];

/// The shared address of a lane's first fragment word: row `warp_row·32 + g`, `k = 2t`.
fn fragment_base(c: &mut Ctx, tile: &Stage, warp_row: Reg, g: Reg, t: Reg) -> Reg {
    let row = c.b.mad(warp_row, WARP_TILE, g);
    let at = c.b.mad(row, ROW_BYTES, tile.tile);
    c.b.mad(t, 4i64, at)
}

/// One step's mma over the shared tiles: `k` by 16, eight mma each.
fn multiply(c: &mut Ctx, a_frag: Reg, b_frag: Reg, acc: &Accumulators) {
    let word =
        |c: &mut Ctx, base: Reg, at: i64| c.b.ld(Space::Shared, "b32", Ty::B32, base, at, false);
    for kk in 0..STEP / 16 {
        let k_at = kk * 32;
        let a: Vec<[Reg; 4]> = (0..MMA_M as i64)
            .map(|mi| {
                let at = mi * 16 * ROW_BYTES + k_at;
                [0, 8 * ROW_BYTES, 16, 8 * ROW_BYTES + 16].map(|d| word(c, a_frag, at + d))
            })
            .collect();
        let b: Vec<[Reg; 2]> = (0..MMA_N as i64)
            .map(|ni| {
                let at = ni * 8 * ROW_BYTES + k_at;
                [0, 16].map(|d| word(c, b_frag, at + d))
            })
            .collect();
        for (mi, row) in acc.iter().enumerate() {
            for (ni, &tile) in row.iter().enumerate() {
                c.b.mma_bf16(tile, a[mi], b[ni]);
            }
        }
    }
}

/// Finishes each accumulator that lies inside the `m × n` output: the thread's first is at
/// `(row, col)` of batch element `coords`, the others at the fragment layout's offsets.
fn store_outputs(
    c: &mut Ctx,
    finish: &Finish,
    coords: &[Reg],
    acc: &Accumulators,
    (row, col): (Reg, Reg),
    (m, n): (&Operand, &Operand),
) -> Result<()> {
    for (mi, tiles) in acc.iter().enumerate() {
        for (ni, tile) in tiles.iter().enumerate() {
            for (q, &x) in tile.iter().enumerate() {
                let i = plus(c, row, 16 * mi as i64 + 8 * (q as i64 >> 1));
                let j = plus(c, col, 8 * ni as i64 + (q as i64 & 1));
                finish.store_inside(c, coords, (i, j), (m, n), x)?;
            }
        }
    }
    Ok(())
}

/// `⌈extent / TILE⌉` in a register.
fn tile_count(c: &mut Ctx, extent: &Poly) -> Reg {
    let padded = c.reg(&extent.add(&Poly::constant(TILE - 1)));
    c.b.div(padded, TILE)
}

/// The kernel for `a`·`b` (bf16 views), each output element finished by `finish`.
pub fn emit(c: &mut Ctx, a: &Addressed, b: &Addressed, finish: &Finish) -> Result<Launch> {
    let out = &finish.out.view;
    let r = out.rank();
    let batch_dims: Vec<Operand> = out.dims[..r - 2].iter().map(|d| c.value(d)).collect();
    let batch = Poly::product(&out.dims[..r - 2]);
    let (m, n) = (&out.dims[r - 2], &out.dims[r - 1]);
    let (mv, nv, kv) = (c.value(m), c.value(n), c.value(&a.view.dims[r - 1]));
    let tid = c.special(Special::Tid);
    let sa = Stage::new(c, a, (r - 2, r - 1), mv.clone(), tid);
    let sb = Stage::new(c, b, (r - 1, r - 2), nv.clone(), tid);
    let warp = c.b.shr(tid, 5);
    let lane = c.b.and(tid, 31i64);
    let (g, t) = (c.b.shr(lane, 2), c.b.and(lane, 3i64));
    let (warp_m, warp_n) = (c.b.shr(warp, 1), c.b.and(warp, 1i64));
    let a_frag = fragment_base(c, &sa, warp_m, g, t);
    let b_frag = fragment_base(c, &sb, warp_n, g, t);
    let (tm, tn) = (tile_count(c, m), tile_count(c, n));
    let per_batch = c.b.mul(tm, tn);
    let batch_v = c.value(&batch);
    let items = c.b.mul(per_batch, batch_v);
    let acc: Accumulators =
        [(); MMA_M].map(|_| [(); MMA_N].map(|_| [(); 4].map(|_| c.b.reg(Ty::F32))));
    c.grid_loop(items.into(), Granule::Block, |c, w| {
        let (bi, m0, n0) = super::matmul::tile_origin(c, w, per_batch, tn, TILE);
        let coords = c.unravel(bi, &batch_dims);
        let a_base = c.linear(&a.offset, &coords, &a.strides[..r - 2]);
        let b_base = c.linear(&b.offset, &coords, &b.strides[..r - 2]);
        for &x in acc.iter().flatten().flatten() {
            c.b.assign(x, 0.0f32);
        }
        let k_first = c.b.mov(Ty::S64, 0i64);
        sa.load(c, a_base, m0, k_first, &kv)?;
        sb.load(c, b_base, n0, k_first, &kv)?;
        c.for_range(0i64, kv.clone(), STEP, |c, k0| {
            sa.store(c);
            sb.store(c);
            c.b.bar_sync();
            let next = c.b.add(k0, STEP);
            let more = c.b.setp(Cmp::Lt, next, kv.clone());
            c.when(more, |c| {
                sa.load(c, a_base, m0, next, &kv)?;
                sb.load(c, b_base, n0, next, &kv)
            })?;
            multiply(c, a_frag, b_frag, &acc);
            c.b.bar_sync();
            Ok(())
        })?;
        let row = c.b.mad(warp_m, WARP_TILE, m0);
        let row = c.b.add(row, g);
        let col = c.b.mad(warp_n, WARP_TILE, n0);
        let col = c.b.mad(t, 2i64, col);
        store_outputs(c, finish, &coords, &acc, (row, col), (&mv, &nv))
    })?;
    Ok(super::matmul::tiles_launch(
        batch,
        out,
        TILE,
        THREADS as u32,
        c.b.shared_bytes(),
    ))
}
