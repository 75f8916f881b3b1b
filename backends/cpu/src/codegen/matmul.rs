//! Matrix-multiply kernels (`Kernel::MatMul`): `out[.., m, n] = Σₖ a[.., m, k]·b[.., k, n]`
//! over strided, batch-broadcast operands, into a contiguous output.
//!
//! Work items are `tile_m × tile_n` output tiles of one batch element. A tile of at least
//! `gemm_min_rows` rows (when the kernel's tiles can be that tall) calls the runtime's
//! `gemm_f32`; smaller tiles run Cranelift loops in one of three forms chosen at compile time
//! from the strides:
//! - **dot**: `a` and `b` both unit-stride along `k` (a linear layer's `x·Wᵀ`, attention scores
//!   `q·kᵀ`): one output at a time, a 4-lane FMA dot product over eight accumulator chains, so
//!   each thread streams the weights as one sequential run;
//! - **axpy**: `b` unit-stride along `n` (`probs·v`): 16 then 4 output lanes at a time,
//!   accumulating `a[m,k]·b[k, n..]`;
//! - **scalar**: anything else.
//!
//! Either operand may be stored as `bf16` (a weight under the `bf16-weights` policy): every form
//! widens it to f32 as it loads (`widen.rs`), and a GEMM tile goes through the runtime's
//! `gemm_bf16`, which widens the tile's panel of each bf16 operand into scratch memory first.
//! Accumulation is f32 throughout. An epilogue (`epilogue.rs`) runs on each tile once it is
//! computed.

use super::builder::{KernelFn, PTR};
use super::epilogue;
use super::widen::{load_f32, load_f32x8};
use crate::kernel::{elem_size, Epilogue};
use crate::view::View;
use cranelift_codegen::ir::{condcodes::IntCC, types, AbiParam, InstBuilder, Signature, Value};
use cranelift_frontend::Variable;
use kiln_ir::DType;
use kiln_runtime::manifest::RUNTIME_FUNCTIONS;

struct Operands {
    a: Value,
    b: Value,
    c: Value,
    /// Storage types of `a` and `b` (`f32` or `bf16`); `c` is `f32`.
    a_ty: DType,
    b_ty: DType,
    a_rs: Value,
    a_cs: Value,
    b_rs: Value,
    b_cs: Value,
    c_rs: Value,
    k: Value,
}

#[derive(Clone, Copy, PartialEq)]
enum Form {
    Dot,
    Axpy,
    Scalar,
}

