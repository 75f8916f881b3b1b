//! The tensor-core form of `Kernel::Attention` (`attention_mma`): FlashAttention's forward for
//! **bf16** queries, keys and values (the `bf16` policy's attention), head sizes that are
//! multiples of 16 up to 128, with f32 accumulators: on `wgmma` (a warpgroup's
//! `m64nNk16`, sm_90a) where both head sizes are multiples of 64, else on
//! `mma.sync.aligned.m16n8k16` ([`Engine`]). `attention.rs` picks it for the values (the
//! log-sum-exp keeps the warp-per-row form).
//!
//! **Work.** A block of 4 warps (one warpgroup) takes the queries of one batch element and head
//! (items `B·H·⌈S/queries⌉`, by grid stride); each warp owns `16·m_tiles` of them (see
//! [`Shape`]: two m-tiles for heads up to 64), and each lane two rows of each m-tile, `g` and
//! `g + 8` (`g = lane >> 2`, `t = lane % 4`, the fragment layouts of `matmul_mma.rs`, which are
//! `wgmma`'s too for each warp's 16 rows): with `mma.sync` warp `w`'s m-tiles are rows
//! `32w..32w + 32` (each key fragment feeds two `mma`), with `wgmma` m-tile `i` is rows
//! `64i + 16w..` (one `wgmma` covers an m-tile of the 4 warps). The block walks the keys its
//! queries see, `lo..hi` (the union of the rows' visible runs, folded over the block through
//! shared memory), a tile at a time:
//! 1. `S = Q·Kᵀ`: the queries' A fragments stay in registers for the whole walk; keys are staged
//!    `Ks[key][d]`. With `mma.sync` one `ldmatrix.x4` reads the B fragments of two n-tiles of
//!    keys at a k-step; `wgmma` reads the tile through a descriptor (K-major). Each lane holds,
//!    per m-tile, 8-key n-tiles × columns `2t, 2t + 1` × its two rows. `wgmma` computes each
//!    m-tile's scores as a group of its own, so steps 2–4 of m-tile 0 run while m-tile 1's
//!    scores are computed, and its `P·V` while m-tile 1's steps 2–3 run.
//! 2. Where the tile is not inside every row's visible run, each score outside its row's run
//!    becomes `-∞`.
//! 3. Online softmax per row, in base 2 (`ex2.approx.ftz`: a weight below 2⁻¹²⁶ of the row's
//!    largest is 0, far under bf16's resolution of the sum) with the scale folded into one `fma` per
//!    score (for a positive scale; another is applied first): the tile's maximum (a tree over
//!    the lane's scores, then the 4 lanes of the row by shuffles) moves the running maximum
//!    `m`; the running sum `l` (each lane's own part, summed over the 4 lanes at the end) and
//!    the output accumulators are rescaled by `2^(scale'·(m − m'))`; `p = 2^(scale'·(s − m'))`,
//!    with `m' = 0` while a row has seen only `-∞`.
//! 4. `O += P·V`: the accumulator layout of `S` is the A fragment layout of `P` (two n-tiles of
//!    8 keys are one k-step of 16), so each pair of probabilities is rounded to bf16 and packed
//!    in registers. Values are staged as they lie too, `Vs[key][c]`, and read by
//!    `ldmatrix.x4.trans`, which transposes them into B fragments (two neighbouring keys of
//!    one column per word), or by `wgmma` as an MN-major B.
//!
//! Finally each row is divided by `l` and stored (f32, or rounded to bf16 where the result is);
//! the log-sum-exp form (`flash_attention_lse`) stores `ln l + scale·m` instead (`-∞` for a
//! query that sees no key), and a kernel given both (a training step's recomputed forward and
//! its backward's statistics, `AttentionKernel::lse`) stores both. A query that sees no key has `l = 0` and gets `0 · ∞ = NaN`, as
//! the IR defines. Rounding the unnormalized probabilities to bf16
//! (FlashAttention's choice) differs from the IR's rounding of the normalized ones by at most
//! two bf16 roundings of each weight (`2⁻⁷` relative, one on each side), the bound the tests
//! use.
//!
//! **Staging.** Two stages of shared tiles. A tile starts with a wait for the thread's copies
//! and a barrier: then the tile is in its stage for every thread, and no warp still reads the
//! other stage, so the next tile's keys and values are copied there (`cp.async` of 16-byte
//! chunks when `matmul_mma::vectorizable` proves them aligned, in flight during the whole tile;
//! else through registers, element by element) and the tile takes one barrier (after
//! `fence.proxy.async`, for `wgmma`'s reads). Keys past `T` are 0. The tiles' layouts are
//! [`Layout`]'s: rows padded by 8 bf16 for `ldmatrix`, `wgmma`'s 128-byte swizzle for it.
//!
//! Invariants: every thread reaches every barrier (the walk's bounds are the block's); a stage
//! is written only after the barrier that starts the tile after the last one that read it.

use super::attention::Views;
use super::context::{Addressed, Ctx, Granule};
use super::matmul_mma::{vectorizable, VECTOR};
use super::reduce::warp_fold;
use crate::error::Result;
use crate::ptx::{math, Cmp, Operand, Reg, Shuffle, Space, Special, Ty};
use kiln_backend_cpu::kernel::{AttentionKernel, AttentionOutput};
use kiln_backend_cpu::view::View;
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Threads per block: four warps.
pub(super) const THREADS: i64 = 128;
pub(super) const WARPS: i64 = THREADS / 32;

/// The tiling, by head size: registers hold a warp's queries, their scores for a tile and their
/// outputs, so small heads take two m-tiles per warp and 64 keys per tile, larger ones one and
/// 32 (which also keeps both shared stages within the 48 KiB of static shared memory).
#[derive(Clone, Copy)]
struct Shape {
    m_tiles: usize,
    keys: i64,
}

