//! The decode form of `Kernel::MatMul`: `out[r, n] = Σₖ x[r, k]·W[n, k]` for a few rows `r`
//! (the decode step's `batch × m` tokens, `m` a constant of at most 4) against a weight shared
//! by every row, read at memory bandwidth.
//!
//! **When it applies** ([`applies`]): `b` is a buffer whose batch strides are all 0 (one weight
//! for every row) and whose `k` axis is unit-stride (`x·Wᵀ` of a `[n, k]` weight), `a` is a
//! buffer unit-stride along `k`, both f32 or bf16, and every other stride and both offsets are
//! multiples of 8 elements. Buffers start 64-byte aligned (allocations, and arena offsets by
//! `memory_plan::ALIGN`), so every group of 8 elements starting at a multiple of 8 along `k`
//! (an *octet*) is 16-byte aligned and loads as one (bf16) or two (f32) 16-byte vectors.
//! Otherwise the warp-per-output form of `matmul.rs` runs.
//!
//! **Work**: one warp per output column `n`, for every row: chunks of 4 rows, then the rows
//! left one at a time. A weight row is read from memory by the first chunk and from cache by
//! the others (a row of 2048 bf16 is 4 KiB). Lane `l` walks the
//! octets at `k = 8l, 8l + 256, …`, several per iteration so that enough loads are in flight to
//! cover the memory latency, then the single octets left, then the elements past the last whole
//! octet; the lanes' sums fold by shuffles and lane 0 runs the epilogue and stores. Octets of
//! 16-byte loads replaced quads of 8-byte ones after an A/B on an H200
//! (`bench/results/gpu-decode-pdl-2026-11-30-h200/`).
//!
//! The sum's order differs from the interpreter's (per-lane partial sums, then a tree), so
//! results agree within f32 rounding of a `k`-term sum, not bit for bit.

use super::context::{Addressed, Ctx, Granule};
use super::matmul::Finish;
use super::reduce::warp_fold;
use super::THREADS;
use crate::error::Result;
use crate::ptx::{Cmp, Reg, Space, Special, Ty};
use kiln_backend_cpu::view::View;
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Elements loaded together along `k`.
const OCTET: i64 = 8;
/// Rows of one chunk.
const CHUNK: usize = 4;
/// Octets each lane loads per iteration, for a chunk and for a single row.
const UNROLL_CHUNK: usize = 4;
const UNROLL_ROW: usize = 8;

fn multiple_of(p: &Poly, q: i64) -> bool {
    p.terms.iter().all(|t| t.coeff % q == 0)
}

fn octet_dtype(d: DType) -> bool {
    matches!(d, DType::F32 | DType::BF16)
}

/// Whether every octet of `v` along axis `along` starts 16-byte aligned (for f32, 32-byte): the
/// offset and every other stride are multiples of 8 elements.
fn aligned(v: &View, along: usize) -> bool {
    multiple_of(&v.offset, OCTET)
        && v.strides
            .iter()
            .enumerate()
            .all(|(i, s)| i == along || multiple_of(s, OCTET))
}

/// Whether [`load_octet`] reads `v` along its last axis: an f32 or bf16 buffer, unit-stride and
/// aligned along that axis.
pub(super) fn octets_along_rows(v: &View) -> bool {
    let last = v.rank() - 1;
    v.buffer().is_some()
        && octet_dtype(v.dtype)
        && v.strides[last].is_constant(1)
        && aligned(v, last)
}

/// Whether this form computes `a·b` (see the module doc for the conditions).
pub fn applies(a: &View, b: &View) -> bool {
    let r = b.rank();
    a.buffer().is_some()
        && b.buffer().is_some()
        && octet_dtype(a.dtype)
        && octet_dtype(b.dtype)
        && b.strides[..r - 2].iter().all(|s| s.is_constant(0))
        && b.strides[r - 2].is_constant(1)
        && a.strides[r - 1].is_constant(1)
        && aligned(a, r - 1)
        && aligned(b, r - 2)
}

/// The eight f32 values of the octet of `v` starting at element `index` (a multiple of 8).
pub(super) fn load_octet(c: &mut Ctx, v: &Addressed, index: Reg) -> Result<[Reg; 8]> {
    let base = v.base.expect("gemv operands are buffers");
    let addr = c.address(base, index, v.view.dtype)?;
    let words: Vec<Reg> = match v.view.dtype {
        DType::BF16 => {
            c.b.ld_v4(Space::Global, addr, 0, true)
                .into_iter()
                .flat_map(|pair| [c.b.shl(pair, 16), c.b.and(pair, -65536i64)])
                .collect()
        }
        _ => [0, 16]
            .into_iter()
            .flat_map(|offset| c.b.ld_v4(Space::Global, addr, offset, true))
            .collect(),
    };
    Ok([0, 1, 2, 3, 4, 5, 6, 7].map(|i| c.b.mov(Ty::F32, words[i])))
}

/// One element of `v` at `index`, widened to f32.
fn load_one(c: &mut Ctx, v: &Addressed, index: Reg) -> Result<Reg> {
    let x = c.load(v, index)?;
    super::expr::convert(c, x, v.view.dtype, DType::F32)
}