pub fn emit(
    f: &mut KernelFn,
    a: &View,
    b: &View,
    out: &View,
    (tile_m, tile_n): (i64, i64),
    gemm_min_rows: Option<i64>,
    epilogue: Option<&Epilogue>,
) {
    let r = out.rank();
    let form = if a.strides[r - 1].is_constant(1) && b.strides[r - 2].is_constant(1) {
        Form::Dot
    } else if b.strides[r - 1].is_constant(1) {
        Form::Axpy
    } else {
        Form::Scalar
    };
    let out_dims = f.polys(&out.dims);
    let (m_len, n_len) = (out_dims[r - 2], out_dims[r - 1]);
    let a_strides = f.polys(&a.strides);
    let b_strides = f.polys(&b.strides);
    let c_strides = f.polys(&out.strides);
    let a_off = f.poly(&a.offset);
    let b_off = f.poly(&b.offset);
    let k = f.poly(&a.dims[r - 1]);
    let ptrs = [a, b, out].map(|v| f.buffer(v.buffer().expect("matmul operands are buffers")));
    let tiles_n = ceil_div(f, n_len, tile_n);
    let tiles_m = ceil_div(f, m_len, tile_m);
    let epilogue = epilogue.map(|e| epilogue::prepare(f, e, out));
    let (start, end) = (f.start, f.end);
    f.for_loop(start, end, 1, |f, w| {
        let tn = f.b.ins().urem(w, tiles_n);
        let t = f.b.ins().udiv(w, tiles_n);
        let tm = f.b.ins().urem(t, tiles_m);
        let batch = f.b.ins().udiv(t, tiles_m);
        let coords = f.unravel(batch, &out_dims[..r - 2]);
        let a_base = f.linear(a_off, &coords, &a_strides[..r - 2]);
        let b_base = f.linear(b_off, &coords, &b_strides[..r - 2]);
        let zero = f.iconst(0);
        let c_base = f.linear(zero, &coords, &c_strides[..r - 2]);
        let m0 = f.b.ins().imul_imm_s(tm, tile_m);
        let m1 = tile_end(f, m0, tile_m, m_len);
        let n0 = f.b.ins().imul_imm_s(tn, tile_n);
        let n1 = tile_end(f, n0, tile_n, n_len);
        let ops = Operands {
            a: f.address(ptrs[0], a_base, a.dtype),
            b: f.address(ptrs[1], b_base, b.dtype),
            c: f.address(ptrs[2], c_base, DType::F32),
            a_ty: a.dtype,
            b_ty: b.dtype,
            a_rs: a_strides[r - 2],
            a_cs: a_strides[r - 1],
            b_rs: b_strides[r - 2],
            b_cs: b_strides[r - 1],
            c_rs: c_strides[r - 2],
            k,
        };
        let rows = |f: &mut KernelFn| {
            f.for_loop(m0, m1, 1, |f, m| match form {
                Form::Dot => dot_row(f, &ops, m, n0, n1),
                Form::Axpy => axpy_row(f, &ops, m, n0, n1),
                Form::Scalar => scalar_row(f, &ops, m, n0, n1),
            });
        };
        if let Some(min_rows) = gemm_min_rows.filter(|&r| tile_m >= r) {
            let tall = f.b.ins().isub(m1, m0);
            let big =
                f.b.ins()
                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, tall, min_rows);
            let gemm_block = f.b.create_block();
            let loops_block = f.b.create_block();
            let join = f.b.create_block();
            f.b.ins().brif(big, gemm_block, &[], loops_block, &[]);
            f.b.switch_to_block(gemm_block);
            call_gemm(f, &ops, m0, m1, n0, n1);
            f.b.ins().jump(join, &[]);
            f.b.switch_to_block(loops_block);
            rows(f);
            f.b.ins().jump(join, &[]);
            f.b.switch_to_block(join);
        } else {
            rows(f);
        }
        if let Some(e) = &epilogue {
            epilogue::emit_tile(f, e, &coords, ops.c, ops.c_rs, (m0, m1), (n0, n1));
        }
    });
}

pub(super) fn ceil_div(f: &mut KernelFn, x: Value, d: i64) -> Value {
    let up = f.b.ins().iadd_imm_s(x, d - 1);
    let d = f.iconst(d);
    f.b.ins().udiv(up, d)
}

pub(super) fn tile_end(f: &mut KernelFn, start: Value, tile: i64, len: Value) -> Value {
    let end = f.b.ins().iadd_imm_s(start, tile);
    f.b.ins().smin(end, len)
}

/// Address of the f32 element `index` (in elements) from `base`.
fn elem(f: &mut KernelFn, base: Value, index: Value) -> Value {
    f.address(base, index, DType::F32)
}

/// The `f32` value of element `index` of an operand of storage type `dtype` at `base`.
fn load_elem(f: &mut KernelFn, dtype: DType, base: Value, index: Value, lanes: u8) -> Value {
    let addr = f.address(base, index, dtype);
    load_f32(f, dtype, addr, 0, lanes)
}

/// The runtime function a GEMM tile of these operand types calls, and its table index.
fn gemm_function(o: &Operands) -> (&'static str, Option<i64>) {
    match (o.a_ty, o.b_ty) {
        (DType::F32, DType::F32) => ("gemm_f32", None),
        (a, b) => (
            "gemm_bf16",
            Some((a == DType::BF16) as i64 | ((b == DType::BF16) as i64) << 1),
        ),
    }
}

fn mul_add_index(f: &mut KernelFn, a: Value, stride: Value, b: Value) -> Value {
    let t = f.b.ins().imul(a, stride);
    f.b.ins().iadd(t, b)
}

