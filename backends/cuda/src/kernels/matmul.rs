//! Matmul kernels (`Kernel::MatMul`): `out[.., m, n] = Σₖ a[.., m, k]·b[.., k, n]` in f32 FMAs
//! over strided views (a `bf16` operand is widened as it is loaded), then the epilogue of a
//! `fused_matmul` on each output element before it is stored.
//!
//! Two forms, chosen from the shape:
//! - **warp per output** when `m` is a constant of at most 4 (decode): the lanes of a warp
//!   stride over `k` (consecutive lanes read consecutive elements of a weight row `W[n, :]`,
//!   which is what `x·Wᵀ` reads along `k`), then fold by shuffles; lane 0 finishes the element.
//! - **shared-memory tiles** otherwise: a block of 16 × 16 threads computes a 16 × 16 tile of
//!   one batch element, stepping `k` by 16; each step stages a tile of `a` and of `b` in shared
//!   memory (rows padded to 17 floats), the threads of a warp running along whichever axis of
//!   the operand is unit-stride, so the loads are coalesced for `x·W` and `x·Wᵀ` alike.
//!
//! Every load is bounds-checked (out-of-range tile elements are 0), so any `m`, `n`, `k` works.
//! Two bf16 operands take the tensor-core forms instead: `matmul_gemv_mma.rs` for decode,
//! `matmul_mma.rs` for the shared tiles. The decode form against a shared weight is
//! `matmul_gemv.rs` (FMA) otherwise. The output is stored in its view's type (the sum, or an
//! epilogue's result, rounded to bf16 where the output is bf16).

use super::context::{Addressed, Ctx, Granule};
use super::expr::{convert, evaluate};
use super::reduce::warp_fold;
use super::THREADS;
use crate::error::Result;
use crate::ptx::{Cmp, Operand, Reg, Space, Special, Ty};
use kiln_backend_cpu::kernel::{decode_rows, Epilogue};
use kiln_backend_cpu::view::View;
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

const TILE: i64 = 16;
/// Floats per shared row (one of padding against bank conflicts).
const ROW: i64 = TILE + 1;

/// What the epilogue and the store of one output element need.
pub(super) struct Finish {
    pub(super) out: Addressed,
    leaves: Vec<Addressed>,
    epilogue: Option<Epilogue>,
}

impl Finish {
    /// The finish of a matmul into `out`, through its epilogue if it has one.
    pub(super) fn new(c: &mut Ctx, out: &View, epilogue: Option<&Epilogue>) -> Finish {
        Finish {
            out: c.addressed(out),
            leaves: epilogue
                .map(|e| e.leaves.iter().map(|l| c.addressed(l)).collect())
                .unwrap_or_default(),
            epilogue: epilogue.cloned(),
        }
    }

    /// The finish reading back, where an epilogue leaf is `written`, what the same thread of
    /// the same kernel stored there before (a coherent load: see `Addressed::written_here`).
    pub(super) fn reading_back(mut self, written: &View) -> Finish {
        for leaf in &mut self.leaves {
            leaf.written_here |= leaf.view == *written;
        }
        self
    }

    /// Stores element `(i, j)` of the output tile of batch element `batch` from its sum `acc`,
    /// where it lies inside the `m × n` output.
    pub(super) fn store_inside(
        &self,
        c: &mut Ctx,
        batch: &[Reg],
        (i, j): (Reg, Reg),
        (m, n): (&Operand, &Operand),
        acc: Reg,
    ) -> Result<()> {
        let in_m = c.b.setp(Cmp::Lt, i, m.clone());
        let in_n = c.b.setp(Cmp::Lt, j, n.clone());
        let inside = c.b.and(in_m, in_n);
        c.when(inside, |c| {
            let mut all = batch.to_vec();
            all.extend([i, j]);
            self.store(c, &all, acc)
        })
    }

    /// Stores output element `coords` (batch coordinates, then `m`, `n`) from its sum `acc`.
    pub(super) fn store(&self, c: &mut Ctx, coords: &[Reg], acc: Reg) -> Result<()> {
        let v = match &self.epilogue {
            Some(e) => {
                let mut values = vec![acc];
                for l in &self.leaves {
                    let at = c.linear(&l.offset, coords, &l.strides);
                    values.push(c.load(l, at)?);
                }
                evaluate(c, &e.expr, &values)?
            }
            None => convert(c, acc, DType::F32, self.out.view.dtype)?,
        };
        let at = c.linear(&self.out.offset, coords, &self.out.strides);
        let base = self.out.base.expect("matmuls write buffers");
        c.store(base, at, self.out.view.dtype, v)
    }
}

