//! [`GgmlType`]: the ggml tensor element types a GGUF file may store, declared in one table.
//!
//! Each type has its id in the file, its name as llama.cpp prints it, the elements per block and
//! the bytes per block (ggml's `type_traits`). Plain types are blocks of one element. Ids this
//! table lacks (the removed Q4_2/Q4_3, the IQ and TQ families, MXFP4) are refused by the parser.

use std::fmt;

/// A ggml tensor element type; the discriminant is the id stored in the file.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    BF16 = 30,
}

impl GgmlType {
    /// Every known type, in id order.
    pub const ALL: [GgmlType; 20] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::BF16,
    ];

    /// The one table: (name, elements per block, bytes per block).
    fn traits(self) -> (&'static str, u64, u64) {
        use GgmlType::*;
        match self {
            F32 => ("F32", 1, 4),
            F16 => ("F16", 1, 2),
            // f16 scale + 32 4-bit quants
            Q4_0 => ("Q4_0", 32, 18),
            // f16 scale and min + 32 4-bit quants
            Q4_1 => ("Q4_1", 32, 20),
            // f16 scale + 32 high bits + 32 4-bit quants
            Q5_0 => ("Q5_0", 32, 22),
            // f16 scale and min + 32 high bits + 32 4-bit quants
            Q5_1 => ("Q5_1", 32, 24),
            // f16 scale + 32 8-bit quants
            Q8_0 => ("Q8_0", 32, 34),
            // f16 scale and sum + 32 8-bit quants
            Q8_1 => ("Q8_1", 32, 36),
            // 16 scale bytes + 64 quant bytes + f16 scale and min
            Q2_K => ("Q2_K", 256, 84),
            // 32 high-bit mask bytes + 64 quant bytes + 12 scale bytes + f16 scale
            Q3_K => ("Q3_K", 256, 110),
            // f16 scale and min + 12 scale bytes + 128 quant bytes
            Q4_K => ("Q4_K", 256, 144),
            // f16 scale and min + 12 scale bytes + 32 high-bit bytes + 128 quant bytes
            Q5_K => ("Q5_K", 256, 176),
            // 128 low bytes + 64 high bytes + 16 scales + f16 scale
            Q6_K => ("Q6_K", 256, 210),
            // f32 scale + 256 8-bit quants + 16 i16 block sums
            Q8_K => ("Q8_K", 256, 292),
            I8 => ("I8", 1, 1),
            I16 => ("I16", 1, 2),
            I32 => ("I32", 1, 4),
            I64 => ("I64", 1, 8),
            F64 => ("F64", 1, 8),
            BF16 => ("BF16", 1, 2),
        }
    }

    /// The type with this id in the file, if it is known.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The id stored in the file.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name as llama.cpp prints it, e.g. `Q4_K`.
    pub fn name(self) -> &'static str {
        self.traits().0
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> u64 {
        self.traits().1
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.traits().2
    }

    /// The bytes `numel` elements take, or `None` when `numel` is not a whole number of blocks
    /// or the size overflows.
    pub fn tensor_bytes(self, numel: u64) -> Option<u64> {
        let (_, block, size) = self.traits();
        if !numel.is_multiple_of(block) {
            return None;
        }
        (numel / block).checked_mul(size)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