fn call_gemm(f: &mut KernelFn, o: &Operands, m0: Value, m1: Value, n0: Value, n1: Value) {
    let (name, narrow) = gemm_function(o);
    let mut sig = Signature::new(f.call_conv);
    for _ in 0..12 + narrow.is_some() as usize {
        sig.params.push(AbiParam::new(types::I64));
    }
    let sig = f.b.import_signature(sig);
    let index = RUNTIME_FUNCTIONS.iter().position(|n| *n == name).unwrap();
    let callee = f.load_at(types::I64, f.fns, (index * 8) as i32);
    let zero = f.iconst(0);
    let a_at = mul_add_index(f, m0, o.a_rs, zero);
    let a = f.address(o.a, a_at, o.a_ty);
    let b_at = mul_add_index(f, n0, o.b_cs, zero);
    let b = f.address(o.b, b_at, o.b_ty);
    let c_at = mul_add_index(f, m0, o.c_rs, n0);
    let c = elem(f, o.c, c_at);
    let m = f.b.ins().isub(m1, m0);
    let n = f.b.ins().isub(n1, n0);
    let one = f.iconst(1);
    let mut args = vec![
        m, n, o.k, a, o.a_rs, o.a_cs, b, o.b_rs, o.b_cs, c, o.c_rs, one,
    ];
    if let Some(flags) = narrow {
        args.push(f.iconst(flags));
    }
    f.b.ins().call_indirect(sig, callee, &args);
}

/// Sums the four lanes of a vector.
pub(super) fn lane_sum(f: &mut KernelFn, v: Value) -> Value {
    let mut s = f.b.ins().extractlane(v, 0);
    for lane in 1..4 {
        let x = f.b.ins().extractlane(v, lane);
        s = f.b.ins().fadd(s, x);
    }
    s
}

pub(super) fn zero_var(f: &mut KernelFn, vector: bool) -> Variable {
    let z = f.b.ins().f32const(0.0);
    if vector {
        let z = f.b.ins().splat(types::F32X4, z);
        f.var(types::F32X4, z)
    } else {
        f.var(types::F32, z)
    }
}

pub(super) fn fma_into(f: &mut KernelFn, acc: Variable, x: Value, y: Value) {
    let a = f.b.use_var(acc);
    let next = f.b.ins().fma(x, y, a);
    f.b.def_var(acc, next);
}

/// The addresses of row `m` of `a` and of the output.
fn rows_of(f: &mut KernelFn, o: &Operands, m: Value) -> (Value, Value) {
    let a_row_at = f.b.ins().imul(m, o.a_rs);
    let c_row_at = f.b.ins().imul(m, o.c_rs);
    (f.address(o.a, a_row_at, o.a_ty), elem(f, o.c, c_row_at))
}

/// Dot form: one output at a time, each a dot product of `a`'s row with one row of `b`.
fn dot_row(f: &mut KernelFn, o: &Operands, m: Value, n0: Value, n1: Value) {
    let (a_row, c_row) = rows_of(f, o, m);
    f.for_loop(n0, n1, 1, |f, n| dot_one(f, o, a_row, c_row, n));
}

/// Vectors of `k` consumed per main-loop iteration, each into its own accumulator chain: eight
/// chains cover the FMA's latency at two per cycle, and 32 elements per iteration keep the loop's
/// own instructions a small share.
const DOT_UNROLL: usize = 8;

/// One dot product, walked with two pointers that advance through `k` (`DOT_UNROLL` vectors at a
/// time, then one vector, then scalars). The weights are read as one sequential stream per
/// thread, row after row: streaming several rows side by side (sharing each load of `a`) was
/// measured slower on the benchmark machine — a decode step is bound by how fast the weights
/// stream in, and the hardware prefetcher follows one long stream far better than several
/// short ones. In the main loop each operand loads eight lanes at a time (`load_f32x8`: one
/// 16-byte load for bf16).
fn dot_one(f: &mut KernelFn, o: &Operands, a_row: Value, c_row: Value, n: Value) {
    let x_ptr = f.var(PTR, a_row);
    let at = f.b.ins().imul(n, o.b_cs);
    let row = f.address(o.b, at, o.b_ty);
    let w_ptr = f.var(PTR, row);
    let (x_size, w_size) = (elem_size(o.a_ty), elem_size(o.b_ty));
    let vacc: Vec<Variable> = (0..DOT_UNROLL).map(|_| zero_var(f, true)).collect();
    let sacc = zero_var(f, false);
    // One pass of the loop body: `vectors` consecutive vectors (0 = one scalar).
    let body = |f: &mut KernelFn, vectors: usize| {
        let lanes = if vectors == 0 { 1 } else { 4 };
        let (xp, wp) = (f.b.use_var(x_ptr), f.b.use_var(w_ptr));
        if vectors == 0 || vectors == 1 {
            let x = load_f32(f, o.a_ty, xp, 0, lanes);
            let w = load_f32(f, o.b_ty, wp, 0, lanes);
            fma_into(f, if vectors == 0 { sacc } else { vacc[0] }, w, x);
        } else {
            for (pair, accs) in vacc[..vectors].chunks(2).enumerate() {
                let at = (8 * pair) as i32;
                let x = load_f32x8(f, o.a_ty, xp, at * x_size as i32);
                let w = load_f32x8(f, o.b_ty, wp, at * w_size as i32);
                for ((&acc, w), x) in accs.iter().zip(w).zip(x) {
                    fma_into(f, acc, w, x);
                }
            }
        }
        let step = vectors.max(1) * lanes as usize;
        let next_x = f.b.ins().iadd_imm_s(xp, (step * x_size) as i64);
        let next_w = f.b.ins().iadd_imm_s(wp, (step * w_size) as i64);
        f.b.def_var(x_ptr, next_x);
        f.b.def_var(w_ptr, next_w);
    };
    let zero = f.iconst(0);
    let rest = f.for_loop(zero, o.k, 4 * DOT_UNROLL as i64, |f, _| body(f, DOT_UNROLL));
    let rest = f.for_loop(rest, o.k, 4, |f, _| body(f, 1));
    f.for_loop(rest, o.k, 1, |f, _| body(f, 0));
    let mut v = f.b.use_var(vacc[0]);
    for &more in &vacc[1..] {
        let more = f.b.use_var(more);
        v = f.b.ins().fadd(v, more);
    }
    let lanes = lane_sum(f, v);
    let s = f.b.use_var(sacc);
    let total = f.b.ins().fadd(lanes, s);
    let addr = elem(f, c_row, n);
    f.store(total, addr);
}

