//! The decode form of `Kernel::MatMul` on tensor cores (`matmul_gemv_mma`): `out[r, n] =
//! Σₖ x[r, k]·W[n, k]` for the few rows `r` of a decode step (the batch's tokens) against a
//! shared weight, both **bf16**, f32 accumulation and result, on
//! `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`; then the epilogue and store of
//! `matmul.rs` (`Finish::store`) for each output element inside the output.
//!
//! **When it applies** ([`applies`]): where `matmul_gemv.rs` applies (a weight shared by every
//! row, both operands unit-stride along `k`, octets of 8 elements 16-byte aligned), both
//! operands bf16, and `k` a multiple of 8. Where one operand is f32, `matmul_gemv.rs` runs: its
//! values must not be rounded to bf16.
//!
//! **Why tensor cores.** The FMA form reads every row of `x` once per column, so at 16 rows it
//! is bound by L1 reads of `x`, not by the weight's bytes. An `mma` multiplies a 16-row tile of
//! `x` by 8 columns at once, so each element of `x` a lane loads serves 8 columns; at one row
//! the other 15 rows of the tile are wasted work on units that are otherwise idle.
//!
//! **Fragments without shared memory.** A sum over `k` may take `k` in any order, as long as
//! `x` and `W` take the same. Lane `l` (`g = l >> 2`, `t = l % 4`) loads the octet
//! `W[n₀ + g][k₀ + 8t ..+ 8]` with one 16-byte load: its four words are the `B` fragments (two
//! bf16 of consecutive `k` each) of two `mma`, the first taking the octet's elements 0–3 as the
//! fragment's `k = 2t, 2t+1, 2t+8, 2t+9`, the second its elements 4–7. The `A` fragments
//! (`A[g][2t..]`, `A[g+8][2t..]`, `A[g][2t+8..]`, `A[g+8][2t+8..]`) are then the same octet
//! of rows `m₀ + g` and `m₀ + g + 8` of `x`, two more 16-byte loads. So a warp covers 32 of
//! `k` for 8 columns per step, with every global load a whole 16-byte vector and no staging.
//! Rows past the last and columns past the last read the last row or column instead (their
//! results are never stored, and `mma` keeps rows and columns apart); octets past `k` are 0.
//!
//! **Split `k`.** A block of `W` warps covers `W / S` tiles of 8 columns, `S` warps per tile.
//! `S` is the power of two nearest below `4096 · 8 / n` (at most 16; `W` is 16 when `S` is,
//! else 8), so that a launch of few columns still has about 4096 warps: 16 for 512 and 2048
//! columns, 4 for 8192, 1 for a vocabulary. `k` is walked in groups of `U` steps of every split
//! (split `s` takes steps `s, s + S, …` of a group), `U` the power of two nearest below
//! `k / (32·S)`, at most 8, so that each lane has up to 8 weight vectors in flight and a group
//! fits in `k`; the steps past the last whole group follow, one per split at a time, octets
//! past `k` reading as 0. Registers are capped (`.maxntid`, `.minnctapersm`) so that 32 warps fit on a
//! multiprocessor whatever the epilogue. The warps leave their accumulators in shared memory,
//! and after a barrier each of a tile's 128 outputs is summed over its splits in split order
//! (deterministic) and finished. More than 16 rows take the tiles of 16 rows in turn. These
//! choices come from A/B runs on an H200 (`bench/results/gpu-decode-mma-2026-11-30-h200/`):
//! contiguous octets per lane, several accumulator sets and fewer loads in flight were slower.
//!
//! **Several matmuls, one launch** ([`emit_together`]): independent decode matmuls with blocks
//! of one size (a layer's query, key and value projections of one `x`) share a launch, the
//! items of each following those of the one before; a block runs the matmul its item falls in.
//! Three launches of 2 to 8 MB of weights each cost more than one of their sum.
//!
//! **A matmul and the next reading it, one launch** ([`emit_chained`]): where a decode matmul's
//! epilogue reads the previous one's output at the element it stores (a SwiGLU's up projection
//! reading the gate), each block finishes an item of the first and then the same item of the
//! second; one shape means one thread stores an element of the first and reads it back for the
//! second, through the coherent path (`ld.global`), so no other ordering is needed.
//!
//! Invariants: every warp of a block runs every `mma` (the step loops are uniform over a warp,
//! only loads past `k` are guarded) and every barrier (the item and row-tile loops are uniform
//! over the block); shared memory is written only after the barrier that ended the previous
//! tile's reads.

