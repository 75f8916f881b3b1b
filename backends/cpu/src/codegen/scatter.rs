//! Scatter kernels (`Kernel::Scatter`): `out[pre, indices[i..], post] (+)= updates[pre, i.., post]`
//! into an `out` that already holds the data scattered into.
//!
//! A work item is one `pre` row and a tile of `SCATTER_TILE` columns of the flattened `post`
//! axes; it walks every index in order, so repeated indices accumulate (or, replacing, the last
//! one wins) and no two items write one element. Columns go four `f32` lanes at a time when the
//! element type is `f32`. Indices are clamped into `[0, len)` like gather's; an empty scattered
//! axis leaves nothing to write.

use super::builder::{scalar_type, KernelFn};
use super::gather::{read_index, strided};
use super::matmul::{ceil_div, tile_end};
use crate::kernel::SCATTER_TILE;
use crate::view::View;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Type, Value};
use kiln_ir::{DType, ScatterMode};
use kiln_runtime::Poly;

pub fn emit(
    f: &mut KernelFn,
    indices: &View,
    updates: &View,
    axis: usize,
    mode: ScatterMode,
    out: &View,
) {
    let post = f.poly(&Poly::product(&out.dims[axis + 1..]));
    let len = f.poly(&out.dims[axis]);
    let count = f.poly(&indices.numel());
    let index_dims = f.polys(&indices.dims);
    let ix = strided(f, indices);
    let out_ptr = f.buffer(out.buffer().expect("scatter writes a buffer"));
    let upd_ptr = f.buffer(updates.buffer().expect("scatter updates are a buffer"));
    let dtype = out.dtype;
    let tiles = ceil_div(f, post, SCATTER_TILE);
    let (start, end) = (f.start, f.end);
    let empty = f.b.ins().icmp_imm_s(IntCC::Equal, len, 0);
    let (work, done) = (f.b.create_block(), f.b.create_block());
    f.b.ins().brif(empty, done, &[], work, &[]);
    f.b.switch_to_block(work);
    f.for_loop(start, end, 1, |f, item| {
        let tile = f.b.ins().urem(item, tiles);
        let row = f.b.ins().udiv(item, tiles);
        let c0 = f.b.ins().imul_imm_s(tile, SCATTER_TILE);
        let c1 = tile_end(f, c0, SCATTER_TILE, post);
        let zero = f.iconst(0);
        f.for_loop(zero, count, 1, |f, i| {
            let coords = f.unravel(i, &index_dims);
            let at = f.linear(ix.offset, &coords, &ix.strides);
            let j = read_index(f, &ix, indices.dtype, at, len);
            let out_row = f.b.ins().imul(row, len);
            let out_row = f.b.ins().iadd(out_row, j);
            let out_row = f.b.ins().imul(out_row, post);
            let upd_row = f.b.ins().imul(row, count);
            let upd_row = f.b.ins().iadd(upd_row, i);
            let upd_row = f.b.ins().imul(upd_row, post);
            let column = |f: &mut KernelFn, c: Value, ty: Type| {
                let from = f.b.ins().iadd(upd_row, c);
                let from = f.address(upd_ptr, from, dtype);
                let update = f.load(ty, from);
                let to = f.b.ins().iadd(out_row, c);
                let to = f.address(out_ptr, to, dtype);
                let value = match mode {
                    ScatterMode::Replace => update,
                    ScatterMode::Add => {
                        let old = f.load_written(ty, to);
                        if ty == types::I8 {
                            // bools: `scatter_add` is `or`.
                            f.b.ins().bor(old, update)
                        } else if ty.is_int() {
                            f.b.ins().iadd(old, update)
                        } else {
                            f.b.ins().fadd(old, update)
                        }
                    }
                };
                f.store(value, to);
            };
            let tail = if dtype == DType::F32 {
                f.for_loop(c0, c1, 4, |f, c| column(f, c, types::F32X4))
            } else {
                c0
            };
            f.for_loop(tail, c1, 1, |f, c| column(f, c, scalar_type(dtype)));
        });
    });
    f.b.ins().jump(done, &[]);
    f.b.switch_to_block(done);
}