impl Shape {
    fn of(d: i64, dv: i64) -> Shape {
        match d <= 64 && dv <= 64 {
            true => Shape {
                m_tiles: 2,
                keys: 64,
            },
            false => Shape {
                m_tiles: 1,
                keys: 32,
            },
        }
    }

    /// Queries per block.
    fn queries(self) -> i64 {
        WARPS * 16 * self.m_tiles as i64
    }
}

/// Whether attention `kernel` takes this form: bf16 operands, head sizes multiples of 16 up to
/// 128.
pub fn applies(kernel: &AttentionKernel) -> bool {
    let size = |v: &View| v.dims[3].as_constant();
    let fits = |n: Option<i64>| matches!(n, Some(n) if n % 16 == 0 && (16..=128).contains(&n));
    [&kernel.q, &kernel.k, &kernel.v]
        .iter()
        .all(|v| v.dtype == DType::BF16)
        && fits(size(&kernel.q))
        && fits(size(&kernel.v))
}

/// One lane's part of staging a tile of `rows × width` rows of an operand as they lie
/// (`Ks[key][c]`): chunks of `VECTOR` neighbouring columns of one row, consecutive lanes taking
/// consecutive chunks of a row, so global loads coalesce. A chunk's place is recomputed from the
/// thread index where it is used (shifts, for the usual power-of-two sizes), which keeps
/// registers free for the fragments. `mma` reads a staged tile as B fragments through
/// `ldmatrix` ([`Read`]): its rows as B's columns, or (transposed in the load) as B's rows.
pub(super) struct TileStage {
    v: Addressed,
    /// Chunks per row, and all of the tile's.
    per_row: i64,
    total: i64,
    /// Whether chunks are single 16-byte loads.
    vector: bool,
    tid: Reg,
    /// The words of the lane's chunks `tid + THREADS·i`.
    chunks: Vec<[Reg; 4]>,
    /// The tile in stage 0, and its row pitch in bytes (padded rows).
    tile: Reg,
    pitch: i64,
    layout: Layout,
}

/// How a staged tile lies in shared memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// Row after row, each padded by 8 bf16 so the 8 rows an `ldmatrix` reads at once fall in
    /// distinct banks; read by `ldmatrix` ([`TileStage::lane_base`]).
    Padded,
    /// `wgmma`'s 128-byte swizzle (rows a multiple of 64 bf16, the tile 1024-byte aligned):
    /// each 64 columns of the rows a block of 128-byte rows, the blocks one after another, and
    /// in each 1024-byte atom of 8 rows the 16-byte chunk `q` of row `r` stored at chunk
    /// `q ^ (r % 8)` — so the 8 lanes copying a row's chunks write 8 distinct bank groups, and
    /// so do the tensor cores reading a chunk of 8 rows. Read by `wgmma` through a descriptor
    /// ([`TileStage::descriptor`]).
    Swizzled,
}

/// How `mma` reads a staged tile as its B operand (`k × n`).
#[derive(Clone, Copy)]
pub(super) enum Read {
    /// The tile's rows are B's columns, `B[k][n] = tile[n][k]` (keys for `S = Q·Kᵀ`):
    /// `ldmatrix`.
    Rows,
    /// The tile's rows are B's rows, `B[k][n] = tile[k][n]` (values for `O += P·V`):
    /// `ldmatrix.trans`.
    Columns,
}

/// `(x / n, x % n)` for a positive constant `n`.
pub(super) fn div_rem(c: &mut Ctx, x: Reg, n: i64) -> (Reg, Reg) {
    match n.count_ones() {
        1 => (c.b.shr(x, n.trailing_zeros()), c.b.and(x, n - 1)),
        _ => (c.b.div(x, n), c.b.rem(x, n)),
    }
}

impl TileStage {
    /// The staging of tiles of `rows` rows of `v`, laid out as `layout` says, into the tile at
    /// `tile` (stage 0).
    pub fn new(
        c: &mut Ctx,
        v: &Addressed,
        (rows, layout): (i64, Layout),
        tile: Reg,
        tid: Reg,
    ) -> TileStage {
        let width = v.view.dims[3].as_constant().expect("applies");
        let per_row = width / VECTOR;
        let total = rows * per_row;
        let chunks = (0..(total + THREADS - 1) / THREADS)
            .map(|_| [(); 4].map(|_| c.b.reg(Ty::B32)))
            .collect();
        TileStage {
            v: v.clone(),
            per_row,
            total,
            vector: vectorizable(&v.view, 3),
            tid,
            chunks,
            tile,
            pitch: Self::pitch(width),
            layout,
        }
    }

    /// The lane's chunk `i`: its row and first column in the tile, its byte offset in a stage,
    /// and whether the lane has it (when the tile's chunks do not divide among the threads).
    fn place(&self, c: &mut Ctx, i: usize) -> (Reg, Reg, Reg, Option<Reg>) {
        let index = c.b.add(self.tid, i as i64 * THREADS);
        let (row, chunk, at) = match self.layout {
            Layout::Padded => {
                let (row, chunk) = div_rem(c, index, self.per_row);
                let at = c.b.mul(row, self.pitch);
                let at = c.b.mad(chunk, 2 * VECTOR, at);
                (row, chunk, at)
            }
            Layout::Swizzled => {
                let (row, chunk) = div_rem(c, index, self.per_row);
                let block = c.b.shr(chunk, 3);
                let at = c.b.mul(block, self.total / self.per_row * 128);
                let at = c.b.mad(row, 128i64, at);
                let in_atom = c.b.and(row, 7i64);
                let within = c.b.and(chunk, 7i64);
                let swizzled = c.b.xor(within, in_atom);
                (row, chunk, c.b.mad(swizzled, 16i64, at))
            }
        };
        let col = c.b.shl(chunk, VECTOR.trailing_zeros());
        let owned =
            ((i as i64 + 1) * THREADS > self.total).then(|| c.b.setp(Cmp::Lt, index, self.total));
        (row, col, at, owned)
    }

