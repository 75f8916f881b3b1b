//! Reduction kernels (`Kernel::Reduce`): sum, max or mean of an elementwise expression over any
//! set of axes, into a contiguous output keeping the reduced axes at size 1. Reductions that
//! keep the innermost axis take the form of `reduce_columns.rs`; the others, this one.
//!
//! One block per output element (by grid stride over the outputs): each thread folds the
//! reduced positions `tid, tid + threads, …` (split into coordinates of the reduced axes), the
//! warp folds its lanes by butterfly shuffles, lane 0 of each warp leaves its value in shared
//! memory, and thread 0 folds the warps in order, divides for a mean, and stores. A reduction
//! of at most [`SHORT`] positions (attention's `Δ` over a head, say) takes one warp per output
//! instead, lane 0 storing the warp's fold. A thread issues the loads of [`IN_FLIGHT`]
//! positions before it folds them, in order. The order is fixed, so a result does not change
//! from run to run. Accumulation is in the expression's type
//! (f32, i32 or i64); float `max` propagates NaN.

use super::context::{Addressed, Ctx, Granule};
use super::expr::evaluate;
use super::map::per_block;
use super::THREADS;
use crate::error::{CompileError, Result};
use crate::ptx::{Cmp, Operand, Reg, Shuffle, Space, Special, Ty};
use kiln_backend_cpu::kernel::ExprNode;
use kiln_backend_cpu::view::{contiguous_strides, View};
use kiln_ir::op::ReduceOp;
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Reductions of at most this many positions take a warp per output instead of a block.
const SHORT: i64 = 256;
/// Positions whose loads a thread has in flight together as it folds (and, in `reduce_map`,
/// as it maps): a batch-1 RMSNorm is one block, whose time is the latency of its loads.
pub(super) const IN_FLIGHT: i64 = 8;

pub(super) fn identity(op: ReduceOp, dtype: DType) -> f64 {
    match (op, dtype) {
        (ReduceOp::Max, DType::F32) => f64::NEG_INFINITY,
        (ReduceOp::Max, DType::I32) => i32::MIN as f64,
        (ReduceOp::Max, _) => i64::MIN as f64,
        _ => 0.0,
    }
}

pub(super) fn combine(c: &mut Ctx, op: ReduceOp, a: Reg, b: Reg) -> Reg {
    match op {
        ReduceOp::Max => c.b.max(a, b),
        ReduceOp::Sum | ReduceOp::Mean => c.b.add(a, b),
    }
}

/// Folds the expression's value at one position (its leaves' `values`) into `acc`.
pub(super) fn fold_position(
    c: &mut Ctx,
    op: ReduceOp,
    expr: &[ExprNode],
    values: &[Reg],
    acc: Reg,
) -> Result<()> {
    let x = evaluate(c, expr, values)?;
    let next = combine(c, op, acc, x);
    c.b.assign(acc, next);
    Ok(())
}

/// The result of a fold over `count` positions: `total`, divided by `count` for a mean.
pub(super) fn finish(
    c: &mut Ctx,
    op: ReduceOp,
    count: &Poly,
    dtype: DType,
    total: Reg,
) -> Result<Reg> {
    if op != ReduceOp::Mean {
        return Ok(total);
    }
    let n = c.reg(count);
    let n = super::expr::convert(c, n, DType::I64, dtype)?;
    Ok(c.b.div(total, n))
}

/// `x` from the lane `lane ^ offset`, for 32- and 64-bit values.
fn shuffle_xor(c: &mut Ctx, x: Reg, offset: i64) -> Reg {
    if matches!(x.ty, Ty::S64 | Ty::U64 | Ty::F64) {
        let (lo, hi) = c.b.unpack(x);
        let lo = c.b.shfl(Shuffle::Xor, lo, offset);
        let hi = c.b.shfl(Shuffle::Xor, hi, offset);
        c.b.pack(x.ty, lo, hi)
    } else {
        c.b.shfl(Shuffle::Xor, x, offset)
    }
}

/// Folds `x` across the warp; every lane gets the result.
pub fn warp_fold(c: &mut Ctx, x: Reg, fold: impl Fn(&mut Ctx, Reg, Reg) -> Reg) -> Reg {
    let mut acc = x;
    for offset in [16, 8, 4, 2, 1] {
        let other = shuffle_xor(c, acc, offset);
        acc = fold(c, acc, other);
    }
    acc
}

