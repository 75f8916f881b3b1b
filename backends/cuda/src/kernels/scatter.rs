//! Scatter kernels (`Kernel::Scatter`): `out[pre, indices[i..], post] (+)= updates[pre, i.., post]`
//! into an `out` that already holds the data scattered into (a copy kernel wrote it).
//!
//! One thread per `(pre row, post column)` walks every index in order, so repeated indices
//! accumulate (or, replacing, the last one wins) and no two threads write one element: no
//! atomics, and the result is deterministic. `out` is read back with coherent loads (this kernel
//! writes it). Indices are clamped into `[0, len)`; an empty scattered axis writes nothing.
//! `out` and `updates` are contiguous (the lowering's contract).

use super::context::{Ctx, Granule};
use super::dtype::{mem_name, reg_ty};
use crate::error::{CompileError, Result};
use crate::ptx::{Cmp, Space, Ty};
use kiln_backend_cpu::view::View;
use kiln_ir::{DType, ScatterMode};
use kiln_runtime::manifest::Launch;
use kiln_runtime::Poly;

pub fn emit(
    c: &mut Ctx,
    indices: &View,
    updates: &View,
    axis: usize,
    mode: ScatterMode,
    out: &View,
) -> Result<Launch> {
    let dtype = out.dtype;
    if mode == ScatterMode::Add && dtype == DType::Bool {
        return Err(CompileError(
            "scatter_add of bool values has no CUDA kernel".into(),
        ));
    }
    let pre = Poly::product(&out.dims[..axis]);
    let post = Poly::product(&out.dims[axis + 1..]);
    let total = pre.mul(&post);
    let count = c.value(&total);
    let (pre_v, post_v) = (c.value(&pre), c.value(&post));
    let n = c.value(&indices.numel());
    let len = c.reg(&out.dims[axis]);
    let index_dims: Vec<_> = indices.dims.iter().map(|d| c.value(d)).collect();
    let ix = c.addressed(indices);
    let u = c.addressed(updates);
    let o = c.addressed(out);
    let o_base = o.base.expect("scatter writes a buffer");
    let (ty, mem) = (reg_ty(dtype)?, mem_name(dtype)?);
    let last = c.b.sub(len, 1i64);
    let empty = c.b.setp(Cmp::Le, len, 0i64);
    c.grid_loop(count, Granule::Thread, |c, t| {
        let rc = c.unravel(t, &[pre_v.clone(), post_v.clone()]);
        let (row, col) = (rc[0], rc[1]);
        let write = c.b.not(empty);
        c.when(write, |c| {
            c.for_range(0i64, n.clone(), 1i64, |c, i| {
                let coords = c.unravel(i, &index_dims);
                let at = c.linear(&ix.offset, &coords, &ix.strides);
                let raw = c.load(&ix, at)?;
                let index = match reg_ty(indices.dtype)? {
                    Ty::S64 => raw,
                    _ => super::expr::convert(c, raw, indices.dtype, DType::I64)?,
                };
                let index = c.b.max(index, 0i64);
                let index = c.b.min(index, last);
                let o_row = c.b.mad(row, len, index);
                let o_at = c.b.mad(o_row, post_v.clone(), col);
                let u_row = c.b.mad(row, n.clone(), i);
                let u_at = c.b.mad(u_row, post_v.clone(), col);
                let update = c.load(&u, u_at)?;
                let value = match mode {
                    ScatterMode::Replace => update,
                    ScatterMode::Add => {
                        let addr = c.address(o_base, o_at, dtype)?;
                        let old = c.b.ld(Space::Global, mem, ty, addr, 0, false);
                        c.b.add(old, update)
                    }
                };
                c.store(o_base, o_at, dtype, value)
            })
        })
    })?;
    Ok(super::one_thread_each(total))
}