    /// Bytes of a shared row: `width` bf16 and 8 of padding, so the 8 rows an `ldmatrix`
    /// reads at once fall in distinct banks.
    fn pitch(width: i64) -> i64 {
        (width + 8) * 2
    }

    /// Bytes of a tile of `rows` rows of `v` laid out as `layout` says.
    pub fn bytes(v: &View, rows: i64, layout: Layout) -> i64 {
        let width = v.dims[3].as_constant().expect("applies");
        match layout {
            Layout::Padded => rows * Self::pitch(width),
            Layout::Swizzled => rows * width * 2,
        }
    }

    /// Runs `body` for the chunk where the lane has it.
    fn owned(
        c: &mut Ctx,
        owned: Option<Reg>,
        body: impl FnOnce(&mut Ctx) -> Result<()>,
    ) -> Result<()> {
        match owned {
            Some(p) => c.when(p, body),
            None => body(c),
        }
    }

    /// Loads the chunks of rows `j0..j0 + rows` (of `row_count`; 0 past them) of the head at
    /// linear index `head`.
    pub fn load(&self, c: &mut Ctx, head: Reg, j0: Reg, row_count: &Operand) -> Result<()> {
        for (i, words) in self.chunks.iter().enumerate() {
            let (row, col, _, owned) = self.place(c, i);
            let j = c.b.add(j0, row);
            let inside = c.b.setp(Cmp::Lt, j, row_count.clone());
            let at = c.b.mad(j, self.v.strides[2].clone(), head);
            let at = c.b.add(at, col);
            for &w in words {
                c.b.assign(w, 0i64);
            }
            let inside = match owned {
                Some(p) => c.b.and(inside, p),
                None => inside,
            };
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

    /// Copies rows `j0..j0 + rows` (of `row_count`; 0 past them, and `j0 < row_count`) of the
    /// head at linear index `head` into the tile of the stage at byte offset `stage`: by
    /// `cp.async`, complete once the thread waits for the group it is committed in, where
    /// chunks are 16-byte vectors; else through registers, complete at once.
    ///
    /// Where chunks per row divide the threads, a lane's chunks lie `THREADS / per_row` rows
    /// apart in one column, so their addresses are one step apart: a chunk costs its bound
    /// check and its copy. A row past `row_count` reads nothing (its copy is of 0 bytes, from
    /// row `j0`).
    pub fn issue(
        &self,
        c: &mut Ctx,
        (head, j0, row_count): (Reg, Reg, &Operand),
        stage: Reg,
    ) -> Result<()> {
        if !self.vector {
            self.load(c, head, j0, row_count)?;
            return self.store(c, stage);
        }
        if THREADS % self.per_row != 0 || self.layout == Layout::Swizzled {
            return self.issue_each(c, (head, j0, row_count), stage);
        }
        let base = self.v.base.expect("a vectorizable view is a buffer");
        let apart = THREADS / self.per_row;
        let (row, chunk) = div_rem(c, self.tid, self.per_row);
        let col = c.b.shl(chunk, VECTOR.trailing_zeros());
        let first = c.b.add(j0, row);
        // `first + apart·i < row_count` for chunk `i`: `over < −apart·i`.
        let over = c.b.sub(first, row_count.clone());
        let inside = |c: &mut Ctx, i: usize| c.b.setp(Cmp::Lt, over, -apart * i as i64);
        let first_inside = inside(c, 0);
        let read = c.b.selp(first, j0, first_inside, Ty::S64);
        let at = c.b.mad(read, self.v.strides[2].clone(), head);
        let at = c.b.add(at, col);
        let src = c.address(base, at, DType::BF16)?;
        let stride = c.b.mov(Ty::S64, self.v.strides[2].clone());
        let step = c.b.mul(stride, 2 * apart);
        let dst = c.b.add(self.tile, stage);
        let dst = c.b.mad(row, self.pitch, dst);
        let dst = c.b.mad(col, 2i64, dst);
        for i in 0..self.chunks.len() {
            let within = match i {
                0 => first_inside,
                _ => inside(c, i),
            };
            let from = match i {
                0 => src,
                _ => {
                    let next = c.b.mad(step, i as i64, src);
                    c.b.selp(next, src, within, Ty::S64)
                }
            };
            let size = c.b.selp(16i64, 0i64, within, Ty::U32);
            // The tile's last chunks, where they do not divide among the threads.
            let owned = ((i as i64 + 1) * THREADS > self.total).then(|| {
                let tile_row = c.b.add(row, apart * i as i64);
                c.b.setp(Cmp::Lt, tile_row, self.total / self.per_row)
            });
            let offset = apart * i as i64 * self.pitch;
            Self::owned(c, owned, |c| {
                c.b.cp_async(dst, offset, from, size);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// [`Self::issue`] by `cp.async` where a lane's chunks are not in one column of a padded
    /// tile, or the tile is swizzled: each placed on its own.
    fn issue_each(
        &self,
        c: &mut Ctx,
        (head, j0, row_count): (Reg, Reg, &Operand),
        stage: Reg,
    ) -> Result<()> {
        let base = self.v.base.expect("a vectorizable view is a buffer");
        let tile = c.b.add(self.tile, stage);
        for i in 0..self.chunks.len() {
            let (row, col, offset, owned) = self.place(c, i);
            Self::owned(c, owned, |c| {
                let j = c.b.add(j0, row);
                let inside = c.b.setp(Cmp::Lt, j, row_count.clone());
                let read = c.b.selp(j, j0, inside, Ty::S64);
                let at = c.b.mad(read, self.v.strides[2].clone(), head);
                let at = c.b.add(at, col);
                let src = c.address(base, at, DType::BF16)?;
                let size = c.b.selp(16i64, 0i64, inside, Ty::U32);
                let dst = c.b.add(tile, offset);
                c.b.cp_async(dst, 0, src, size);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Stores the loaded chunks into the tile of the stage at byte offset `stage`.
    pub fn store(&self, c: &mut Ctx, stage: Reg) -> Result<()> {
        let tile = c.b.add(self.tile, stage);
        for (i, words) in self.chunks.iter().enumerate() {
            let (_, _, offset, owned) = self.place(c, i);
            Self::owned(c, owned, |c| {
                let at = c.b.add(tile, offset);
                c.b.st_v4(Space::Shared, at, 0, *words);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The `wgmma` descriptor of `B` in stage 0 for a tile of [`Layout::Swizzled`] read as
    /// `read` says (128-byte swizzle), and the byte offset of each k-step of 16 from its start:
    /// - [`Read::Rows`] (keys for `S = Q·Kᵀ`): `B` K-major, its columns the tile's rows; atoms
    ///   of 8 rows 1024 bytes apart (the stride byte offset; the leading one unused); k-step `s`
    ///   starts `32·(s % 4)` bytes into block `s / 4` of 64 columns.
    /// - [`Read::Columns`] (values for `O += P·V`): `B` MN-major (`wgmma`'s `trans-b`), its
    ///   rows the tile's rows; blocks of 64 columns `128·rows` bytes apart (leading), atoms of 8
    ///   rows 1024 apart (stride); k-step `s` starts at row `16·s`.
    pub fn descriptor(&self, c: &mut Ctx, read: Read) -> (Reg, Vec<i64>) {
        assert!(
            self.layout == Layout::Swizzled,
            "wgmma reads swizzled tiles"
        );
        let rows = self.total / self.per_row;
        let block = 128 * rows;
        let (leading, steps): (i64, Vec<i64>) = match read {
            Read::Rows => (
                16,
                (0..self.per_row / 2)
                    .map(|s| s / 4 * block + s % 4 * 32)
                    .collect(),
            ),
            Read::Columns => (block, (0..rows / 16).map(|s| s * 2048).collect()),
        };
        let start = c.b.shr(self.tile, 4);
        let start = c.b.and(start, 0x3fffi64);
        let fields = (leading >> 4) << 16 | (1024 >> 4) << 32 | 1 << 62;
        (c.b.or(start, fields), steps)
    }

    /// The shared address (in stage 0) lane `lane` gives `ldmatrix` for the B fragments of
    /// n-tiles 0 and 1 at k-step 0: row `lane % 8` of matrix `m = lane / 8`, where the
    /// matrices are (n-tile 0, k 0–7), (n-tile 0, k 8–15), (n-tile 1, k 0–7), (n-tile 1,
    /// k 8–15).
    pub fn lane_base(&self, c: &mut Ctx, lane: Reg, read: Read) -> Reg {
        let row = c.b.and(lane, 7i64);
        let (n_tile, k_half) = (c.b.shr(lane, 4), c.b.shr(lane, 3));
        let k_half = c.b.and(k_half, 1i64);
        // Rows: tile row `8·n_tile + row`, column `8·k_half`; Columns: tile row
        // `8·k_half + row`, column `8·n_tile`.
        let (tile_row, col) = match read {
            Read::Rows => (c.b.mad(n_tile, 8i64, row), k_half),
            Read::Columns => (c.b.mad(k_half, 8i64, row), n_tile),
        };
        let at = c.b.mad(tile_row, self.pitch, self.tile);
        c.b.mad(col, 16i64, at)
    }

    /// The B fragments of n-tiles `ni` and `ni + 1` at k-step `kk`, from the lane's
    /// [`TileStage::lane_base`] `base` in the stage being read.
    fn b_fragments(
        &self,
        c: &mut Ctx,
        base: Reg,
        read: Read,
        ni: usize,
        kk: usize,
    ) -> [[Reg; 2]; 2] {
        let (ni, kk) = (ni as i64, kk as i64);
        let (at, trans) = match read {
            Read::Rows => (ni * 8 * self.pitch + kk * 32, false),
            Read::Columns => (kk * 16 * self.pitch + ni * 16, true),
        };
        let [a, b, c2, d] = c.b.ldmatrix_x4(base, at, trans);
        [[a, b], [c2, d]]
    }
}

/// Loads row `r` of the head at linear index `head` of `v` (0 where `inside` is false) into
/// the words of a lane's A fragments of one m-tile that hold it: `half` 0 for row `g`, 1 for
/// row `g + 8`, one fragment per k-step of 16 columns.
pub(super) fn load_a_row(
    c: &mut Ctx,
    v: &Addressed,
    (head, r, half): (Reg, Reg, usize),
    inside: Reg,
    t: Reg,
    frags: &[[Reg; 4]],
) -> Result<()> {
    let row = c.b.mad(r, v.strides[2].clone(), head);
    let at = c.b.mad(t, 2i64, row);
    for (kk, frag) in frags.iter().enumerate() {
        for (which, col) in [(0, 0), (2, 8)] {
            let word = frag[which + half];
            c.b.assign(word, 0i64);
            c.when(inside, |c| {
                let lo_at = c.b.add(at, kk as i64 * 16 + col);
                let lo = c.load(v, lo_at)?;
                let hi_at = c.b.add(lo_at, 1i64);
                let hi = c.load(v, hi_at)?;
                let pair = c.b.pack(Ty::B32, lo, hi);
                c.b.assign(word, pair);
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// One m-tile of accumulators (n-tiles of 8 columns) as the A fragments of k-steps of 16
/// columns, each pair rounded to bf16: the accumulator layout of two n-tiles is the A layout
/// of one k-step.
pub(super) fn as_a_fragments(c: &mut Ctx, tiles: &[[Reg; 4]]) -> Vec<[Reg; 4]> {
    tiles
        .chunks(2)
        .map(|pair| {
            let (lo, hi) = (pair[0], pair[1]);
            [
                c.b.pack_bf16x2(lo[0], lo[1]),
                c.b.pack_bf16x2(lo[2], lo[3]),
                c.b.pack_bf16x2(hi[0], hi[1]),
                c.b.pack_bf16x2(hi[2], hi[3]),
            ]
        })
        .collect()
}

/// A fold of two values into one.
pub(super) type Fold = fn(&mut Ctx, Reg, Reg) -> Reg;

/// `xs` folded pairwise (a tree, so the folds are independent instructions).
pub(super) fn tree(c: &mut Ctx, mut xs: Vec<Reg>, fold: Fold) -> Reg {
    while xs.len() > 1 {
        xs = xs
            .chunks(2)
            .map(|pair| match pair {
                [x, y] => fold(c, *x, *y),
                [x] => *x,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    xs[0]
}

/// Folds `x` over the four lanes that share a fragment row (lanes `4g..4g + 4`).
pub(super) fn row_fold(c: &mut Ctx, x: Reg, fold: Fold) -> Reg {
    let mut acc = x;
    for offset in [1, 2] {
        let other = c.b.shfl(Shuffle::Xor, acc, offset);
        acc = fold(c, acc, other);
    }
    acc
}

/// Which end of a head's row tiles carries the most work under a causal mask: the last
/// (queries see every key before them) or the first (keys are seen by every query after them).
#[derive(Clone, Copy)]
pub(super) enum Heaviest {
    First,
    Last,
}

/// Item `w` of `heads · tiles` blocks as (head, tile), `heads` counting batch elements and
/// heads together: every head's heaviest tile first, then every head's next, and so on. Under
/// a causal mask a block's work grows with its tile's distance from the light end, and blocks
/// start in about the order of their index, so the launch ends on its lightest blocks rather
/// than on the last head's heaviest. Without a causal mask every order does the same work.
pub(super) fn heaviest_first(
    c: &mut Ctx,
    w: Reg,
    (heads, tiles): (Reg, Reg),
    heaviest: Heaviest,
) -> (Reg, Reg) {
    let rank = c.b.div(w, heads);
    let head = c.b.rem(w, heads);
    let tile = match heaviest {
        Heaviest::First => rank,
        Heaviest::Last => {
            let last = c.b.sub(tiles, 1i64);
            c.b.sub(last, rank)
        }
    };
    (head, tile)
}

/// The bounds of the keys a block walks and of those every row sees.
pub(super) struct BlockRange {
    /// The union of the rows' runs: `lo..hi`.
    pub lo: Reg,
    pub hi: Reg,
    /// The intersection: a tile inside `all_lo..all_hi` needs no mask.
    pub all_lo: Reg,
    pub all_hi: Reg,
}

/// The block's range from each lane's rows' runs (`lo..hi`; an empty run has `lo` = `i64::MAX`
/// and `hi` = 0, so it takes no part in the union and empties the intersection), folded over
/// the warps through `slots` (4 s64 per warp).
pub(super) fn block_range(
    c: &mut Ctx,
    runs: &[(Reg, Reg)],
    slots: Reg,
    warp: Reg,
    lane: Reg,
) -> BlockRange {
    let (los, his): (Vec<Reg>, Vec<Reg>) = runs.iter().copied().unzip();
    let min: Fold = |c, x, y| c.b.min(x, y);
    let max: Fold = |c, x, y| c.b.max(x, y);
    let folds = [
        (los.clone(), min),
        (his.clone(), max),
        (los, max),
        (his, min),
    ];
    let first_lane = c.b.setp(Cmp::Eq, lane, 0i64);
    let slot = c.b.mad(warp, 32i64, slots);
    let mut folded = Vec::new();
    for (xs, f) in &folds {
        let x = tree(c, xs.clone(), *f);
        folded.push(warp_fold(c, x, f));
    }
    c.when(first_lane, |c| {
        for (i, &x) in folded.iter().enumerate() {
            c.b.st(Space::Shared, "s64", slot, 8 * i as i64, x);
        }
        Ok(())
    })
    .expect("stores cannot fail");
    c.b.bar_sync();
    let mut out = Vec::new();
    for (i, (_, f)) in folds.iter().enumerate() {
        let parts = (0..WARPS)
            .map(|w| {
                c.b.ld(
                    Space::Shared,
                    "s64",
                    Ty::S64,
                    slots,
                    32 * w + 8 * i as i64,
                    false,
                )
            })
            .collect();
        out.push(tree(c, parts, *f));
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

/// Fragment registers of one lane: `[m-tile][n-tile or k-step][word]`.
pub(super) type Fragments = Vec<Vec<[Reg; 4]>>;

pub(super) fn fragments(c: &mut Ctx, m_tiles: usize, n: usize, ty: Ty) -> Fragments {
    (0..m_tiles)
        .map(|_| (0..n).map(|_| [(); 4].map(|_| c.b.reg(ty))).collect())
        .collect()
}

/// `acc[mi][ni] += a[mi][kk]·B(ni, kk)` over the k-steps of `a` and the n-tiles of `acc` (an
/// even number), B read from `tile`'s stage as `read` says, at the lane's `ldmatrix` address
/// `base`; each pair of B fragments is loaded once for every m-tile.
pub(super) fn multiply(
    c: &mut Ctx,
    acc: &Fragments,
    a: &Fragments,
    (tile, read): (&TileStage, Read),
    base: Reg,
) {
    accumulate(c, acc, a, (tile, read), base, None);
}

/// `a·B` into new accumulators of `n` n-tiles per m-tile, as [`multiply`] but starting from
/// `zero` (a register holding 0.0), so nothing clears them first.
pub(super) fn product(
    c: &mut Ctx,
    a: &Fragments,
    n: usize,
    (tile, read): (&TileStage, Read),
    (base, zero): (Reg, Reg),
) -> Fragments {
    let acc = fragments(c, a.len(), n, Ty::F32);
    accumulate(c, &acc, a, (tile, read), base, Some(zero));
    acc
}

/// [`multiply`], the first k-step adding onto `zero` where one is given.
fn accumulate(
    c: &mut Ctx,
    acc: &Fragments,
    a: &Fragments,
    (tile, read): (&TileStage, Read),
    base: Reg,
    zero: Option<Reg>,
) {
    for kk in 0..a[0].len() {
        for ni in (0..acc[0].len()).step_by(2) {
            let b = tile.b_fragments(c, base, read, ni, kk);
            for (acc, a) in acc.iter().zip(a) {
                for (n, b) in [(ni, b[0]), (ni + 1, b[1])] {
                    let onto = match zero {
                        Some(z) if kk == 0 => [z; 4],
                        _ => acc[n],
                    };
                    c.b.mma_bf16_onto(acc[n], a[kk], b, onto);
                }
            }
        }
    }
}

/// How a block multiplies, by the layout of its staged tiles.
enum Engine {
    /// `mma.sync` on B fragments that `ldmatrix` reads from [`Layout::Padded`] tiles, from the
    /// lane's addresses in stage 0 ([`TileStage::lane_base`]); `zero` holds 0.0.
    Mma { k_base: Reg, v_base: Reg, zero: Reg },
    /// `wgmma` on [`Layout::Swizzled`] tiles: each operand's descriptor in stage 0 and its
    /// k-steps' byte offsets ([`TileStage::descriptor`]), and the predicates that start a sum
    /// and add to one.
    Wgmma {
        keys: (Reg, Vec<i64>),
        values: (Reg, Vec<i64>),
        overwrite: Reg,
        accumulate: Reg,
    },
}

impl Engine {
    fn new(c: &mut Ctx, (ks, vs): (&TileStage, &TileStage), lane: Reg) -> Engine {
        match ks.layout {
            Layout::Padded => Engine::Mma {
                k_base: ks.lane_base(c, lane, Read::Rows),
                v_base: vs.lane_base(c, lane, Read::Columns),
                zero: c.b.mov(Ty::F32, 0.0f32),
            },
            Layout::Swizzled => {
                let one = c.b.mov(Ty::S32, 1i64);
                Engine::Wgmma {
                    keys: ks.descriptor(c, Read::Rows),
                    values: vs.descriptor(c, Read::Columns),
                    overwrite: c.b.setp(Cmp::Ne, one, 1i64),
                    accumulate: c.b.setp(Cmp::Eq, one, 1i64),
                }
            }
        }
    }
}

pub fn emit(c: &mut Ctx, kernel: &AttentionKernel) -> Result<Launch> {
    let AttentionKernel {
        q, k, v, attention, ..
    } = kernel;
    let constant = |v: &View| v.dims[3].as_constant().expect("applies");
    let (d, dv) = (constant(q), constant(v));
    let shape = Shape::of(d, dv);
    let (m_tiles, keys_per_tile) = (shape.m_tiles, shape.keys);
    let (heads, seq) = (c.value(&q.dims[1]), c.value(&q.dims[2]));
    let keys = c.value(&k.dims[2]);
    let keys_reg = c.reg(&k.dims[2]);
    let last_query = c.reg(&q.dims[2].add(&Poly::constant(-1)));
    let views = Views::of(c, kernel);
    // Where each query's log-sum-exp goes: the output of the log-sum-exp form, or beside the
    // values.
    let lse_out = match kernel.output {
        AttentionOutput::LogSumExp => Some(views.out.clone()),
        AttentionOutput::Values => kernel.lse.as_ref().map(|v| c.addressed(v)),
    };
    let queries = shape.queries();
    let tiles = c.reg(&q.dims[2].add(&Poly::constant(queries - 1)));
    let tiles = c.b.div(tiles, queries);
    let bh = c.reg(&q.dims[0].mul(&q.dims[1]));
    let items = c.b.mul(bh, tiles);
    let tid = c.special(Special::Tid);
    let (lane, warp) = (c.b.and(tid, 31i64), c.b.shr(tid, 5));
    let (g, t) = (c.b.shr(lane, 2), c.b.and(lane, 3i64));
    let layout = match d % 64 == 0 && dv % 64 == 0 {
        true => Layout::Swizzled,
        false => Layout::Padded,
    };
    // Two stages, each a key tile then a value tile.
    let k_bytes = TileStage::bytes(k, keys_per_tile, layout);
    let stage_bytes = k_bytes + TileStage::bytes(v, keys_per_tile, layout);
    let region = c.b.shared_aligned((2 * stage_bytes) as u32, 1024);
    let v_tile = c.b.add(region, k_bytes);
    let ks = TileStage::new(c, &views.k, (keys_per_tile, layout), region, tid);
    let vs = TileStage::new(c, &views.v, (keys_per_tile, layout), v_tile, tid);
    let slots = c.b.shared((WARPS * 32) as u32);
    let engine = Engine::new(c, (&ks, &vs), lane);
    let stage = c.b.mov(Ty::S64, 0i64);
    // Scores are multiplied by `factor` inside the exponent; a scale that is not positive (the
    // maximum would be the minimum) is applied to the scores first.
    let log2_scale = (attention.scale * std::f64::consts::LOG2_E) as f32;
    let (prescale, factor) = match log2_scale > 0.0 {
        true => (None, log2_scale),
        false => (Some(log2_scale), 1.0f32),
    };
    let n_tiles = (keys_per_tile / 8) as usize;
    let q_frags = fragments(c, m_tiles, (d / 16) as usize, Ty::B32);
    let acc = fragments(c, m_tiles, (dv / 8) as usize, Ty::F32);
    c.grid_loop(items.into(), Granule::Block, |c, w| {
        let (bhi, tile) = heaviest_first(c, w, (bh, tiles), Heaviest::Last);
        let h = c.b.rem(bhi, heads.clone());
        let bi = c.b.div(bhi, heads.clone());
        let kv = c.b.div(h, attention.group as i64);
        let q_head = c.linear(&views.q.offset, &[bi, h], &views.q.strides[..2]);
        let k_head = c.linear(&views.k.offset, &[bi, kv], &views.k.strides[..2]);
        let v_head = c.linear(&views.v.offset, &[bi, kv], &views.v.strides[..2]);
        let out_head = c.linear(&views.out.offset, &[bi, h], &views.out.strides[..2]);
        let lse_head = lse_out
            .as_ref()
            .map(|o| c.linear(&o.offset, &[bi, h], &o.strides[..2]));
        let first = c.b.mul(tile, queries);
        let (warp_rows, tile_rows) = match engine {
            Engine::Wgmma { .. } => (16, 64),
            Engine::Mma { .. } => (16 * m_tiles as i64, 16),
        };
        let first = c.b.mad(warp, warp_rows, first);
        // The lane's rows: `[m-tile][g, g + 8]`.
        let rows: Vec<[Reg; 2]> = (0..m_tiles)
            .map(|mi| {
                let r = c.b.add(first, tile_rows * mi as i64);
                let r = c.b.add(r, g);
                [r, c.b.add(r, 8i64)]
            })
            .collect();
        // Each row's visible run (empty past the last query) and its query fragments.
        let padding = views.visibility.padding(c, bi)?;
        let mut runs = Vec::new();
        for (mi, pair) in rows.iter().enumerate() {
            for (half, &r) in pair.iter().enumerate() {
                let inside = c.b.setp(Cmp::Lt, r, seq.clone());
                // A row past the last query reads the last query's position (its run is
                // emptied below).
                let read = c.b.min(r, last_query);
                let row = (bi, padding);
                let (lo, hi) = views
                    .visibility
                    .run_in_row(c, attention, row, read, keys_reg)?;
                runs.push((
                    c.b.selp(lo, i64::MAX, inside, Ty::S64),
                    c.b.selp(hi, 0i64, inside, Ty::S64),
                ));
                load_a_row(c, &views.q, (q_head, r, half), inside, t, &q_frags[mi])?;
            }
        }
        let range = block_range(c, &runs, slots, warp, lane);
        let m: Vec<Reg> = runs
            .iter()
            .map(|_| c.b.mov(Ty::F32, f32::NEG_INFINITY))
            .collect();
        let l: Vec<Reg> = runs.iter().map(|_| c.b.mov(Ty::F32, 0.0f32)).collect();
        for &x in acc.iter().flatten().flatten() {
            c.b.assign(x, 0.0f32);
        }
        let any = c.b.setp(Cmp::Lt, range.lo, range.hi);
        c.when(any, |c| {
            ks.issue(c, (k_head, range.lo, &keys), stage)?;
            vs.issue(c, (v_head, range.lo, &keys), stage)
        })?;
        c.b.cp_async_commit();
        c.for_range(range.lo, range.hi, keys_per_tile, |c, j0| {
            let next = c.b.add(j0, keys_per_tile);
            let more = c.b.setp(Cmp::Lt, next, range.hi);
            // This tile is in its stage, seen by every thread, and every warp is done with
            // the other stage: the next tile's copies go there, in flight during this tile.
            c.b.cp_async_wait(0);
            if let Engine::Wgmma { .. } = engine {
                c.b.fence_proxy_async();
            }
            c.b.bar_sync();
            let other = c.b.xor(stage, stage_bytes);
            c.when(more, |c| {
                ks.issue(c, (k_head, next, &keys), other)?;
                vs.issue(c, (v_head, next, &keys), other)
            })?;
            c.b.cp_async_commit();
            let past_lo = c.b.setp(Cmp::Ge, j0, range.all_lo);
            let before_hi = c.b.setp(Cmp::Le, next, range.all_hi);
            let inside = c.b.and(past_lo, before_hi);
            let partial = c.b.not(inside);
            // 2.–3. of m-tile `mi`, whose scores are `s`: they become its probabilities, and
            // its rows' sums and outputs are rescaled.
            let probabilities = |c: &mut Ctx, mi: usize, s: &[[Reg; 4]]| -> Result<()> {
                if let Some(scale) = prescale {
                    for &x in s.iter().flatten() {
                        let y = c.b.mul(x, scale);
                        c.b.assign(x, y);
                    }
                }
                // 2. The mask, where the tile is not inside every row's run.
                c.when(partial, |c| {
                    let key0 = c.b.mad(t, 2i64, j0);
                    for (ni, tile) in s.iter().enumerate() {
                        for (e, &x) in tile.iter().enumerate() {
                            let (lo, hi) = runs[2 * mi + (e >> 1)];
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
                    let (m, l) = (m[2 * mi + half], l[2 * mi + half]);
                    let own: Vec<Reg> = s
                        .iter()
                        .flat_map(|tile| tile[2 * half..2 * half + 2].to_vec())
                        .collect();
                    let tile_max = tree(c, own.clone(), |c, x, y| c.b.max(x, y));
                    let tile_max = row_fold(c, tile_max, |c, x, y| c.b.max(x, y));
                    let m_new = c.b.max(m, tile_max);
                    let unseen = c.b.setp(Cmp::Eq, m_new, f32::NEG_INFINITY);
                    let shift = c.b.selp(0.0f32, m_new, unseen, Ty::F32);
                    let drop = c.b.sub(m, shift);
                    let drop = c.b.mul(drop, factor);
                    let alpha = c.b.ex2_ftz(drop);
                    let bias = c.b.mul(shift, -factor);
                    let mut ps = Vec::new();
                    for &x in &own {
                        let e = c.b.mad(x, factor, bias);
                        let p = c.b.ex2_ftz(e);
                        c.b.assign(x, p);
                        ps.push(x);
                    }
                    let sum = tree(c, ps, |c, x, y| c.b.add(x, y));
                    let l_next = c.b.mad(l, alpha, sum);
                    c.b.assign(l, l_next);
                    c.b.assign(m, m_new);
                    for tile in &acc[mi] {
                        for &a in &tile[2 * half..2 * half + 2] {
                            let y = c.b.mul(a, alpha);
                            c.b.assign(a, y);
                        }
                    }
                }
                Ok(())
            };
            match &engine {
                Engine::Mma {
                    k_base,
                    v_base,
                    zero,
                } => {
                    // 1. Scores.
                    let k_at = c.b.add(*k_base, stage);
                    let s = product(c, &q_frags, n_tiles, (&ks, Read::Rows), (k_at, *zero));
                    for (mi, s) in s.iter().enumerate() {
                        probabilities(c, mi, s)?;
                    }
                    // 4. O += P·V, the probabilities as A fragments.
                    let v_at = c.b.add(*v_base, stage);
                    let p: Fragments = s.iter().map(|tiles| as_a_fragments(c, tiles)).collect();
                    multiply(c, &acc, &p, (&vs, Read::Columns), v_at);
                }
                Engine::Wgmma {
                    keys: (k_desc, k_steps),
                    values: (v_desc, v_steps),
                    overwrite,
                    accumulate,
                } => {
                    let shift = c.b.shr(stage, 4);
                    let (k_at, v_at) = (c.b.add(*k_desc, shift), c.b.add(*v_desc, shift));
                    // 1. Scores, each m-tile's a group of its own.
                    let s = fragments(c, m_tiles, n_tiles, Ty::F32);
                    c.b.wgmma_fence();
                    for (s, q) in s.iter().zip(&q_frags) {
                        let flat: Vec<Reg> = s.iter().flatten().copied().collect();
                        for (kk, a) in q.iter().enumerate() {
                            let desc = c.b.add(k_at, k_steps[kk] >> 4);
                            let onto = if kk == 0 { *overwrite } else { *accumulate };
                            c.b.wgmma_bf16(&flat, *a, desc, onto, false);
                        }
                        c.b.wgmma_commit();
                    }
                    for mi in 0..m_tiles {
                        // In flight: the scores of m-tiles `mi..`, and P·V of `mi − 1`.
                        let pending = m_tiles - 1 - mi + usize::from(mi > 0);
                        c.b.wgmma_wait(pending as u32);
                        probabilities(c, mi, &s[mi])?;
                        // 4. O += P·V, the probabilities as A fragments.
                        let p = as_a_fragments(c, &s[mi]);
                        let flat: Vec<Reg> = acc[mi].iter().flatten().copied().collect();
                        c.b.wgmma_fence();
                        for (kk, a) in p.iter().enumerate() {
                            let desc = c.b.add(v_at, v_steps[kk] >> 4);
                            c.b.wgmma_bf16(&flat, *a, desc, *accumulate, true);
                        }
                        c.b.wgmma_commit();
                    }
                    c.b.wgmma_wait(0);
                }
            }
            c.b.assign(stage, other);
            Ok(())
        })?;
        // Each row divided by its sum, and stored; or its log-sum-exp,
        // `(factor·m + log₂ l)·ln 2` (`-∞` for a row that sees no key).
        for (row, &l) in l.iter().enumerate() {
            let (mi, half) = (row / 2, row % 2);
            let r = rows[mi][half];
            let total = row_fold(c, l, |c, x, y| c.b.add(x, y));
            let inside = c.b.setp(Cmp::Lt, r, seq.clone());
            if let (Some(o), Some(head)) = (&lse_out, lse_head) {
                let first_lane = c.b.setp(Cmp::Eq, t, 0i64);
                let store = c.b.and(inside, first_lane);
                c.when(store, |c| {
                    let log = math::log(&mut c.b, total);
                    let lse = c.b.mad(m[row], factor * std::f32::consts::LN_2, log);
                    let at = c.b.mad(r, o.strides[2].clone(), head);
                    c.store(o.base.expect("a buffer"), at, DType::F32, lse)
                })?;
            }
            if kernel.output == AttentionOutput::LogSumExp {
                continue;
            }
            let inv = c.b.rcp(total);
            c.when(inside, |c| {
                let at = c.b.mad(r, views.out.strides[2].clone(), out_head);
                let at = c.b.mad(t, 2i64, at);
                for (nj, tile) in acc[mi].iter().enumerate() {
                    for e in 0..2 {
                        let y = c.b.mul(tile[2 * half + e], inv);
                        let y = super::expr::convert(c, y, DType::F32, views.out.view.dtype)?;
                        let col = c.b.add(at, nj as i64 * 8 + e as i64);
                        c.store(
                            views.out.base.expect("a buffer"),
                            col,
                            views.out.view.dtype,
                            y,
                        )?;
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
                .mul(&q.dims[2].add(&Poly::constant(queries - 1))),
            tile: queries as u64,
        }],
        threads: THREADS as u32,
        shared_bytes: c.b.shared_bytes(),
        buffers: Vec::new(),
    })
}
