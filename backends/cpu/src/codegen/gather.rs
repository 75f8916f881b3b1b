//! Gather kernels (`Kernel::Gather`): `out[pre, i.., post] = data[pre, indices[i..], post]`.
//!
//! Work items are output rows. When axes follow the gathered one (an embedding lookup), a row
//! reads one index and copies a strided run of `data` (four `f32` lanes at a time when the run
//! is unit-stride); otherwise every element of the row reads its own index. Indices are clamped
//! into `[0, len)` so no input can make a kernel read outside `data` (when `len` is 0 there is
//! nothing to read and the rows are zeros); the runtime rejects out-of-range token ids before
//! they get here.

use super::builder::{scalar_type, KernelFn};
use super::math;
use crate::view::View;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Value};
use kiln_ir::DType;

pub(super) struct Strided {
    pub ptr: Value,
    pub offset: Value,
    pub strides: Vec<Value>,
}

pub(super) fn strided(f: &mut KernelFn, v: &View) -> Strided {
    Strided {
        ptr: f.buffer(v.buffer().expect("gather operands are buffers")),
        offset: f.poly(&v.offset),
        strides: f.polys(&v.strides),
    }
}

/// Loads the index at linear position `at` of `indices`, clamped into `[0, len)`.
pub(super) fn read_index(
    f: &mut KernelFn,
    indices: &Strided,
    dtype: DType,
    at: Value,
    len: Value,
) -> Value {
    let addr = f.address(indices.ptr, at, dtype);
    let raw = f.load(scalar_type(dtype), addr);
    let wide = if dtype == DType::I64 {
        raw
    } else {
        f.b.ins().sextend(types::I64, raw)
    };
    let zero = f.iconst(0);
    let last = f.b.ins().iadd_imm_s(len, -1);
    let low = f.b.ins().smax(wide, zero);
    f.b.ins().smin(low, last)
}

pub fn emit(f: &mut KernelFn, data: &View, indices: &View, axis: usize, out: &View) {
    let (p, q) = (axis, indices.rank());
    let post = data.rank() - axis - 1;
    let r = out.rank();
    let out_dims = f.polys(&out.dims);
    let len = f.poly(&data.dims[axis]);
    let d = strided(f, data);
    let ix = strided(f, indices);
    let out_ptr = f.buffer(out.buffer().expect("gather writes a buffer"));
    let dtype = data.dtype;
    let ty = scalar_type(dtype);
    let vector = post > 0 && dtype == DType::F32 && data.strides[data.rank() - 1].is_constant(1);
    let (start, end) = (f.start, f.end);
    let inner = out_dims[r - 1];
    // An empty gathered axis has no element to read: the rows are zeros.
    let empty = f.b.ins().icmp_imm_s(IntCC::Equal, len, 0);
    let (zeros, gather, done) = (f.b.create_block(), f.b.create_block(), f.b.create_block());
    f.b.ins().brif(empty, zeros, &[], gather, &[]);
    f.b.switch_to_block(zeros);
    let first = f.b.ins().imul(start, inner);
    let last = f.b.ins().imul(end, inner);
    f.for_loop(first, last, 1, |f, i| {
        let zero = math::constant(f, 0.0, dtype, false);
        let to = f.address(out_ptr, i, dtype);
        f.store(zero, to);
    });
    f.b.ins().jump(done, &[]);
    f.b.switch_to_block(gather);
    f.for_loop(start, end, 1, |f, row| {
        let coords = f.unravel(row, &out_dims[..r - 1]);
        let out_row = f.b.ins().imul(row, inner);
        let zero = f.iconst(0);
        let pre = f.linear(d.offset, &coords[..p], &d.strides[..p]);
        if post > 0 {
            let at = f.linear(ix.offset, &coords[p..p + q], &ix.strides);
            let index = read_index(f, &ix, indices.dtype, at, len);
            let base = f.linear(pre, &[index], &d.strides[p..p + 1]);
            let base = f.linear(base, &coords[p + q..], &d.strides[p + 1..data.rank() - 1]);
            let step = d.strides[data.rank() - 1];
            let tail = if vector {
                f.for_loop(zero, inner, 4, |f, j| {
                    let from = f.b.ins().iadd(base, j);
                    let from = f.address(d.ptr, from, dtype);
                    let v = f.load(types::F32X4, from);
                    let to = f.b.ins().iadd(out_row, j);
                    let to = f.address(out_ptr, to, dtype);
                    f.store(v, to);
                })
            } else {
                zero
            };
            f.for_loop(tail, inner, 1, |f, j| {
                let from = f.linear(base, &[j], &[step]);
                let from = f.address(d.ptr, from, dtype);
                let v = f.load(ty, from);
                let to = f.b.ins().iadd(out_row, j);
                let to = f.address(out_ptr, to, dtype);
                f.store(v, to);
            });
        } else {
            let row_at = f.linear(ix.offset, &coords[p..], &ix.strides[..q - 1]);
            f.for_loop(zero, inner, 1, |f, j| {
                let at = f.linear(row_at, &[j], &ix.strides[q - 1..]);
                let index = read_index(f, &ix, indices.dtype, at, len);
                let from = f.linear(pre, &[index], &d.strides[p..p + 1]);
                let from = f.address(d.ptr, from, dtype);
                let v = f.load(ty, from);
                let to = f.b.ins().iadd(out_row, j);
                let to = f.address(out_ptr, to, dtype);
                f.store(v, to);
            });
        }
    });
    f.b.ins().jump(done, &[]);
    f.b.switch_to_block(done);
}
