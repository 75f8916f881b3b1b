//! Reading `bf16` storage as `f32`: kernels compute in f32, and a bf16 value (a weight stored
//! narrow) is widened as it is loaded, so no f32 copy of it exists in memory.
//!
//! A bf16 is the high half of the f32 with the same value: widening is a zero-extension to 32
//! bits, a shift left by 16 and a bitcast. Four lanes load with one `uload16x4` (eight bytes,
//! each 16-bit lane zero-extended into an `i32x4`). Only `f32` and `bf16` are read this way;
//! lowering refuses every other narrow value before code generation.

use super::builder::KernelFn;
use cranelift_codegen::ir::{types, Endianness, InstBuilder, MemFlagsData, Value};
use kiln_ir::DType;

fn little() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// A bf16 held in the low 16 bits of an `i16` (scalar) as the f32 of the same value.
pub fn bf16_to_f32(f: &mut KernelFn, x: Value) -> Value {
    let wide = f.b.ins().uextend(types::I32, x);
    let high = f.b.ins().ishl_imm_u(wide, 16);
    f.b.ins().bitcast(types::F32, little(), high)
}

/// `lanes` (1 or 4) consecutive elements of `dtype` at `addr + offset` bytes, as `f32` or
/// `f32x4`.
pub fn load_f32(f: &mut KernelFn, dtype: DType, addr: Value, offset: i32, lanes: u8) -> Value {
    match (dtype, lanes) {
        (DType::BF16, 1) => {
            let raw = f.load_at(types::I16, addr, offset);
            bf16_to_f32(f, raw)
        }
        (DType::BF16, _) => {
            let raw = f.uload16x4(addr, offset);
            let high = f.b.ins().ishl_imm_u(raw, 16);
            f.b.ins().bitcast(types::F32X4, little(), high)
        }
        (_, 1) => f.load_at(types::F32, addr, offset),
        _ => f.load_at(types::F32X4, addr, offset),
    }
}