use super::context::{Addressed, Ctx, Granule};
use super::matmul::Finish;
use crate::error::Result;
use crate::ptx::{Cmp, Operand, Reg, Space, Special, Ty};
use kiln_backend_cpu::kernel::{Epilogue, Kernel};
use kiln_backend_cpu::view::View;
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Rows and columns of an `mma` tile.
const ROWS: i64 = 16;
const COLUMNS: i64 = 8;
/// `k` a warp covers per step: 4 lanes of 8.
const STEP: i64 = 32;
/// Bytes of one warp's accumulators in shared memory: 32 lanes × 4 f32.
const WARP_BYTES: i64 = 32 * 16;

/// Whether this form computes `a·b` (see the module doc).
pub fn applies(a: &View, b: &View) -> bool {
    let k = &a.dims[a.rank() - 1];
    a.dtype == DType::BF16
        && b.dtype == DType::BF16
        && k.terms.iter().all(|t| t.coeff % 8 == 0)
        && super::matmul_gemv::applies(a, b)
}

/// How a block is laid out: `warps` warps, `splits` of them per tile of 8 columns, each split
/// loading `unroll` steps of 32 along `k` together.
#[derive(Clone, Copy)]
struct Shape {
    warps: i64,
    splits: i64,
    unroll: i64,
}

/// Warps in flight over the whole GPU a launch aims at: with `UNROLL_MAX` steps of 512 bytes
/// in flight per warp, about 64 KiB per multiprocessor of an H100 or H200.
const TARGET_WARPS: i64 = 4096;
const UNROLL_MAX: i64 = 8;
/// Warps a multiprocessor holds at once: 64 registers per thread at most.
const RESIDENT_WARPS: i64 = 32;

impl Shape {
    /// The shape of the matmul `a·b` into `out` (columns and `k` from their last axes).
    fn of(a: &View, out: &View) -> Shape {
        let r = out.rank();
        Shape::new(&out.dims[r - 1], &a.dims[r - 1])
    }

    /// The shape for `n` columns and `k` (an unknown `n` counts as few columns, an unknown `k`
    /// as long).
    fn new(n: &Poly, k: &Poly) -> Shape {
        let floor_pow2 = |x: i64| {
            if x < 1 {
                1
            } else {
                1 << (63 - x.leading_zeros())
            }
        };
        let splits = match n.as_constant() {
            Some(n) => floor_pow2(TARGET_WARPS * COLUMNS / n).min(16),
            None => 8,
        };
        let unroll = match k.as_constant() {
            Some(k) => floor_pow2(k / (STEP * splits)).min(UNROLL_MAX),
            None => UNROLL_MAX,
        };
        Shape {
            warps: splits.max(8),
            splits,
            unroll,
        }
    }
}

/// The 8 bf16 of `v` from element `index` (a multiple of 8) as four words.
fn octet(c: &mut Ctx, v: &Addressed, index: Reg) -> Result<[Reg; 4]> {
    let base = v.base.expect("gemv operands are buffers");
    let addr = c.address(base, index, DType::BF16)?;
    Ok(c.b.ld_v4(Space::Global, addr, 0, true))
}

/// One lane's loads for one step: the weight octet, and the octets of its two rows of `x`.
struct Loaded {
    w: [Reg; 4],
    x: [[Reg; 4]; 2],
}

/// The addressing of one lane, fixed for a tile of rows.
struct Lane {
    /// Linear indices of the lane's first octet in its weight column and its two rows of `x`.
    w: Reg,
    x: [Reg; 2],
}

impl Lane {
    /// The loads of the step at `k` (a group's or step's start, without the lane's offset).
    fn load(&self, c: &mut Ctx, ops: &Operands, k: Reg) -> Result<Loaded> {
        let at = c.b.add(self.w, k);
        let w = octet(c, &ops.b, at)?;
        let mut x = Vec::new();
        for &row in &self.x {
            let at = c.b.add(row, k);
            x.push(octet(c, &ops.a, at)?);
        }
        Ok(Loaded { w, x: [x[0], x[1]] })
    }

