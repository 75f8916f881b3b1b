//! Fused attention kernels (`Kernel::Attention`): tiled online softmax, never holding more than
//! one tile of scores.
//!
//! A work item is a tile of `tile_q` queries of one batch element `b` and head `h`; it reads the
//! shared key/value head `h / group`. For each query the mask gives one run of visible keys
//! `lo..hi` (`kiln_ir::Attention::visible_keys`, computed by `visibility.rs`); the
//! item walks the union of its queries' runs in tiles of `tile_k` keys and, per query, only the
//! keys that query sees (hidden keys are skipped, not computed and masked). Per query and key
//! tile:
//! 1. scores `scale · q·kⱼ` into a stack slot of `tile_k` floats (4-lane FMA dot products over
//!    the constant head size), and their maximum;
//! 2. the running maximum `m` moves to `m' = max(m, tile max)`; the running sum `l` and the
//!    accumulator row (`Dv` floats in a stack slot) are rescaled by `e^(m − m')`;
//! 3. `pⱼ = e^(sⱼ − m')` four lanes at a time (kiln's vector `exp`), added to `l`, and
//!    `acc += pⱼ · vⱼ` in 4-lane FMAs.
//!
//! At the end each output row is `acc / l`; a query that sees no key gets `0 · ∞ = NaN`, as the
//! unfused softmax does. Writing the log-sum-exp instead (`AttentionOutput::LogSumExp`, for the
//! backward) skips the values: each row's result is `m + log l`. Scratch (per query: `m`, `l`, `lo`, `hi`, the accumulator row; one
//! tile of scores) lives in stack slots, so memory does not grow with the sequence. Scratch is
//! read and written with ordinary (not read-only) memory flags; operands are only read.

use super::builder::{flags, KernelFn, PTR};
use super::math;
use super::matmul::{ceil_div, fma_into, lane_sum, tile_end, zero_var};
use super::visibility::Visibility;
use crate::kernel::{AttentionKernel, AttentionOutput};
use crate::view::View;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, StackSlotData, StackSlotKind, Type, Value};
use cranelift_frontend::Variable;
use kiln_ir::{Attention, DType};

/// The stack slots' base addresses: per query of the tile its running maximum `m` and sum `l`,
/// its visible run `lo..hi` and its accumulator row; and one tile of scores.
struct Scratch {
    m: Value,
    l: Value,
    lo: Value,
    hi: Value,
    acc: Value,
    scores: Value,
}

/// Per work item: element addresses of the head's first query, key, value and output row.
struct Head {
    q: Value,
    k: Value,
    v: Value,
    out: Value,
}

/// Row strides, in bytes.
struct Strides {
    q: Value,
    k: Value,
    v: Value,
    out: Value,
}

/// The head sizes and the attention's parameters.
struct Shape<'a> {
    d: i64,
    dv: i64,
    keys: Value,
    attention: &'a Attention,
    /// Accumulate the values (else only the log-sum-exp is needed).
    values: bool,
}

pub(super) fn slot(f: &mut KernelFn, bytes: i64) -> Value {
    let data = StackSlotData::new(StackSlotKind::ExplicitSlot, bytes as u32, 4);
    let slot = f.b.create_sized_stack_slot(data);
    f.b.ins().stack_addr(PTR, slot, 0)
}

/// A load of element `index` (of `size` bytes) from `base`, with ordinary memory flags: the
/// kernel writes its scratch, so these loads must stay after the stores before them.
pub(super) fn load_indexed(
    f: &mut KernelFn,
    ty: Type,
    base: Value,
    index: Value,
    size: i64,
) -> Value {
    let at = f.b.ins().imul_imm_s(index, size);
    let addr = f.b.ins().iadd(base, at);
    f.b.ins().load(ty, flags(), addr, 0)
}

pub(super) fn store_indexed(f: &mut KernelFn, value: Value, base: Value, index: Value, size: i64) {
    let at = f.b.ins().imul_imm_s(index, size);
    let addr = f.b.ins().iadd(base, at);
    f.b.ins().store(flags(), value, addr, 0);
}

