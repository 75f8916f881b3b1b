//! Reduction kernels (`Kernel::Reduce`): sum, max or mean of an elementwise expression over any
//! set of axes, into a contiguous output keeping the reduced axes at size 1. Reductions that
//! keep the innermost axis take the form of `reduce_columns.rs`; the others, this one.
//!
//! One block per output element (by grid stride over the outputs): each thread folds the
//! reduced positions `tid, tid + threads, …` (split into coordinates of the reduced axes), the
//! warp folds its lanes by butterfly shuffles, lane 0 of each warp leaves its value in shared
//! memory, and thread 0 folds the warps in order, divides for a mean, and stores. A reduction
//! of at most [`SHORT`] positions (attention's `Δ` over a head, say) takes one warp per output
//! instead, lane 0 storing the warp's fold. The order is
//! fixed, so a result does not change from run to run. Accumulation is in the expression's type
//! (f32, i32 or i64); float `max` propagates NaN.

use super::context::{Ctx, Granule};
use super::expr::evaluate;
use super::map::per_block;
use super::THREADS;
use crate::error::{CompileError, Result};
use crate::ptx::{Cmp, Operand, Reg, Shuffle, Space, Special, Ty};
use kiln_backend_cpu::kernel::ExprNode;
use kiln_backend_cpu::view::View;
use kiln_ir::op::ReduceOp;
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// Reductions of at most this many positions take a warp per output instead of a block.
const SHORT: i64 = 256;

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

pub fn emit(
    c: &mut Ctx,
    op: ReduceOp,
    leaves: &[View],
    expr: &[ExprNode],
    axes: &[usize],
    out: &View,
) -> Result<Launch> {
    let dtype = expr.last().expect("an expression has a result").dtype;
    if !matches!(dtype, DType::F32 | DType::I32 | DType::I64) {
        return Err(CompileError(format!(
            "{} of {dtype} values is not supported by the CUDA backend",
            op.name()
        )));
    }
    if super::reduce_columns::applies(leaves, axes) {
        return super::reduce_columns::emit(c, op, leaves, expr, axes, out, dtype);
    }
    let ty = super::dtype::reg_ty(dtype)?;
    let rank = leaves[0].rank();
    let kept: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
    let kept_dims: Vec<_> = kept.iter().map(|&a| c.value(&leaves[0].dims[a])).collect();
    let red_dims: Vec<_> = axes.iter().map(|&a| c.value(&leaves[0].dims[a])).collect();
    let count = Poly::product(axes.iter().map(|&a| &leaves[0].dims[a]));
    let count_v = c.value(&count);
    let outputs = out.numel();
    let outputs_v = c.value(&outputs);
    let ls: Vec<_> = leaves.iter().map(|l| c.addressed(l)).collect();
    let out_base = c.buffer(out.buffer().expect("reductions write buffers"));
    let short = matches!(count.as_constant(), Some(n) if n <= SHORT);
    let warps = (THREADS / 32) as i64;
    let width = super::dtype::elem_bytes(dtype)?;
    let smem = if short {
        None
    } else {
        Some(c.b.shared((warps * width) as u32))
    };
    let tid = c.special(Special::Tid);
    let lane = c.b.and(tid, 31i64);
    let warp = c.b.shr(tid, 5);
    let mem = super::dtype::mem_name(dtype)?;
    let (granule, start, step) = match short {
        true => (Granule::Warp, lane, Operand::Int(32)),
        false => (Granule::Block, tid, c.special(Special::Ntid).into()),
    };
    c.grid_loop(outputs_v, granule, |c, o| {
        let coords = c.unravel(o, &kept_dims);
        let mut bases = Vec::new();
        for l in &ls {
            let strides: Vec<_> = kept.iter().map(|&a| l.strides[a].clone()).collect();
            bases.push(c.linear(&l.offset, &coords, &strides));
        }
        let acc = c.constant(identity(op, dtype), dtype)?;
        c.for_range(start, count_v.clone(), step.clone(), |c, r| {
            let rc = c.unravel(r, &red_dims);
            let mut values = Vec::new();
            for (l, base) in ls.iter().zip(&bases) {
                let strides: Vec<_> = axes.iter().map(|&a| l.strides[a].clone()).collect();
                let at = c.linear(&(*base).into(), &rc, &strides);
                values.push(c.load(l, at)?);
            }
            fold_position(c, op, expr, &values, acc)
        })?;
        let folded = warp_fold(c, acc, |c, a, b| combine(c, op, a, b));
        let store = |c: &mut Ctx, total: Reg| -> Result<()> {
            let total = finish(c, op, &count, dtype, total)?;
            c.store(out_base, o, dtype, total)
        };
        let first_lane = c.b.setp(Cmp::Eq, lane, 0i64);
        let Some(smem) = smem else {
            return c.when(first_lane, |c| store(c, folded));
        };
        let slot = c.b.mad(warp, width, smem);
        c.when(first_lane, |c| {
            c.b.st(Space::Shared, mem, slot, 0, folded);
            Ok(())
        })?;
        c.b.bar_sync();
        let first = c.b.setp(Cmp::Eq, tid, 0i64);
        c.when(first, |c| {
            let mut total = c.b.ld(Space::Shared, mem, ty, smem, 0, false);
            for w in 1..warps {
                let x = c.b.ld(Space::Shared, mem, ty, smem, w * width, false);
                total = combine(c, op, total, x);
            }
            store(c, total)
        })?;
        // The next output's partial sums reuse the slots.
        c.b.bar_sync();
        Ok(())
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