    /// The loads of the step at `k` where the lane's octet (at `k + lane_first`) lies inside
    /// `k`'s extent, else zeros.
    fn load_guarded(&self, c: &mut Ctx, ops: &Operands, k: Reg, lane_first: Reg) -> Result<Loaded> {
        let zero = |c: &mut Ctx| [(); 4].map(|_| c.b.mov(Ty::B32, 0i64));
        let loaded = Loaded {
            w: zero(c),
            x: [zero(c), zero(c)],
        };
        let octet_k = c.b.add(k, lane_first);
        let inside = c.b.setp(Cmp::Lt, octet_k, ops.k);
        c.when(inside, |c| {
            let got = self.load(c, ops, k)?;
            for (&to, from) in loaded.w.iter().zip(got.w) {
                c.b.assign(to, from);
            }
            for (row, got) in loaded.x.iter().zip(got.x) {
                for (&to, from) in row.iter().zip(got) {
                    c.b.assign(to, from);
                }
            }
            Ok(())
        })?;
        Ok(loaded)
    }
}

/// The two `mma` of one step's loads into `acc`.
fn multiply(c: &mut Ctx, acc: [Reg; 4], l: &Loaded) {
    let [x0, x1] = l.x;
    c.b.mma_bf16(acc, [x0[0], x1[0], x0[1], x1[1]], [l.w[0], l.w[1]]);
    c.b.mma_bf16(acc, [x0[2], x1[2], x0[3], x1[3]], [l.w[2], l.w[3]]);
}

/// What every item needs: the operands, the output's row dims and extents.
struct Operands {
    a: Addressed,
    b: Addressed,
    row_dims: Vec<Operand>,
    rows: Reg,
    n: Reg,
    k: Reg,
}

impl Operands {
    /// The linear index of `x[row, 0]`.
    fn x_row(&self, c: &mut Ctx, row: Reg) -> Reg {
        let r = self.a.view.rank();
        let coords = c.unravel(row, &self.row_dims);
        c.linear(&self.a.offset, &coords, &self.a.strides[..r - 1])
    }
}

/// What the matmuls of a launch share: the block's warps, the thread's place in it, the
/// accumulators and the shared memory of the partial sums.
struct Block {
    warps: i64,
    tid: Reg,
    warp: Reg,
    g: Reg,
    t: Reg,
    partials: Reg,
    /// This lane's slot in `partials`.
    mine: Reg,
    acc: [Reg; 4],
}

impl Block {
    fn new(c: &mut Ctx, warps: i64) -> Block {
        // Registers for `RESIDENT_WARPS` warps per multiprocessor, an epilogue or not.
        c.b.occupancy((32 * warps) as u32, (RESIDENT_WARPS / warps) as u32);
        let tid = c.special(Special::Tid);
        let warp = c.b.shr(tid, 5);
        let lane = c.b.and(tid, 31i64);
        let partials = c.b.shared((warps * WARP_BYTES) as u32);
        let mine = c.b.mad(warp, WARP_BYTES, partials);
        Block {
            warps,
            tid,
            warp,
            g: c.b.shr(lane, 2),
            t: c.b.and(lane, 3i64),
            partials,
            mine: c.b.mad(lane, 16i64, mine),
            acc: [(); 4].map(|_| c.b.reg(Ty::F32)),
        }
    }
}

/// One matmul of a launch, set up at the kernel's entry.
struct Gemv {
    ops: Operands,
    shape: Shape,
    finish: Finish,
    /// Columns per item (a block's tiles).
    per_block: i64,
    /// Items: `⌈n / per_block⌉`.
    items: Reg,
    /// The warp's tile of columns in an item, and its lane's first octet along `k`: its split's
    /// first step, its `8t` into it.
    tile: Reg,
    lane_first: Reg,
    last_row: Reg,
    last_column: Reg,
    /// `k` a group of steps covers: `unroll` steps of every split.
    group: i64,
    /// Where the whole groups of steps end.
    groups_end: Reg,
}