/// `base + index · stride` for a byte stride.
pub(super) fn offset(f: &mut KernelFn, base: Value, index: Value, stride: Value) -> Value {
    let at = f.b.ins().imul(index, stride);
    f.b.ins().iadd(base, at)
}

pub fn emit(f: &mut KernelFn, kernel: &AttentionKernel) {
    let AttentionKernel {
        q,
        k,
        v,
        positions,
        padding,
        out,
        attention,
        output,
        // The lowering pairs no log-sum-exp with the values for this target.
        lse: _,
    } = kernel;
    let constant = |v: &View| v.dims[3].as_constant().expect("lowering checks head sizes");
    let (d, dv) = (constant(q), constant(v));
    let (tile_q, tile_k) = (attention.tile_q as i64, attention.tile_k as i64);
    let q_dims = f.polys(&q.dims);
    let (heads, seq) = (q_dims[1], q_dims[2]);
    let keys = f.poly(&k.dims[2]);
    let views = [q, k, v, out];
    let strides: Vec<Vec<Value>> = views
        .iter()
        .map(|view| {
            let s = f.polys(&view.strides[..3]);
            s.into_iter().map(|x| f.b.ins().imul_imm_s(x, 4)).collect()
        })
        .collect();
    let bases: Vec<Value> = views
        .iter()
        .map(|view| {
            let ptr = f.buffer(view.buffer().expect("attention operands are buffers"));
            let off = f.poly(&view.offset);
            f.address(ptr, off, DType::F32)
        })
        .collect();
    let visibility = Visibility::new(f, attention, positions.as_ref(), padding.as_ref(), keys);
    let scratch = Scratch {
        m: slot(f, 4 * tile_q),
        l: slot(f, 4 * tile_q),
        lo: slot(f, 8 * tile_q),
        hi: slot(f, 8 * tile_q),
        acc: slot(f, 4 * tile_q * dv),
        scores: slot(f, 4 * tile_k),
    };
    let row_strides = Strides {
        q: strides[0][2],
        k: strides[1][2],
        v: strides[2][2],
        out: strides[3][2],
    };
    let shape = Shape {
        d,
        dv,
        keys,
        attention,
        values: *output == AttentionOutput::Values,
    };
    let tiles_q = ceil_div(f, seq, tile_q);
    let (start, end) = (f.start, f.end);
    f.for_loop(start, end, 1, |f, w| {
        let tq = f.b.ins().urem(w, tiles_q);
        let bh = f.b.ins().udiv(w, tiles_q);
        let h = f.b.ins().urem(bh, heads);
        let b = f.b.ins().udiv(bh, heads);
        let group = f.iconst(attention.group as i64);
        let kv = f.b.ins().udiv(h, group);
        let head_of = |f: &mut KernelFn, i: usize, head: Value| {
            let at = offset(f, bases[i], b, strides[i][0]);
            offset(f, at, head, strides[i][1])
        };
        let head = Head {
            q: head_of(f, 0, h),
            k: head_of(f, 1, kv),
            v: head_of(f, 2, kv),
            out: head_of(f, 3, h),
        };
        let i0 = f.b.ins().imul_imm_s(tq, tile_q);
        let i1 = tile_end(f, i0, tile_q, seq);
        let rows = f.b.ins().isub(i1, i0);
        let span = init_rows(f, &scratch, &shape, (b, i0, rows), &visibility);
        key_tiles(f, &scratch, &shape, &head, &row_strides, i0, rows, span);
        write_rows(f, &scratch, &shape, &head, &row_strides, i0, rows);
    });
}

