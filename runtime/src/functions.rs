//! The runtime function table handed to kernels (`manifest::RUNTIME_FUNCTIONS`, in that order):
//! a GEMM from the `gemm` crate for large matrix tiles, its variant for `bf16` operands, and
//! scalar math from `libm`.
//!
//! The GEMM library has no bf16: `gemm_bf16` widens the panel of each bf16 operand that the
//! tile reads (`m × k` of `a`, `k × n` of `b`, never a whole weight) into a scratch buffer of the
//! calling thread, which grows to the largest panel and is reused by every later call, then runs
//! the f32 GEMM on it.

use crate::manifest::RUNTIME_FUNCTIONS;
use std::cell::RefCell;

/// `c = a·b` on strided f32 matrices (strides in elements), single-threaded: kernels already run
/// one tile per thread.
#[allow(clippy::too_many_arguments)]
extern "C" fn gemm_f32(
    m: i64,
    n: i64,
    k: i64,
    a: *const f32,
    a_rs: i64,
    a_cs: i64,
    b: *const f32,
    b_rs: i64,
    b_cs: i64,
    c: *mut f32,
    c_rs: i64,
    c_cs: i64,
) {
    // SAFETY: the kernel passes pointers and strides of buffers sized by the manifest.
    unsafe {
        gemm::gemm(
            m as usize,
            n as usize,
            k as usize,
            c,
            c_cs as isize,
            c_rs as isize,
            false,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

thread_local! {
    /// The calling thread's scratch for `gemm_bf16`'s widened panels.
    static PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Widens the `rows × cols` bf16 matrix at `src` (strides in elements) into `dst`, walking
/// `src`'s unit-stride axis innermost; returns `dst`'s strides (row, column).
///
/// # Safety
/// `src` with these strides must address `rows × cols` readable bf16 elements; `dst` holds
/// `rows · cols` elements.
unsafe fn widen_bf16(
    rows: i64,
    cols: i64,
    src: *const u16,
    rs: i64,
    cs: i64,
    dst: &mut [f32],
) -> (i64, i64) {
    let wide = |at: i64| f32::from_bits((unsafe { *src.offset(at as isize) } as u32) << 16);
    if rs.abs() <= cs.abs() {
        for j in 0..cols {
            let column = &mut dst[(j * rows) as usize..((j + 1) * rows) as usize];
            for (i, d) in column.iter_mut().enumerate() {
                *d = wide(i as i64 * rs + j * cs);
            }
        }
        (1, rows)
    } else {
        for i in 0..rows {
            let row = &mut dst[(i * cols) as usize..((i + 1) * cols) as usize];
            for (j, d) in row.iter_mut().enumerate() {
                *d = wide(i * rs + j as i64 * cs);
            }
        }
        (cols, 1)
    }
}

/// `gemm_f32` where `a` (bit 0 of `narrow`) and/or `b` (bit 1) hold bf16 elements.
#[allow(clippy::too_many_arguments)]
extern "C" fn gemm_bf16(
    m: i64,
    n: i64,
    k: i64,
    a: *const u8,
    a_rs: i64,
    a_cs: i64,
    b: *const u8,
    b_rs: i64,
    b_cs: i64,
    c: *mut f32,
    c_rs: i64,
    c_cs: i64,
    narrow: i64,
) {
    let (a_narrow, b_narrow) = (narrow & 1 != 0, narrow & 2 != 0);
    let a_len = if a_narrow { (m * k) as usize } else { 0 };
    let b_len = if b_narrow { (k * n) as usize } else { 0 };
    PANELS.with(|panels| {
        let mut scratch = panels.borrow_mut();
        if scratch.len() < a_len + b_len {
            scratch.resize(a_len + b_len, 0.0);
        }
        let (a_panel, rest) = scratch.split_at_mut(a_len);
        let b_panel = &mut rest[..b_len];
        // SAFETY: the kernel passes pointers and strides of buffers sized by the manifest, and
        // the panels hold `m·k` and `k·n` elements.
        unsafe {
            let (a, a_rs, a_cs) = if a_narrow {
                let (rs, cs) = widen_bf16(m, k, a.cast(), a_rs, a_cs, a_panel);
                (a_panel.as_ptr(), rs, cs)
            } else {
                (a.cast(), a_rs, a_cs)
            };
            let (b, b_rs, b_cs) = if b_narrow {
                let (rs, cs) = widen_bf16(k, n, b.cast(), b_rs, b_cs, b_panel);
                (b_panel.as_ptr(), rs, cs)
            } else {
                (b.cast(), b_rs, b_cs)
            };
            gemm_f32(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs, c_cs);
        }
    });
}

extern "C" fn sinf(x: f32) -> f32 {
    libm::sinf(x)
}
extern "C" fn cosf(x: f32) -> f32 {
    libm::cosf(x)
}
extern "C" fn logf(x: f32) -> f32 {
    libm::logf(x)
}
extern "C" fn erff(x: f32) -> f32 {
    libm::erff(x)
}
extern "C" fn tanhf(x: f32) -> f32 {
    libm::tanhf(x)
}
extern "C" fn powf(x: f32, y: f32) -> f32 {
    libm::powf(x, y)
}

/// The table, in `RUNTIME_FUNCTIONS` order.
pub fn table() -> Vec<usize> {
    let table = vec![
        gemm_f32 as *const () as usize,
        sinf as *const () as usize,
        cosf as *const () as usize,
        logf as *const () as usize,
        erff as *const () as usize,
        tanhf as *const () as usize,
        powf as *const () as usize,
        gemm_bf16 as *const () as usize,
    ];
    debug_assert_eq!(table.len(), RUNTIME_FUNCTIONS.len());
    table
}
