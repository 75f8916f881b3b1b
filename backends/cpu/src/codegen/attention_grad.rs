//! Attention-gradient kernels (`Kernel::AttentionGrad`): the backward of `flash_attention`,
//! recomputing each probability `p = e^(scale·q·k − lse)` from the saved log-sum-exp instead of
//! reading a stored `S×T` matrix.
//!
//! With `Δᵢ = Σ d_outᵢ·outᵢ` (a reduction run before) and `dsᵢⱼ = pᵢⱼ·(d_outᵢ·vⱼ − Δᵢ)·scale`:
//! - by the queries, a work item is a tile of queries of one head; per query it walks its
//!   visible keys and accumulates `dqᵢ += dsᵢⱼ·kⱼ`;
//! - by the keys (values), a work item is a tile of keys of one key/value head; per key it walks
//!   every query of the heads that share it, skips those that do not see the key, and
//!   accumulates `dkⱼ += dsᵢⱼ·qᵢ` (`dvⱼ += pᵢⱼ·d_outᵢ`).
//!
//! Items write disjoint rows, so none needs atomics. Dot products and row updates run four
//! `f32` lanes at a time over the constant head sizes; each row's accumulator is a stack slot.

use super::attention::{dot, offset, row_update, slot};
use super::builder::{flags, KernelFn};
use super::math;
use super::matmul::{ceil_div, tile_end};
use super::visibility::Visibility;
use crate::kernel::AttentionGradKernel;
use crate::view::View;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Value};
use kiln_ir::{AttentionInput, DType};

/// A view's element address and its first three strides in bytes.
struct Rows {
    base: Value,
    strides: [Value; 3],
}

fn rows(f: &mut KernelFn, v: &View) -> Rows {
    let ptr = f.buffer(v.buffer().expect("attention operands are buffers"));
    let off = f.poly(&v.offset);
    let base = f.address(ptr, off, DType::F32);
    let s = f.polys(&v.strides[..3]);
    let strides = [0, 1, 2].map(|i| f.b.ins().imul_imm_s(s[i], 4));
    Rows { base, strides }
}

impl Rows {
    /// The address of row `i` of head `h` of batch element `b`.
    fn row(&self, f: &mut KernelFn, b: Value, h: Value, i: Value) -> Value {
        let at = offset(f, self.base, b, self.strides[0]);
        let at = offset(f, at, h, self.strides[1]);
        offset(f, at, i, self.strides[2])
    }
}