impl Gemv {
    fn new(c: &mut Ctx, block: &Block, (a, b, out): (&View, &View, &View), finish: Finish) -> Gemv {
        let r = out.rank();
        let n = &out.dims[r - 1];
        let ops = Operands {
            a: c.addressed(a),
            b: c.addressed(b),
            row_dims: out.dims[..r - 1].iter().map(|d| c.value(d)).collect(),
            rows: c.reg(&Poly::product(&out.dims[..r - 1])),
            n: c.reg(n),
            k: c.reg(&a.dims[r - 1]),
        };
        let shape = Shape::of(a, out);
        let per_block = COLUMNS * shape.warps / shape.splits;
        let split = c.b.and(block.warp, shape.splits - 1);
        let split_first = c.b.mul(split, STEP);
        let lane_k = c.b.mul(block.t, 8i64);
        // A group: `unroll` steps of every split, `STEP · unroll · splits` of `k`; split `s`
        // takes steps `s, s + splits, …` of it, lane `(g, t)` the octet `8t` of each.
        let group = STEP * shape.unroll * shape.splits;
        let padded = c.reg(&n.add(&Poly::constant(per_block - 1)));
        Gemv {
            tile: c.b.shr(block.warp, shape.splits.trailing_zeros()),
            lane_first: c.b.add(split_first, lane_k),
            last_row: c.b.sub(ops.rows, 1i64),
            last_column: c.b.sub(ops.n, 1i64),
            groups_end: c.b.sub(ops.k, group - 1),
            group,
            items: c.b.div(padded, per_block),
            ops,
            shape,
            finish,
            per_block,
        }
    }

    /// The `per_block` columns of item `item`, every tile of 16 rows in turn.
    fn item(&self, c: &mut Ctx, block: &Block, item: Reg) -> Result<()> {
        let (ops, r) = (&self.ops, self.ops.a.view.rank());
        let Shape { splits, unroll, .. } = self.shape;
        let first_column = c.b.mul(item, self.per_block);
        let column = c.b.mad(self.tile, COLUMNS, first_column);
        let column = c.b.add(column, block.g);
        let column = c.b.min(column, self.last_column);
        let w_col = c.b.mov(Ty::S64, ops.b.offset.clone());
        let w_col = c.b.mad(column, ops.b.strides[r - 1].clone(), w_col);
        c.for_range(0i64, ops.rows, ROWS, |c, m0| {
            let x = [0, 8].map(|d| {
                let row = c.b.add(m0, block.g);
                let row = c.b.add(row, d);
                let row = c.b.min(row, self.last_row);
                ops.x_row(c, row)
            });
            let lanes = Lane {
                w: c.b.add(w_col, self.lane_first),
                x: x.map(|x| c.b.add(x, self.lane_first)),
            };
            for &x in &block.acc {
                c.b.assign(x, 0.0f32);
            }
            let k = c.b.mov(Ty::S64, 0i64);
            c.walk(k, self.groups_end, self.group, |c, k| {
                let steps = (0..unroll)
                    .map(|u| {
                        let at = c.b.add(k, STEP * splits * u);
                        lanes.load(c, ops, at)
                    })
                    .collect::<Result<Vec<_>>>()?;
                for l in &steps {
                    multiply(c, block.acc, l);
                }
                Ok(())
            })?;
            // The steps left, a step of every split at a time (octets past `k` read 0).
            c.walk(k, ops.k, STEP * splits, |c, k| {
                let l = lanes.load_guarded(c, ops, k, self.lane_first)?;
                multiply(c, block.acc, &l);
                Ok(())
            })?;
            for (i, &x) in block.acc.iter().enumerate() {
                c.b.st(Space::Shared, "f32", block.mine, 4 * i as i64, x);
            }
            c.b.bar_sync();
            sum_and_store(c, self, block, (m0, first_column))?;
            c.b.bar_sync();
            Ok(())
        })
    }
}

pub fn emit(c: &mut Ctx, a: &View, b: &View, out: &View, finish: Finish) -> Result<Launch> {
    let block = Block::new(c, Shape::of(a, out).warps);
    let gemv = Gemv::new(c, &block, (a, b, out), finish);
    c.grid_loop(gemv.items.into(), Granule::Block, |c, item| {
        gemv.item(c, &block, item)
    })?;
    Ok(by_columns(c, &block, out, &gemv))
}