/// Sets each query's visible run, `m = -∞`, `l = 0` and a zero accumulator; returns the union
/// of the runs as `(lowest lo, highest hi)`.
fn init_rows(
    f: &mut KernelFn,
    s: &Scratch,
    shape: &Shape,
    (b, i0, rows): (Value, Value, Value),
    visibility: &Visibility,
) -> (Variable, Variable) {
    let kmin = f.var(types::I64, shape.keys);
    let zero = f.iconst(0);
    let kmax = f.var(types::I64, zero);
    f.for_loop(zero, rows, 1, |f, r| {
        let i = f.b.ins().iadd(i0, r);
        let (lo, hi) = visibility.run(f, b, i);
        store_indexed(f, lo, s.lo, r, 8);
        store_indexed(f, hi, s.hi, r, 8);
        let old = f.b.use_var(kmin);
        let next = f.b.ins().smin(old, lo);
        f.b.def_var(kmin, next);
        let old = f.b.use_var(kmax);
        let next = f.b.ins().smax(old, hi);
        f.b.def_var(kmax, next);
        let neg_inf = f.b.ins().f32const(f32::NEG_INFINITY);
        store_indexed(f, neg_inf, s.m, r, 4);
        let zero = f.b.ins().f32const(0.0);
        store_indexed(f, zero, s.l, r, 4);
        let acc_row = f.b.ins().imul_imm_s(r, 4 * shape.dv);
        let acc_row = f.b.ins().iadd(s.acc, acc_row);
        let vector_zero = f.b.ins().splat(types::F32X4, zero);
        for (c, lanes) in chunks(shape.dv) {
            let z = if lanes == 4 { vector_zero } else { zero };
            f.b.ins().store(flags(), z, acc_row, (4 * c) as i32);
        }
    });
    (kmin, kmax)
}

pub(super) fn dtype_size(dtype: DType) -> i64 {
    crate::kernel::elem_size(dtype) as i64
}

/// Walks the union of the visible runs in tiles of `tile_k` keys.
#[allow(clippy::too_many_arguments)]
fn key_tiles(
    f: &mut KernelFn,
    s: &Scratch,
    shape: &Shape,
    head: &Head,
    strides: &Strides,
    i0: Value,
    rows: Value,
    (kmin, kmax): (Variable, Variable),
) {
    let tile_k = shape.attention.tile_k as i64;
    let (lo, hi) = (f.b.use_var(kmin), f.b.use_var(kmax));
    let span = f.b.ins().isub(hi, lo);
    let zero = f.iconst(0);
    let span = f.b.ins().smax(span, zero);
    let tiles = ceil_div(f, span, tile_k);
    f.for_loop(zero, tiles, 1, |f, t| {
        let j0 = f.b.ins().imul_imm_s(t, tile_k);
        let j0 = f.b.ins().iadd(lo, j0);
        let j1 = tile_end(f, j0, tile_k, hi);
        let zero = f.iconst(0);
        f.for_loop(zero, rows, 1, |f, r| {
            let row_lo = load_indexed(f, types::I64, s.lo, r, 8);
            let row_hi = load_indexed(f, types::I64, s.hi, r, 8);
            let a = f.b.ins().smax(row_lo, j0);
            let e = f.b.ins().smin(row_hi, j1);
            let any = f.b.ins().icmp(IntCC::SignedLessThan, a, e);
            let body = f.b.create_block();
            let join = f.b.create_block();
            f.b.ins().brif(any, body, &[], join, &[]);
            f.b.switch_to_block(body);
            let i = f.b.ins().iadd(i0, r);
            let q_row = offset(f, head.q, i, strides.q);
            let keys = (a, e, j0);
            tile_of_row(f, s, shape, head, strides, q_row, r, keys);
            f.b.ins().jump(join, &[]);
            f.b.switch_to_block(join);
        });
    });
}