/// A reduction's operands and shape, set up at the kernel's entry.
pub(super) struct Reduction<'a> {
    op: ReduceOp,
    expr: &'a [ExprNode],
    dtype: DType,
    ty: Ty,
    mem: &'static str,
    width: i64,
    leaves: Vec<Addressed>,
    kept: Vec<usize>,
    axes: &'a [usize],
    pub(super) kept_dims: Vec<Operand>,
    pub(super) red_dims: Vec<Operand>,
    count: Poly,
    /// Positions per output, and threads per block, as operands.
    pub(super) count_v: Operand,
    pub(super) threads: Operand,
    out_base: Reg,
}

impl<'a> Reduction<'a> {
    /// Refuses what the kernels cannot accumulate (anything but f32, i32 and i64).
    pub(super) fn new(
        c: &mut Ctx,
        op: ReduceOp,
        leaves: &[View],
        expr: &'a [ExprNode],
        axes: &'a [usize],
        out: &View,
    ) -> Result<Reduction<'a>> {
        let dtype = expr.last().expect("an expression has a result").dtype;
        if !matches!(dtype, DType::F32 | DType::I32 | DType::I64) {
            return Err(CompileError(format!(
                "{} of {dtype} values is not supported by the CUDA backend",
                op.name()
            )));
        }
        let rank = leaves[0].rank();
        let kept: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
        let count = Poly::product(axes.iter().map(|&a| &leaves[0].dims[a]));
        Ok(Reduction {
            op,
            expr,
            dtype,
            ty: super::dtype::reg_ty(dtype)?,
            mem: super::dtype::mem_name(dtype)?,
            width: super::dtype::elem_bytes(dtype)?,
            leaves: leaves.iter().map(|l| c.addressed(l)).collect(),
            kept_dims: kept.iter().map(|&a| c.value(&leaves[0].dims[a])).collect(),
            red_dims: axes.iter().map(|&a| c.value(&leaves[0].dims[a])).collect(),
            kept,
            axes,
            count_v: c.value(&count),
            count,
            threads: c.special(Special::Ntid).into(),
            out_base: c.buffer(out.buffer().expect("reductions write buffers")),
        })
    }

    /// Each thread's fold of output `o` (kept coordinates `coords`) over the positions
    /// `start, start + step, …`, then folded across its warp (every lane holds the result).
    fn fold(&self, c: &mut Ctx, coords: &[Reg], (start, step): (Reg, Operand)) -> Result<Reg> {
        let mut bases = Vec::new();
        for l in &self.leaves {
            let strides: Vec<_> = self.kept.iter().map(|&a| l.strides[a].clone()).collect();
            bases.push(c.linear(&l.offset, coords, &strides));
        }
        // A leaf whose reduced axes lie row-major from its base is read at `base + r`: no
        // coordinates for position `r`.
        let packed: Vec<bool> = self.leaves.iter().map(|l| self.packed(&l.view)).collect();
        let split = packed.iter().any(|p| !p);
        let acc = c.constant(identity(self.op, self.dtype), self.dtype)?;
        c.for_range_batched(
            start,
            self.count_v.clone(),
            step,
            IN_FLIGHT,
            |c, r| {
                let rc = if split {
                    c.unravel(r, &self.red_dims)
                } else {
                    Vec::new()
                };
                let mut values = Vec::new();
                for ((l, &base), &packed) in self.leaves.iter().zip(&bases).zip(&packed) {
                    let at = if packed {
                        c.b.add(base, r)
                    } else {
                        let strides: Vec<_> =
                            self.axes.iter().map(|&a| l.strides[a].clone()).collect();
                        c.linear(&base.into(), &rc, &strides)
                    };
                    values.push(c.load(l, at)?);
                }
                Ok(values)
            },
            |c, _, values| fold_position(c, self.op, self.expr, &values, acc),
        )?;
        Ok(warp_fold(c, acc, |c, a, b| combine(c, self.op, a, b)))
    }

    /// Whether `v`'s reduced axes lie row-major from an output's base (their strides those of
    /// a contiguous tensor of their extents), so position `r` is element `base + r`.
    fn packed(&self, v: &View) -> bool {
        let dims: Vec<Poly> = self.axes.iter().map(|&a| v.dims[a].clone()).collect();
        let strides: Vec<Poly> = self.axes.iter().map(|&a| v.strides[a].clone()).collect();
        strides == contiguous_strides(&dims)
    }

    /// Finishes output `o` from its total (a mean divided) and stores it; returns the value.
    fn store(&self, c: &mut Ctx, o: Reg, total: Reg) -> Result<Reg> {
        let total = finish(c, self.op, &self.count, self.dtype, total)?;
        c.store(self.out_base, o, self.dtype, total)?;
        Ok(total)
    }

    /// Shared memory [`Reduction::block`] needs: one value per warp, and the result.
    pub(super) fn block_shared(&self, c: &mut Ctx) -> Reg {
        c.b.shared(((THREADS / 32) as i64 * self.width + self.width) as u32)
    }

    /// Output `o` by the whole block: thread `tid` folds positions `tid, tid + threads, …`,
    /// lane 0 of each warp leaves its fold in `smem`, thread 0 folds the warps in order and
    /// stores, leaving the result after the warps' slots too. Ends with a barrier, after which
    /// every thread may read the result ([`Reduction::result`]).
    pub(super) fn block(
        &self,
        c: &mut Ctx,
        (o, coords): (Reg, &[Reg]),
        smem: Reg,
        (tid, lane, warp): (Reg, Reg, Reg),
    ) -> Result<()> {
        let folded = self.fold(c, coords, (tid, self.threads.clone()))?;
        let warps = (THREADS / 32) as i64;
        let slot = c.b.mad(warp, self.width, smem);
        let first_lane = c.b.setp(Cmp::Eq, lane, 0i64);
        c.when(first_lane, |c| {
            c.b.st(Space::Shared, self.mem, slot, 0, folded);
            Ok(())
        })?;
        c.b.bar_sync();
        let first = c.b.setp(Cmp::Eq, tid, 0i64);
        c.when(first, |c| {
            let mut total = c.b.ld(Space::Shared, self.mem, self.ty, smem, 0, false);
            for w in 1..warps {
                let x = c.b.ld(
                    Space::Shared,
                    self.mem,
                    self.ty,
                    smem,
                    w * self.width,
                    false,
                );
                total = combine(c, self.op, total, x);
            }
            let value = self.store(c, o, total)?;
            c.b.st(Space::Shared, self.mem, smem, warps * self.width, value);
            Ok(())
        })?;
        c.b.bar_sync();
        Ok(())
    }

    /// The result [`Reduction::block`] left in `smem`.
    pub(super) fn result(&self, c: &mut Ctx, smem: Reg) -> Reg {
        let at = (THREADS / 32) as i64 * self.width;
        c.b.ld(Space::Shared, self.mem, self.ty, smem, at, false)
    }
}

