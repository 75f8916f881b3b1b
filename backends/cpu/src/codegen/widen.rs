//! Reading `bf16` storage as `f32`: kernels compute in f32, and a bf16 value (a weight stored
//! narrow) is widened as it is loaded, so no f32 copy of it exists in memory.
//!
//! A bf16 is the high half of the f32 with the same value: widening is a zero-extension to 32
//! bits, a shift left by 16 and a bitcast. Four lanes load with one `uload16x4` (eight bytes,
//! each 16-bit lane zero-extended into an `i32x4`); eight lanes load as one 16-byte vector whose
//! halves are interleaved with zeros (`punpcklwd` / `punpckhwd`), which puts each bf16 in the
//! high half of its 32-bit lane with no shift. Only `f32` and `bf16` are read this way; lowering
//! refuses every other narrow value before code generation.

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

/// Byte selectors of `shuffle(a, b)` that interleave the 16-bit lanes `4·half .. 4·half + 4` of
/// `a` and `b`, `b`'s lane high: exactly x86 `punpcklwd` (half 0) / `punpckhwd` (half 1), the
/// patterns Cranelift lowers to one instruction.
fn interleave_words(half: u8) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for lane in 0..4u8 {
        let low = 8 * half + 2 * lane;
        bytes[4 * lane as usize..][..4].copy_from_slice(&[low, low + 1, 16 + low, 17 + low]);
    }
    bytes
}

/// Eight consecutive elements of `dtype` at `addr + offset` bytes, as two `f32x4` (lanes 0–3,
/// then 4–7).
pub fn load_f32x8(f: &mut KernelFn, dtype: DType, addr: Value, offset: i32) -> [Value; 2] {
    if dtype != DType::BF16 {
        return [0, 16].map(|at| f.load_at(types::F32X4, addr, offset + at));
    }
    let raw = f.load_at(types::I8X16, addr, offset);
    let zeros = f.b.func.dfg.constants.insert(vec![0u8; 16].into());
    let zero = f.b.ins().vconst(types::I8X16, zeros);
    [0, 1].map(|half| {
        let mask =
            f.b.func
                .dfg
                .immediates
                .push(interleave_words(half).to_vec().into());
        let wide = f.b.ins().shuffle(zero, raw, mask);
        f.b.ins().bitcast(types::F32X4, little(), wide)
    })
}
