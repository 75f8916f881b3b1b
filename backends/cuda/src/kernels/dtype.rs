//! How IR element types live in PTX: the register type of a value, the memory type of an
//! element, its size. `f16` (and any type added later) is refused with an error naming it.
//!
//! Values are held as: `f32` in `.f32`, `bf16` as its bits in `.b16` (kernels compute in f32
//! and only widen or narrow bf16), `i32` in `.s32`, `i64` in `.s64`, `bool` in `.pred`
//! (stored as one byte, 0 or 1).

use crate::error::{CompileError, Result};
use crate::ptx::Ty;
use kiln_ir::DType;

fn refuse(dtype: DType) -> CompileError {
    CompileError(format!(
        "{dtype} values are not supported by the CUDA backend (it holds f32, bf16 storage, \
         i32, i64 and bool)"
    ))
}

/// The register type holding a value of `dtype`.
pub fn reg_ty(dtype: DType) -> Result<Ty> {
    match dtype {
        DType::F32 => Ok(Ty::F32),
        DType::BF16 => Ok(Ty::B16),
        DType::I32 => Ok(Ty::S32),
        DType::I64 => Ok(Ty::S64),
        DType::Bool => Ok(Ty::Pred),
        other => Err(refuse(other)),
    }
}

/// The memory type of loads and stores of one element.
pub fn mem_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("b16"),
        DType::I32 => Ok("s32"),
        DType::I64 => Ok("s64"),
        DType::Bool => Ok("u8"),
        other => Err(refuse(other)),
    }
}

/// Bytes of one element of a type the kernels hold.
pub fn elem_bytes(dtype: DType) -> Result<i64> {
    match dtype {
        DType::F16 => Err(refuse(dtype)),
        held => Ok(held.size_bytes() as i64),
    }
}