/// The operands' addressing shared by every item.
struct Operands {
    a: Addressed,
    b: Addressed,
    /// Row dims: the batch dims, then `m`.
    rows: Vec<crate::ptx::Operand>,
    k: Reg,
}

impl Operands {
    /// Sums of the rows at `rows` (each row's batch coordinates, then `m`) against weight
    /// column `n`, one per row.
    fn dots(&self, c: &mut Ctx, rows: &[Vec<Reg>], n: Reg, lane: Reg) -> Result<Vec<Reg>> {
        let r = self.a.view.rank();
        let count = rows.len();
        let w_base = c.b.mov(Ty::S64, self.b.offset.clone());
        let w_base = c.b.mad(n, self.b.strides[r - 1].clone(), w_base);
        let x_bases: Vec<Reg> = rows
            .iter()
            .map(|coords| c.linear(&self.a.offset, coords, &self.a.strides[..r - 1]))
            .collect();
        let accs: Vec<Reg> = (0..count).map(|_| c.b.mov(Ty::F32, 0.0f32)).collect();
        let whole = c.b.and(self.k, -OCTET);
        let k = c.b.mul(lane, OCTET);
        let unroll = if count == 1 { UNROLL_ROW } else { UNROLL_CHUNK };
        let span = 32 * OCTET;
        // Octets `unroll` at a time while the last of them is whole, then one at a time.
        let unrolled_end = c.b.sub(whole, span * (unroll as i64 - 1));
        for (end, octets) in [(unrolled_end, unroll), (whole, 1)] {
            c.walk(k, end, span * octets as i64, |c, k| {
                let mut weights = Vec::new();
                for q in 0..octets {
                    let at = c.b.add(k, span * q as i64);
                    let at = c.b.add(at, w_base);
                    weights.push(load_octet(c, &self.b, at)?);
                }
                for (acc, &x_base) in accs.iter().zip(&x_bases) {
                    for (q, w) in weights.iter().enumerate() {
                        let at = c.b.add(k, span * q as i64);
                        let at = c.b.add(at, x_base);
                        let x = load_octet(c, &self.a, at)?;
                        for (x, w) in x.iter().zip(w) {
                            let next = c.b.mad(*x, *w, *acc);
                            c.b.assign(*acc, next);
                        }
                    }
                }
                Ok(())
            })?;
        }
        // Elements past the last whole octet (fewer than 8).
        let tail = c.b.add(whole, lane);
        c.for_range(tail, self.k, 32i64, |c, k| {
            let at = c.b.add(k, w_base);
            let w = load_one(c, &self.b, at)?;
            for (acc, &x_base) in accs.iter().zip(&x_bases) {
                let at = c.b.add(k, x_base);
                let x = load_one(c, &self.a, at)?;
                let next = c.b.mad(x, w, *acc);
                c.b.assign(*acc, next);
            }
            Ok(())
        })?;
        Ok(accs
            .into_iter()
            .map(|acc| warp_fold(c, acc, |c, x, y| c.b.add(x, y)))
            .collect())
    }
}

pub fn emit(c: &mut Ctx, a: &View, b: &View, out: &View, finish: &Finish) -> Result<Launch> {
    let r = out.rank();
    let row_dims = &out.dims[..r - 1];
    let rows = Poly::product(row_dims);
    let n = &out.dims[r - 1];
    let ops = Operands {
        a: c.addressed(a),
        b: c.addressed(b),
        rows: row_dims.iter().map(|d| c.value(d)).collect(),
        k: c.reg(&a.dims[r - 1]),
    };
    let rows_v = c.reg(&rows);
    let whole_rows = c.b.and(rows_v, -(CHUNK as i64));
    let n_v = c.value(n);
    let lane = c.special(Special::Lane);
    c.grid_loop(n_v, Granule::Warp, |c, column| {
        // Chunks of rows, then the rows left one by one; a chunk rereads the weight row the
        // previous one read, from cache.
        c.for_range(0i64, whole_rows, CHUNK as i64, |c, first| {
            store_rows(c, &ops, finish, first, CHUNK, column, lane)
        })?;
        c.for_range(whole_rows, rows_v, 1i64, |c, first| {
            store_rows(c, &ops, finish, first, 1, column, lane)
        })
    })?;
    Ok(Launch {
        blocks: vec![WorkFactor {
            extent: n.clone(),
            tile: (THREADS / 32) as u64,
        }],
        threads: THREADS,
        shared_bytes: 0,
        buffers: Vec::new(),
    })
}

/// Computes rows `first..first + count` of column `n` and stores them from lane 0.
fn store_rows(
    c: &mut Ctx,
    ops: &Operands,
    finish: &Finish,
    first: Reg,
    count: usize,
    n: Reg,
    lane: Reg,
) -> Result<()> {
    let rows: Vec<Vec<Reg>> = (0..count)
        .map(|i| {
            let row = c.b.add(first, i as i64);
            c.unravel(row, &ops.rows)
        })
        .collect();
    let sums = ops.dots(c, &rows, n, lane)?;
    let lane0 = c.b.setp(Cmp::Eq, lane, 0i64);
    c.when(lane0, |c| {
        for (mut coords, sum) in rows.into_iter().zip(sums) {
            coords.push(n);
            finish.store(c, &coords, sum)?;
        }
        Ok(())
    })
}
