//! The runtime function table handed to kernels (`manifest::RUNTIME_FUNCTIONS`, in that order):
//! a GEMM from the `gemm` crate for large matrix tiles and scalar math from `libm`.

use crate::manifest::RUNTIME_FUNCTIONS;

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
    ];
    debug_assert_eq!(table.len(), RUNTIME_FUNCTIONS.len());
    table
}