pub fn emit(f: &mut KernelFn, kernel: &AttentionGradKernel) {
    assert!(
        kernel.d_values.is_none(),
        "the CPU lowering writes one attention gradient per kernel"
    );
    let a = kernel;
    let d = a.q.dims[3]
        .as_constant()
        .expect("lowering checks head sizes");
    let dv = a.v.dims[3]
        .as_constant()
        .expect("lowering checks head sizes");
    let q_dims = f.polys(&a.q.dims);
    let (heads, seq) = (q_dims[1], q_dims[2]);
    let k_dims = f.polys(&a.k.dims);
    let (kv_heads, keys) = (k_dims[1], k_dims[2]);
    let [q, k, v, d_out, lse, delta, out] =
        [&a.q, &a.k, &a.v, &a.d_out, &a.lse, &a.delta, &a.out].map(|view| rows(f, view));
    let visibility = Visibility::new(
        f,
        &a.attention,
        a.positions.as_ref(),
        a.padding.as_ref(),
        keys,
    );
    // The visible keys of query `i` of batch element `b`.
    let run = |f: &mut KernelFn, b: Value, i: Value| visibility.run(f, b, i);
    let scale = f.b.ins().f32const(a.attention.scale as f32);
    // p and ds of query i (head h) and key j (kv head kv) of batch element b.
    let probability = |f: &mut KernelFn, b: Value, h: Value, kv: Value, i: Value, j: Value| {
        let q_row = q.row(f, b, h, i);
        let k_row = k.row(f, b, kv, j);
        let s = dot(f, q_row, k_row, d);
        let s = f.b.ins().fmul(s, scale);
        let at = lse.row(f, b, h, i);
        let l = f.b.ins().load(types::F32, flags(), at, 0);
        let x = f.b.ins().fsub(s, l);
        math::exp(f, x)
    };
    let score_grad = |f: &mut KernelFn, p: Value, b: Value, h: Value, kv: Value, i, j| {
        let o_row = d_out.row(f, b, h, i);
        let v_row = v.row(f, b, kv, j);
        let dp = dot(f, o_row, v_row, dv);
        let at = delta.row(f, b, h, i);
        let dl = f.b.ins().load(types::F32, flags(), at, 0);
        let x = f.b.ins().fsub(dp, dl);
        let x = f.b.ins().fmul(p, x);
        f.b.ins().fmul(x, scale)
    };
    let group = a.attention.group as i64;
    let width = if a.wrt == AttentionInput::Values {
        dv
    } else {
        d
    };
    let acc = slot(f, 4 * width);
    let clear = |f: &mut KernelFn| {
        let zero = f.b.ins().f32const(0.0);
        let zero4 = f.b.ins().splat(types::F32X4, zero);
        row_update(
            f,
            acc,
            width,
            |_, _, _, lanes| if lanes == 4 { zero4 } else { zero },
        );
    };
    // acc += weight · row
    let add_row = |f: &mut KernelFn, weight: Value, row: Value| {
        let weight4 = f.b.ins().splat(types::F32X4, weight);
        row_update(f, acc, width, |f, old, c, lanes| {
            let w = if lanes == 4 { weight4 } else { weight };
            let ty = if lanes == 4 { types::F32X4 } else { types::F32 };
            let x = f.load_at(ty, row, (4 * c) as i32);
            f.b.ins().fma(w, x, old)
        });
    };
    let store_acc = |f: &mut KernelFn, to: Value| {
        row_update(f, acc, width, |f, value, c, _| {
            f.b.ins().store(flags(), value, to, (4 * c) as i32);
            value
        });
    };
    let (start, end) = (f.start, f.end);
    if a.wrt == AttentionInput::Queries {
        let tile_q = a.attention.tile_q as i64;
        let tiles = ceil_div(f, seq, tile_q);
        f.for_loop(start, end, 1, |f, w| {
            let (b, h, i0, i1) = item(f, w, (tiles, tile_q, seq), heads);
            let kv = f.b.ins().udiv_imm_s(h, group);
            f.for_loop(i0, i1, 1, |f, i| {
                clear(f);
                let (lo, hi) = run(f, b, i);
                f.for_loop(lo, hi, 1, |f, j| {
                    let p = probability(f, b, h, kv, i, j);
                    let ds = score_grad(f, p, b, h, kv, i, j);
                    let k_row = k.row(f, b, kv, j);
                    add_row(f, ds, k_row);
                });
                let to = out.row(f, b, h, i);
                store_acc(f, to);
            });
        });
        return;
    }
    let tile_k = a.attention.tile_k as i64;
    let tiles = ceil_div(f, keys, tile_k);
    f.for_loop(start, end, 1, |f, w| {
        let (b, kv, j0, j1) = item(f, w, (tiles, tile_k, keys), kv_heads);
        f.for_loop(j0, j1, 1, |f, j| {
            clear(f);
            let first = f.b.ins().imul_imm_s(kv, group);
            let last = f.b.ins().iadd_imm_s(first, group);
            f.for_loop(first, last, 1, |f, h| {
                let zero = f.iconst(0);
                f.for_loop(zero, seq, 1, |f, i| {
                    let (lo, hi) = run(f, b, i);
                    let after = f.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, j, lo);
                    let before = f.b.ins().icmp(IntCC::SignedLessThan, j, hi);
                    let sees = f.b.ins().band(after, before);
                    let (body, join) = (f.b.create_block(), f.b.create_block());
                    f.b.ins().brif(sees, body, &[], join, &[]);
                    f.b.switch_to_block(body);
                    let p = probability(f, b, h, kv, i, j);
                    if a.wrt == AttentionInput::Values {
                        let o_row = d_out.row(f, b, h, i);
                        add_row(f, p, o_row);
                    } else {
                        let ds = score_grad(f, p, b, h, kv, i, j);
                        let q_row = q.row(f, b, h, i);
                        add_row(f, ds, q_row);
                    }
                    f.b.ins().jump(join, &[]);
                    f.b.switch_to_block(join);
                });
            });
            let to = out.row(f, b, kv, j);
            store_acc(f, to);
        });
    });
}

/// Work item `w` as `(batch element, head, first row, end of rows)`, for items numbered
/// batch-major, then head, then tile of `tile` rows out of `len` (`tiles` per head).
fn item(
    f: &mut KernelFn,
    w: Value,
    (tiles, tile, len): (Value, i64, Value),
    heads: Value,
) -> (Value, Value, Value, Value) {
    let t = f.b.ins().urem(w, tiles);
    let bh = f.b.ins().udiv(w, tiles);
    let head = f.b.ins().urem(bh, heads);
    let b = f.b.ins().udiv(bh, heads);
    let first = f.b.ins().imul_imm_s(t, tile);
    let end = tile_end(f, first, tile, len);
    (b, head, first, end)
}
