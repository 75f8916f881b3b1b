//! Which keys a query of a fused attention sees, for the attention kernels and their gradients:
//! one run `lo..hi` per query, from its position (unless the mask is `none`) and its row's
//! padding (under `padding=left`), by the bounds of `kiln_ir::Attention::visible_keys`.
//!
//! Positions and padding are integer buffers (`i32` or `i64`, widened to `i64` on load); a
//! missing one reads as position 0 / padding 0.

use super::attention::{dtype_size, load_indexed, offset};
use super::builder::{scalar_type, KernelFn};
use crate::view::View;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use kiln_ir::{Attention, AttentionMask, DType};

/// An integer operand: its element address, strides (in elements) and type.
struct Ints {
    base: Value,
    strides: Vec<Value>,
    dtype: DType,
}

impl Ints {
    fn of(f: &mut KernelFn, view: &View) -> Ints {
        let ptr = f.buffer(view.buffer().expect("positions and padding are buffers"));
        let off = f.poly(&view.offset);
        Ints {
            base: f.address(ptr, off, view.dtype),
            strides: f.polys(&view.strides),
            dtype: view.dtype,
        }
    }

    /// The element at `index` (one index per axis), as an `i64`.
    fn load(&self, f: &mut KernelFn, index: &[Value]) -> Value {
        let zero = f.iconst(0);
        let at = index
            .iter()
            .zip(&self.strides)
            .fold(zero, |at, (&i, &stride)| offset(f, at, i, stride));
        let raw = load_indexed(
            f,
            scalar_type(self.dtype),
            self.base,
            at,
            dtype_size(self.dtype),
        );
        match self.dtype {
            DType::I32 => f.b.ins().sextend(types::I64, raw),
            _ => raw,
        }
    }
}

/// The mask's inputs, set up once per kernel.
pub(super) struct Visibility<'a> {
    attention: &'a Attention,
    positions: Option<Ints>,
    padding: Option<Ints>,
    keys: Value,
}

impl<'a> Visibility<'a> {
    pub fn new(
        f: &mut KernelFn,
        attention: &'a Attention,
        positions: Option<&View>,
        padding: Option<&View>,
        keys: Value,
    ) -> Visibility<'a> {
        Visibility {
            attention,
            positions: positions.map(|p| Ints::of(f, p)),
            padding: padding.map(|p| Ints::of(f, p)),
            keys,
        }
    }

    /// The keys `lo..hi` query `i` of batch element `b` sees.
    pub fn run(&self, f: &mut KernelFn, b: Value, i: Value) -> (Value, Value) {
        let position = match &self.positions {
            Some(p) => p.load(f, &[b, i]),
            None => f.iconst(0),
        };
        let padding = match &self.padding {
            Some(p) => p.load(f, &[b]),
            None => f.iconst(0),
        };
        visible(f, self.attention.mask, position, padding, self.keys)
    }
}

/// The keys `lo..hi` of a query at position `p` in a row padded by `pad` keys.
fn visible(
    f: &mut KernelFn,
    mask: AttentionMask,
    p: Value,
    pad: Value,
    keys: Value,
) -> (Value, Value) {
    let zero = f.iconst(0);
    // The key at position `x`, clamped to the keys.
    let key = |f: &mut KernelFn, x: Value| {
        let j = f.b.ins().iadd(x, pad);
        let j = f.b.ins().smax(j, zero);
        f.b.ins().smin(j, keys)
    };
    let next = f.b.ins().iadd_imm_s(p, 1);
    let first = key(f, zero);
    match mask {
        AttentionMask::None => (first, keys),
        AttentionMask::Causal => (first, key(f, next)),
        AttentionMask::Window(w) => {
            let lowest = f.b.ins().iadd_imm_s(p, 1 - w as i64);
            let lowest = f.b.ins().smax(lowest, zero);
            (key(f, lowest), key(f, next))
        }
        AttentionMask::Prefix(n) => {
            let n = f.iconst(n as i64);
            let end = f.b.ins().smax(next, n);
            (first, key(f, end))
        }
    }
}