/// Axpy form: 16 output lanes at a time, then 4, then scalars.
fn axpy_row(f: &mut KernelFn, o: &Operands, m: Value, n0: Value, n1: Value) {
    let (a_row, c_row) = rows_of(f, o, m);
    let rest = f.for_loop(n0, n1, 16, |f, n| axpy_block(f, o, a_row, c_row, n, 4));
    let rest = f.for_loop(rest, n1, 4, |f, n| axpy_block(f, o, a_row, c_row, n, 1));
    scalar_cols(f, o, a_row, c_row, rest, n1);
}

fn axpy_block(
    f: &mut KernelFn,
    o: &Operands,
    a_row: Value,
    c_row: Value,
    n: Value,
    vectors: usize,
) {
    let acc: Vec<Variable> = (0..vectors).map(|_| zero_var(f, true)).collect();
    let zero = f.iconst(0);
    f.for_loop(zero, o.k, 1, |f, k| {
        let x_at = f.b.ins().imul(k, o.a_cs);
        let x = load_elem(f, o.a_ty, a_row, x_at, 1);
        let x = f.b.ins().splat(types::F32X4, x);
        let row_at = mul_add_index(f, k, o.b_rs, n);
        for (v, &acc) in acc.iter().enumerate() {
            let at = f.b.ins().iadd_imm_s(row_at, 4 * v as i64);
            let w = load_elem(f, o.b_ty, o.b, at, 4);
            fma_into(f, acc, x, w);
        }
    });
    for (v, &acc) in acc.iter().enumerate() {
        let total = f.b.use_var(acc);
        let col = f.b.ins().iadd_imm_s(n, 4 * v as i64);
        let addr = elem(f, c_row, col);
        f.store(total, addr);
    }
}

fn scalar_row(f: &mut KernelFn, o: &Operands, m: Value, n0: Value, n1: Value) {
    let (a_row, c_row) = rows_of(f, o, m);
    scalar_cols(f, o, a_row, c_row, n0, n1);
}

/// Outputs `n0..n1` of one row, one scalar dot product each.
fn scalar_cols(f: &mut KernelFn, o: &Operands, a_row: Value, c_row: Value, n0: Value, n1: Value) {
    f.for_loop(n0, n1, 1, |f, n| {
        let acc = zero_var(f, false);
        let zero = f.iconst(0);
        f.for_loop(zero, o.k, 1, |f, k| {
            let x_at = f.b.ins().imul(k, o.a_cs);
            let x = load_elem(f, o.a_ty, a_row, x_at, 1);
            let w_at = f.b.ins().imul(k, o.b_rs);
            let w_at = mul_add_index(f, n, o.b_cs, w_at);
            let w = load_elem(f, o.b_ty, o.b, w_at, 1);
            fma_into(f, acc, x, w);
        });
        let total = f.b.use_var(acc);
        let addr = elem(f, c_row, n);
        f.store(total, addr);
    });
}