/// The launch of a block per item of `gemv`'s columns of `out`.
fn by_columns(c: &Ctx, block: &Block, out: &View, gemv: &Gemv) -> Launch {
    Launch {
        blocks: vec![WorkFactor {
            extent: out.dims[out.rank() - 1].clone(),
            tile: gemv.per_block as u64,
        }],
        threads: (32 * block.warps) as u32,
        shared_bytes: c.b.shared_bytes(),
        buffers: Vec::new(),
    }
}

/// The operands of `kernel` where it is a decode matmul of this form whose column count is a
/// constant: `a`, `b`, `out` and the epilogue.
fn decode_parts(kernel: &Kernel) -> Option<(&View, &View, &View, Option<&Epilogue>)> {
    let Kernel::MatMul {
        a,
        b,
        out,
        epilogue,
        ..
    } = kernel
    else {
        return None;
    };
    let r = out.rank();
    let decode = kiln_backend_cpu::kernel::decode_rows(&out.dims[r - 2]);
    let constant_n = out.dims[r - 1].as_constant().is_some();
    (decode && constant_n && applies(a, b)).then_some((a, b, out, epilogue.as_ref()))
}

/// Whether `first` and `second` may run in one launch ([`emit_together`]): decode matmuls of
/// this form with constant column counts and blocks of one size, neither touching what the
/// other writes.
pub fn together(first: &Kernel, second: &Kernel) -> bool {
    let warps = |k: &Kernel| decode_parts(k).map(|(a, _, out, _)| Shape::of(a, out).warps);
    matches!((warps(first), warps(second)), (Some(x), Some(y)) if x == y)
        && super::independent(first, second)
}

/// Several matmuls of this form (each pair [`together`]) in one launch: the items of the first,
/// then those of the second, and so on; a block takes the matmul its item falls in.
pub fn emit_together(c: &mut Ctx, kernels: &[&Kernel]) -> Result<Launch> {
    let parts: Vec<_> = kernels
        .iter()
        .map(|k| decode_parts(k).expect("grouped kernels are decode matmuls"))
        .collect();
    let (a, _, out, _) = parts[0];
    let block = Block::new(c, Shape::of(a, out).warps);
    let mut gemvs = Vec::new();
    let mut ends = Vec::new();
    let mut total = 0;
    for (a, b, out, epilogue) in parts {
        let finish = Finish::new(c, out, epilogue);
        let gemv = Gemv::new(c, &block, (a, b, out), finish);
        let n = out.dims[out.rank() - 1]
            .as_constant()
            .expect("constant columns");
        total += (n + gemv.per_block - 1) / gemv.per_block;
        ends.push(total);
        gemvs.push(gemv);
    }
    c.grid_loop(Operand::Int(total), Granule::Block, |c, item| {
        let mut start = 0;
        for (gemv, &end) in gemvs.iter().zip(&ends) {
            let past_start = c.b.setp(Cmp::Ge, item, start);
            let before_end = c.b.setp(Cmp::Lt, item, end);
            let inside = c.b.and(past_start, before_end);
            c.when(inside, |c| {
                let own = c.b.sub(item, start);
                gemv.item(c, &block, own)
            })?;
            start = end;
        }
        Ok(())
    })?;
    Ok(Launch {
        blocks: vec![WorkFactor {
            extent: Poly::constant(total),
            tile: 1,
        }],
        threads: (32 * block.warps) as u32,
        shared_bytes: c.b.shared_bytes(),
        buffers: Vec::new(),
    })
}

/// Whether `second` may follow `first` in one launch, each block finishing an item of `first`
/// and then the same item of `second` ([`emit_chained`]): decode matmuls of this form with one
/// output shape and one `k` (so one [`Shape`], and each output element finished by the same
/// thread in both), `second`'s epilogue reading `first`'s output where it stores (a leaf that
/// is `first`'s output view: the gate of a SwiGLU, read by the up projection's epilogue), and
/// neither touching what the other writes otherwise.
pub fn chained(first: &Kernel, second: &Kernel) -> bool {
    let (Some((a1, _, out1, _)), Some((a2, b2, out2, Some(epilogue)))) =
        (decode_parts(first), decode_parts(second))
    else {
        return false;
    };
    let one_shape = out1.dims == out2.dims && a1.dims.last() == a2.dims.last();
    let reads_back = epilogue.leaves.iter().any(|l| l == out1);
    let (written, second_written) = (out1.buffer(), out2.buffer());
    let second_reads_otherwise = [a2, b2]
        .into_iter()
        .chain(epilogue.leaves.iter().filter(|l| *l != out1))
        .any(|v| v.buffer() == written);
    let first_reads_second = first
        .operands()
        .iter()
        .any(|v| v.buffer() == second_written);
    one_shape
        && reads_back
        && written != second_written
        && !second_reads_otherwise
        && !first_reads_second
}

