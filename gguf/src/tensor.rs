//! [`TensorInfo`]: one entry of the tensor-info table, as stored, plus the shape callers want.
//!
//! `dims` are GGUF's order, innermost (fastest-varying) first; [`TensorInfo::shape`] reverses
//! them into the row-major, outermost-first order the rest of kiln uses. `offset` is relative
//! to the file's `data_offset`.

use crate::ggml_type::GgmlType;

/// A tensor's name, dims, type and where its data starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// As stored: GGUF order, innermost first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Bytes from the file's `data_offset` to the first byte of this tensor.
    pub offset: u64,
}

impl TensorInfo {
    /// The row-major shape, outermost first: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    /// The number of elements, or `None` when it overflows 64 bits.
    pub fn numel(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// The bytes of data, or `None` when the count overflows or is not a whole number of blocks.
    pub fn byte_len(&self) -> Option<u64> {
        self.ggml_type.tensor_bytes(self.numel()?)
    }
}