pub fn emit(
    c: &mut Ctx,
    op: ReduceOp,
    leaves: &[View],
    expr: &[ExprNode],
    axes: &[usize],
    out: &View,
) -> Result<Launch> {
    let dtype = expr.last().expect("an expression has a result").dtype;
    if super::reduce_columns::applies(leaves, axes)
        && matches!(dtype, DType::F32 | DType::I32 | DType::I64)
    {
        return super::reduce_columns::emit(c, op, leaves, expr, axes, out, dtype);
    }
    let red = Reduction::new(c, op, leaves, expr, axes, out)?;
    let outputs = out.numel();
    let outputs_v = c.value(&outputs);
    let short = matches!(red.count.as_constant(), Some(n) if n <= SHORT);
    let warps = (THREADS / 32) as i64;
    let smem = (!short).then(|| red.block_shared(c));
    let tid = c.special(Special::Tid);
    let lane = c.b.and(tid, 31i64);
    let warp = c.b.shr(tid, 5);
    let granule = if short { Granule::Warp } else { Granule::Block };
    c.grid_loop(outputs_v, granule, |c, o| {
        let coords = c.unravel(o, &red.kept_dims);
        match smem {
            Some(smem) => red.block(c, (o, &coords), smem, (tid, lane, warp)),
            None => {
                let folded = red.fold(c, &coords, (lane, Operand::Int(32)))?;
                let first_lane = c.b.setp(Cmp::Eq, lane, 0i64);
                c.when(first_lane, |c| red.store(c, o, folded).map(|_| ()))
            }
        }
    })?;
    if short {
        return Ok(Launch {
            blocks: vec![WorkFactor {
                extent: outputs,
                tile: warps as u64,
            }],
            threads: THREADS,
            shared_bytes: 0,
            buffers: Vec::new(),
        });
    }
    Ok(per_block(outputs, THREADS, c.b.shared_bytes()))
}