/// Element `(i, j)` of the last two axes of `v` from linear index `base`, widened to f32.
fn load_f32(c: &mut Ctx, v: &Addressed, base: Reg, i: Reg, j: Reg, r: usize) -> Result<Reg> {
    let at = c.b.mad(i, v.strides[r - 2].clone(), base);
    let at = c.b.mad(j, v.strides[r - 1].clone(), at);
    let x = c.load(v, at)?;
    convert(c, x, v.view.dtype, DType::F32)
}

pub fn emit(
    c: &mut Ctx,
    a: &View,
    b: &View,
    out: &View,
    epilogue: Option<&Epilogue>,
) -> Result<Launch> {
    let r = out.rank();
    let batch_dims: Vec<_> = out.dims[..r - 2].iter().map(|d| c.value(d)).collect();
    let batch = Poly::product(&out.dims[..r - 2]);
    let (m, n, k) = (&out.dims[r - 2], &out.dims[r - 1], &a.dims[r - 1]);
    let (mv, nv, kv) = (c.value(m), c.value(n), c.value(k));
    let av = c.addressed(a);
    let bv = c.addressed(b);
    let finish = Finish::new(c, out, epilogue);
    let operand_bases = |c: &mut Ctx, coords: &[Reg]| {
        let ab = c.linear(&av.offset, coords, &av.strides[..r - 2]);
        let bb = c.linear(&bv.offset, coords, &bv.strides[..r - 2]);
        (ab, bb)
    };
    let decode = decode_rows(m);
    if decode && super::matmul_gemv_mma::applies(a, b) {
        return super::matmul_gemv_mma::emit(c, a, b, out, finish);
    }
    if decode && super::matmul_gemv::applies(a, b) {
        return super::matmul_gemv::emit(c, a, b, out, &finish);
    }
    if decode {
        let outputs = batch.mul(m).mul(n);
        let count = c.value(&outputs);
        let lane = c.special(Special::Lane);
        c.grid_loop(count, Granule::Warp, |c, w| {
            let mut dims = batch_dims.clone();
            dims.extend([mv.clone(), nv.clone()]);
            let coords = c.unravel(w, &dims);
            let (ab, bb) = operand_bases(c, &coords[..r - 2]);
            let (mi, ni) = (coords[r - 2], coords[r - 1]);
            let acc = c.b.mov(Ty::F32, 0.0f32);
            c.for_range(lane, kv.clone(), 32i64, |c, ki| {
                let x = load_f32(c, &av, ab, mi, ki, r)?;
                let y = load_f32(c, &bv, bb, ki, ni, r)?;
                let next = c.b.mad(x, y, acc);
                c.b.assign(acc, next);
                Ok(())
            })?;
            let sum = warp_fold(c, acc, |c, x, y| c.b.add(x, y));
            let first = c.b.setp(Cmp::Eq, lane, 0i64);
            c.when(first, |c| finish.store(c, &coords, sum))
        })?;
        return Ok(Launch {
            blocks: vec![WorkFactor {
                extent: outputs,
                tile: (THREADS / 32) as u64,
            }],
            threads: THREADS,
            shared_bytes: 0,
            buffers: Vec::new(),
        });
    }
    if super::matmul_mma::applies(a, b) {
        return super::matmul_mma::emit(c, &av, &bv, &finish);
    }
    let a_tile = c.b.shared((4 * TILE * ROW) as u32);
    let b_tile = c.b.shared((4 * TILE * ROW) as u32);
    let tid = c.special(Special::Tid);
    let ty_ = c.b.shr(tid, 4);
    let tx = c.b.and(tid, TILE - 1);
    let tiles_m = m.add(&Poly::constant(TILE - 1));
    let tm = c.value(&tiles_m);
    let tm = reg_of(c, tm);
    let tm = c.b.div(tm, TILE);
    let tiles_n = n.add(&Poly::constant(TILE - 1));
    let tn = c.value(&tiles_n);
    let tn = reg_of(c, tn);
    let tn = c.b.div(tn, TILE);
    let per_batch = c.b.mul(tm, tn);
    let batch_v = c.value(&batch);
    let items = c.b.mul(per_batch, batch_v);
    // Which thread index runs along each staged tile's columns (the unit-stride axis).
    let a_k_fast = a.strides[r - 1].is_constant(1);
    let b_n_fast = b.strides[r - 1].is_constant(1) || !b.strides[r - 2].is_constant(1);
    c.grid_loop(items.into(), Granule::Block, |c, w| {
        let (bi, m0, n0) = tile_origin(c, w, per_batch, tn, TILE);
        let coords = c.unravel(bi, &batch_dims);
        let (ab, bb) = operand_bases(c, &coords);
        let acc = c.b.mov(Ty::F32, 0.0f32);
        c.for_range(0i64, kv.clone(), TILE, |c, k0| {
            // a: row i, column kk of the tile.
            let (i, kk) = if a_k_fast { (ty_, tx) } else { (tx, ty_) };
            let mi = c.b.add(m0, i);
            let ki = c.b.add(k0, kk);
            let x = guarded(c, &av, ab, (mi, &mv), (ki, &kv), r)?;
            let slot = c.b.mad(i, ROW, kk);
            let addr = c.b.mad(slot, 4i64, a_tile);
            c.b.st(Space::Shared, "f32", addr, 0, x);
            // b: row kk, column j of the tile.
            let (kk, j) = if b_n_fast { (ty_, tx) } else { (tx, ty_) };
            let ki = c.b.add(k0, kk);
            let ni = c.b.add(n0, j);
            let y = guarded(c, &bv, bb, (ki, &kv), (ni, &nv), r)?;
            let slot = c.b.mad(kk, ROW, j);
            let addr = c.b.mad(slot, 4i64, b_tile);
            c.b.st(Space::Shared, "f32", addr, 0, y);
            c.b.bar_sync();
            let a_row = c.b.mul(ty_, 4 * ROW);
            let a_row = c.b.add(a_row, a_tile);
            let b_col = c.b.mad(tx, 4i64, b_tile);
            for q in 0..TILE {
                let x = c.b.ld(Space::Shared, "f32", Ty::F32, a_row, 4 * q, false);
                let y =
                    c.b.ld(Space::Shared, "f32", Ty::F32, b_col, 4 * q * ROW, false);
                let next = c.b.mad(x, y, acc);
                c.b.assign(acc, next);
            }
            c.b.bar_sync();
            Ok(())
        })?;
        let mi = c.b.add(m0, ty_);
        let ni = c.b.add(n0, tx);
        finish.store_inside(c, &coords, (mi, ni), (&mv, &nv), acc)
    })?;
    Ok(tiles_launch(
        batch,
        out,
        TILE,
        (TILE * TILE) as u32,
        c.b.shared_bytes(),
    ))
}

