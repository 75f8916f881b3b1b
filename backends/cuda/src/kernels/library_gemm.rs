//! Which steps the compiler offers to the GEMM library (cuBLASLt), and how: a
//! [`LibraryGemm`] beside the step's kernel (the manifest's module doc has the contract).
//!
//! **The choice.** A step is offered when it is one matmul that takes the tensor-core tile form
//! (`matmul_mma`: two bf16 operands, `m` not a decode row count) with no epilogue but the
//! rounding of the product to the output's type (the lowering makes any other epilogue of such
//! a matmul a map of its own: `LowerOptions::library_matmuls`), and each of
//! its three views is a buffer whose last two axes can be a library matrix: one of the two has
//! the constant stride 1 (the output's columns must). Measured on an H200 (docs/backend-cuda.md,
//! "Library GEMMs"), cuBLASLt runs every such matmul of the Llama-3.2-1B training step and
//! prefill several times faster than `matmul_mma`, so no size threshold is applied; decode's
//! matrix–vector products keep kiln's own kernels (`matmul_gemv*`), which the library does not
//! beat at batch 1 and which fuse with their neighbours.
//!
//! Whatever depends on the bound symbols (leading dimensions too short, batch strides that need
//! too many calls, alignment) is decided by the runtime, which launches the kernel instead where
//! the library cannot take the views.

use super::{matmul_mma, Group};
use kiln_backend_cpu::kernel::{decode_rows, Kernel};
use kiln_backend_cpu::lower::elem_type;
use kiln_backend_cpu::view::View;
use kiln_runtime::manifest::{GemmOperand, LibraryGemm};

/// The library form of `group`'s matmul, where the compiler prefers it (see the module doc).
pub fn offer(group: &Group) -> Option<LibraryGemm> {
    let Group::One(Kernel::MatMul {
        a,
        b,
        out,
        epilogue,
        ..
    }) = group
    else {
        return None;
    };
    if epilogue.as_ref().is_some_and(|e| !e.is_rounding()) {
        return None;
    }
    let r = out.rank();
    if decode_rows(&out.dims[r - 2]) || !matmul_mma::applies(a, b) {
        return None;
    }
    let unit = |v: &View, axis: usize| v.strides[axis].is_constant(1);
    let matrix = |v: &View| unit(v, r - 1) || unit(v, r - 2);
    if !(matrix(a) && matrix(b) && unit(out, r - 1)) {
        return None;
    }
    Some(LibraryGemm {
        a: operand(a)?,
        b: operand(b)?,
        out: operand(out)?,
        batch: out.dims[..r - 2].to_vec(),
        m: out.dims[r - 2].clone(),
        n: out.dims[r - 1].clone(),
        k: a.dims[r - 1].clone(),
    })
}

fn operand(v: &View) -> Option<GemmOperand> {
    Some(GemmOperand {
        buffer: v.buffer()?,
        dtype: elem_type(v.dtype),
        offset: v.offset.clone(),
        strides: v.strides.clone(),
    })
}