/// Steps 1–3 of the module doc for query row `r` and keys `a..e` of the tile starting at `j0`.
#[allow(clippy::too_many_arguments)]
fn tile_of_row(
    f: &mut KernelFn,
    s: &Scratch,
    shape: &Shape,
    head: &Head,
    strides: &Strides,
    q_row: Value,
    r: Value,
    (a, e, j0): (Value, Value, Value),
) {
    // 1. Scores and their maximum.
    let neg_inf = f.b.ins().f32const(f32::NEG_INFINITY);
    let tile_max = f.var(types::F32, neg_inf);
    let scale = f.b.ins().f32const(shape.attention.scale as f32);
    f.for_loop(a, e, 1, |f, j| {
        let k_row = offset(f, head.k, j, strides.k);
        let dot = dot(f, q_row, k_row, shape.d);
        let score = f.b.ins().fmul(dot, scale);
        let at = f.b.ins().isub(j, j0);
        store_indexed(f, score, s.scores, at, 4);
        let old = f.b.use_var(tile_max);
        let next = f.b.ins().fmax(old, score);
        f.b.def_var(tile_max, next);
    });
    // 2. Rescale by e^(m − m').
    let m = load_indexed(f, types::F32, s.m, r, 4);
    let tile_max = f.b.use_var(tile_max);
    let m_new = f.b.ins().fmax(m, tile_max);
    store_indexed(f, m_new, s.m, r, 4);
    let shift = f.b.ins().fsub(m, m_new);
    let alpha = math::exp(f, shift);
    let acc_at = f.b.ins().imul_imm_s(r, 4 * shape.dv);
    let acc_row = f.b.ins().iadd(s.acc, acc_at);
    let dv = if shape.values { shape.dv } else { 0 };
    row_update(f, acc_row, dv, |f, acc, _, lanes| {
        let factor = if lanes == 4 {
            f.b.ins().splat(lane_type(lanes), alpha)
        } else {
            alpha
        };
        f.b.ins().fmul(acc, factor)
    });
    // 3. Probabilities into the scores' slot, their sum, and the weighted values.
    let m_vec = f.b.ins().splat(types::F32X4, m_new);
    let vsum = zero_var(f, true);
    let ssum = zero_var(f, false);
    let first = f.b.ins().isub(a, j0);
    let last = f.b.ins().isub(e, j0);
    let rest = f.for_loop(first, last, 4, |f, c| {
        let at = f.b.ins().imul_imm_s(c, 4);
        let addr = f.b.ins().iadd(s.scores, at);
        let x = f.b.ins().load(types::F32X4, flags(), addr, 0);
        let x = f.b.ins().fsub(x, m_vec);
        let p = math::exp(f, x);
        f.b.ins().store(flags(), p, addr, 0);
        let old = f.b.use_var(vsum);
        let next = f.b.ins().fadd(old, p);
        f.b.def_var(vsum, next);
    });
    f.for_loop(rest, last, 1, |f, c| {
        let x = load_indexed(f, types::F32, s.scores, c, 4);
        let x = f.b.ins().fsub(x, m_new);
        let p = math::exp(f, x);
        store_indexed(f, p, s.scores, c, 4);
        let old = f.b.use_var(ssum);
        let next = f.b.ins().fadd(old, p);
        f.b.def_var(ssum, next);
    });
    let l = load_indexed(f, types::F32, s.l, r, 4);
    let l = f.b.ins().fmul(l, alpha);
    let lanes = f.b.use_var(vsum);
    let lanes = lane_sum(f, lanes);
    let scalars = f.b.use_var(ssum);
    let added = f.b.ins().fadd(lanes, scalars);
    let l = f.b.ins().fadd(l, added);
    store_indexed(f, l, s.l, r, 4);
    if !shape.values {
        return;
    }
    f.for_loop(a, e, 1, |f, j| {
        let at = f.b.ins().isub(j, j0);
        let p = load_indexed(f, types::F32, s.scores, at, 4);
        let p4 = f.b.ins().splat(types::F32X4, p);
        let v_row = offset(f, head.v, j, strides.v);
        row_update(f, acc_row, shape.dv, |f, acc, c, lanes| {
            let weight = if lanes == 4 { p4 } else { p };
            let x = f.load_at(lane_type(lanes), v_row, (4 * c) as i32);
            f.b.ins().fma(weight, x, acc)
        });
    });
}