/// The batch element, first row and first column of output tile `w`, the tiles of a batch
/// element being `per_batch`, `tn` of them per row of tiles.
pub(super) fn tile_origin(
    c: &mut Ctx,
    w: Reg,
    per_batch: Reg,
    tn: Reg,
    tile: i64,
) -> (Reg, Reg, Reg) {
    let bi = c.b.div(w, per_batch);
    let t = c.b.rem(w, per_batch);
    let m0 = c.b.div(t, tn);
    let n0 = c.b.rem(t, tn);
    (bi, c.b.mul(m0, tile), c.b.mul(n0, tile))
}

/// The launch of a kernel giving each block one `tile × tile` output tile of one batch element.
pub(super) fn tiles_launch(
    batch: Poly,
    out: &View,
    tile: i64,
    threads: u32,
    shared_bytes: u32,
) -> Launch {
    let r = out.rank();
    let factor = |extent: &Poly, tile| WorkFactor {
        extent: extent.clone(),
        tile,
    };
    Launch {
        blocks: vec![
            factor(&batch, 1),
            factor(&out.dims[r - 2], tile as u64),
            factor(&out.dims[r - 1], tile as u64),
        ],
        threads,
        shared_bytes,
        buffers: Vec::new(),
    }
}

fn reg_of(c: &mut Ctx, v: Operand) -> Reg {
    match v {
        Operand::Reg(r) => r,
        other => c.b.mov(Ty::S64, other),
    }
}

/// Element `(i, j)` of `v` as f32, or 0 when `i` or `j` is out of range.
fn guarded(
    c: &mut Ctx,
    v: &Addressed,
    base: Reg,
    (i, rows): (Reg, &Operand),
    (j, cols): (Reg, &Operand),
    r: usize,
) -> Result<Reg> {
    let value = c.b.mov(Ty::F32, 0.0f32);
    let in_i = c.b.setp(Cmp::Lt, i, rows.clone());
    let in_j = c.b.setp(Cmp::Lt, j, cols.clone());
    let inside = c.b.and(in_i, in_j);
    c.when(inside, |c| {
        let x = load_f32(c, v, base, i, j, r)?;
        c.b.assign(value, x);
        Ok(())
    })?;
    Ok(value)
}
