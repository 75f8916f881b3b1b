//! Gather kernels (`Kernel::Gather`): `out[pre, i.., post] = data[pre, indices[i..], post]`,
//! one thread per output element by grid stride (an embedding row is read by consecutive
//! threads, so the copy is coalesced).
//!
//! Indices are clamped into `[0, len)`, so no input makes a kernel read outside `data`; when
//! `len` is 0 there is nothing to read and the output is zeros. Elements are copied as bits.

use super::context::{Ctx, Granule};
use super::dtype::{elem_bytes, reg_ty};
use crate::error::Result;
use crate::ptx::{Cmp, Space, Ty};
use kiln_backend_cpu::view::View;
use kiln_ir::DType;
use kiln_runtime::manifest::Launch;

pub fn emit(c: &mut Ctx, data: &View, indices: &View, axis: usize, out: &View) -> Result<Launch> {
    let (p, q) = (axis, indices.rank());
    let dims: Vec<_> = out.dims.iter().map(|d| c.value(d)).collect();
    let total = out.numel();
    let count = c.value(&total);
    let len = c.reg(&data.dims[axis]);
    let d = c.addressed(data);
    let ix = c.addressed(indices);
    let o = c.addressed(out);
    let (d_base, o_base) = (d.base.expect("data is a buffer"), o.base.expect("a buffer"));
    let bytes = elem_bytes(data.dtype)?;
    // Elements move as bits of their width.
    let (mem, ty) = match bytes {
        1 => ("u8", Ty::U32),
        2 => ("b16", Ty::B16),
        4 => ("b32", Ty::U32),
        _ => ("b64", Ty::U64),
    };
    let last = c.b.sub(len, 1i64);
    let empty = c.b.setp(Cmp::Le, len, 0i64);
    c.grid_loop(count, Granule::Thread, |c, i| {
        let coords = c.unravel(i, &dims);
        let to = c.linear(&o.offset, &coords, &o.strides);
        let to = c.address(o_base, to, out.dtype)?;
        let zero = c.b.mov(ty, 0i64);
        let value = c.b.mov(ty, zero);
        let read = c.b.not(empty);
        c.when(read, |c| {
            let at = c.linear(&ix.offset, &coords[p..p + q], &ix.strides);
            let raw = c.load(&ix, at)?;
            let index = match reg_ty(indices.dtype)? {
                Ty::S64 => raw,
                _ => super::expr::convert(c, raw, indices.dtype, DType::I64)?,
            };
            let index = c.b.max(index, 0i64);
            let index = c.b.min(index, last);
            let from = c.linear(&d.offset, &coords[..p], &d.strides[..p]);
            let from = c.b.mad(index, d.strides[p].clone(), from);
            let from = c.linear(&from.into(), &coords[p + q..], &d.strides[p + 1..]);
            let from = c.address(d_base, from, data.dtype)?;
            let v = c.b.ld(Space::Global, mem, ty, from, 0, true);
            c.b.assign(value, v);
            Ok(())
        })?;
        c.b.st(Space::Global, mem, to, 0, value);
        Ok(())
    })?;
    Ok(super::one_thread_each(total))
}