/// Two matmuls [`chained`] in one launch: each block computes and stores an item's columns of
/// `first`, then the same columns of `second`, whose epilogue reads back (coherently) what the
/// same thread stored. The two launches' gap and ramp become one.
pub fn emit_chained(c: &mut Ctx, first: &Kernel, second: &Kernel) -> Result<Launch> {
    let expect = "chained kernels are decode matmuls";
    let (a1, b1, out1, e1) = decode_parts(first).expect(expect);
    let (a2, b2, out2, e2) = decode_parts(second).expect(expect);
    let block = Block::new(c, Shape::of(a1, out1).warps);
    let finish = Finish::new(c, out1, e1);
    let head = Gemv::new(c, &block, (a1, b1, out1), finish);
    let finish = Finish::new(c, out2, e2).reading_back(out1);
    let tail = Gemv::new(c, &block, (a2, b2, out2), finish);
    c.grid_loop(head.items.into(), Granule::Block, |c, item| {
        head.item(c, &block, item)?;
        tail.item(c, &block, item)
    })?;
    Ok(by_columns(c, &block, out1, &head))
}

/// Sums each of the block's outputs over its splits' partials (in split order) and finishes
/// those inside the output: thread `tid` takes outputs `tid, tid + 256, …` of the block's
/// `128 · 8 / splits`, output `e` being fragment element `e % 4` of lane `(e / 4) % 32` of tile
/// `e / 128`, whose splits are warps `tile · splits ..`.
fn sum_and_store(
    c: &mut Ctx,
    gemv: &Gemv,
    block: &Block,
    (m0, first_column): (Reg, Reg),
) -> Result<()> {
    let (ops, partials) = (&gemv.ops, block.partials);
    let (warps, splits) = (block.warps, gemv.shape.splits);
    let outputs = ROWS * COLUMNS * warps / splits;
    c.for_range(block.tid, outputs, 32 * warps, |c, e| {
        let tile = c.b.shr(e, 7);
        let element = c.b.and(e, 127i64);
        let first = c.b.mul(tile, splits * WARP_BYTES);
        let first = c.b.mad(element, 4i64, first);
        let first = c.b.add(first, partials);
        let sum = c.b.ld(Space::Shared, "f32", Ty::F32, first, 0, false);
        for s in 1..splits {
            let x =
                c.b.ld(Space::Shared, "f32", Ty::F32, first, s * WARP_BYTES, false);
            let next = c.b.add(sum, x);
            c.b.assign(sum, next);
        }
        // Fragment element `q` of lane `(g, t)`: row `g + 8·(q >> 1)`, column `2t + (q & 1)`.
        let lane = c.b.shr(element, 2);
        let q = c.b.and(element, 3i64);
        let row = c.b.shr(lane, 2);
        let row = c.b.add(row, m0);
        let high = c.b.shr(q, 1);
        let row = c.b.mad(high, 8i64, row);
        let column = c.b.and(lane, 3i64);
        let column = c.b.mul(column, 2i64);
        let odd = c.b.and(q, 1i64);
        let column = c.b.add(column, odd);
        let column = c.b.mad(tile, COLUMNS, column);
        let column = c.b.add(column, first_column);
        let in_rows = c.b.setp(Cmp::Lt, row, ops.rows);
        let in_columns = c.b.setp(Cmp::Lt, column, ops.n);
        let inside = c.b.and(in_rows, in_columns);
        c.when(inside, |c| {
            let mut coords = c.unravel(row, &ops.row_dims);
            coords.push(column);
            gemv.finish.store(c, &coords, sum)
        })
    })
}