/// A row of `len` floats as `(first element, lanes)`: 4 lanes at a time, then one at a time.
pub(super) fn chunks(len: i64) -> impl Iterator<Item = (i64, i64)> {
    let vectors = len / 4;
    (0..vectors)
        .map(|v| (4 * v, 4))
        .chain((4 * vectors..len).map(|c| (c, 1)))
}

pub(super) fn lane_type(lanes: i64) -> Type {
    if lanes == 4 {
        types::F32X4
    } else {
        types::F32
    }
}

/// `acc[c..] = update(acc[c..], c, lanes)` over a row of `len` floats in scratch.
pub(super) fn row_update(
    f: &mut KernelFn,
    row: Value,
    len: i64,
    mut update: impl FnMut(&mut KernelFn, Value, i64, i64) -> Value,
) {
    for (c, lanes) in chunks(len) {
        let acc =
            f.b.ins()
                .load(lane_type(lanes), flags(), row, (4 * c) as i32);
        let next = update(f, acc, c, lanes);
        f.b.ins().store(flags(), next, row, (4 * c) as i32);
    }
}

/// `Σ x[c]·y[c]` over `len` floats: four accumulator chains of 4 lanes, then scalars.
pub(super) fn dot(f: &mut KernelFn, x: Value, y: Value, len: i64) -> Value {
    let chains: Vec<Variable> = (0..4).map(|_| zero_var(f, true)).collect();
    let tail = zero_var(f, false);
    for (c, lanes) in chunks(len) {
        let acc = if lanes == 4 {
            chains[(c / 4 % 4) as usize]
        } else {
            tail
        };
        let a = f.load_at(lane_type(lanes), x, (4 * c) as i32);
        let b = f.load_at(lane_type(lanes), y, (4 * c) as i32);
        fma_into(f, acc, a, b);
    }
    let mut v = f.b.use_var(chains[0]);
    for &more in &chains[1..] {
        let more = f.b.use_var(more);
        v = f.b.ins().fadd(v, more);
    }
    let lanes = lane_sum(f, v);
    let scalars = f.b.use_var(tail);
    f.b.ins().fadd(lanes, scalars)
}

/// `out[i0 + r, :] = acc[r, :] / l[r]` for every row of the tile.
fn write_rows(
    f: &mut KernelFn,
    s: &Scratch,
    shape: &Shape,
    head: &Head,
    strides: &Strides,
    i0: Value,
    rows: Value,
) {
    let zero = f.iconst(0);
    f.for_loop(zero, rows, 1, |f, r| {
        let l = load_indexed(f, types::F32, s.l, r, 4);
        let i = f.b.ins().iadd(i0, r);
        if !shape.values {
            // lse = m + log l (−∞ for a query that sees no key).
            let m = load_indexed(f, types::F32, s.m, r, 4);
            let log = math::unary(f, kiln_ir::UnaryOp::Log, DType::F32, l);
            let lse = f.b.ins().fadd(m, log);
            let at = offset(f, head.out, i, strides.out);
            f.b.ins().store(flags(), lse, at, 0);
            return;
        }
        let one = f.b.ins().f32const(1.0);
        let inv = f.b.ins().fdiv(one, l);
        let inv4 = f.b.ins().splat(types::F32X4, inv);
        let out_row = offset(f, head.out, i, strides.out);
        let acc_at = f.b.ins().imul_imm_s(r, 4 * shape.dv);
        let acc_row = f.b.ins().iadd(s.acc, acc_at);
        for (c, lanes) in chunks(shape.dv) {
            let factor = if lanes == 4 { inv4 } else { inv };
            let acc =
                f.b.ins()
                    .load(lane_type(lanes), flags(), acc_row, (4 * c) as i32);
            let y = f.b.ins().fmul(acc, factor);
            f.b.ins().store(flags(), y, out_row, (4 * c) as i32);
        }
    });
}
